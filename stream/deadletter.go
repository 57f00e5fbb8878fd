package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DeadLetterStream names the stream of dead letters, e.g. SAGA_DEAD_LETTERS.
func (c Config) DeadLetterStream() string { return strings.ToUpper(c.Prefix) + "_DEAD_LETTERS" }

// DeadLetterSubject is the subject of the dead letters set aside by one
// durable consumer, e.g. saga.dlq.saga-workflows-order.
func (c Config) DeadLetterSubject(consumer string) string { return c.Prefix + ".dlq." + consumer }

// DeadLetterStreamConfig is the stream of dead letters.
//
//   - Limits retention with no limits: a dead letter stays until an
//     operator purges or deletes it (DenyDelete is false for that).
//   - Duplicates: a message redelivered and set aside again within the
//     window is stored once (see PublishDeadLetter).
//   - AllowDirect: DeadLetters reads with direct gets, no consumer.
//   - MaxMsgSize as the other streams: PublishDeadLetter cuts a body to fit.
func (c Config) DeadLetterStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.DeadLetterStream(),
		Description: "messages set aside with the reason they could not be handled",
		Subjects:    []string{c.Prefix + ".dlq.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		MaxMsgSize:  c.MaxMsgSize,
		Duplicates:  c.DuplicateWindow,
		DenyDelete:  false,
		AllowDirect: true,
		Discard:     jetstream.DiscardNew,
	}
}

// DeadLetter is a message set aside with the reason it could not be handled.
type DeadLetter struct {
	Stream     string    // stream the message came from
	Subject    string    // its subject there
	Sequence   uint64    // its stream sequence there
	Consumer   string    // the durable consumer that gave up on it
	Reason     string    // one line: why
	Node       string    // the node that set it aside
	Deliveries uint64    // deliveries of the message so far
	Time       time.Time // when it was set aside
	Size       int       // size of the original body in bytes
	Truncated  bool      // Data holds only the start of the body (it did not fit with the headers)
	Data       []byte    // the original body
	// Headers are the original message's headers, so that an operator can
	// send it again as it was (a start's Saga-Id, a signal's
	// Content-Type). NATS's own (Nats-Msg-Id, say) are kept as
	// Saga-Original-<name>; the engine's dead-letter headers are not
	// taken from the original.
	Headers nats.Header
	// DeadLetterSequence is its sequence in the dead-letter stream (set
	// when read back).
	DeadLetterSequence uint64
}

// Prefixes of the headers of a dead letter: its own, and NATS's headers of
// the original message.
const (
	deadLetterHeaderPrefix = "Saga-Dead-Letter-"
	originalHeaderPrefix   = "Saga-Original-"
)

// Headers of a dead letter; its body is the original body.
const (
	hdrDeadLetterStream     = "Saga-Dead-Letter-Stream"
	hdrDeadLetterSubject    = "Saga-Dead-Letter-Subject"
	hdrDeadLetterSequence   = "Saga-Dead-Letter-Sequence"
	hdrDeadLetterConsumer   = "Saga-Dead-Letter-Consumer"
	hdrDeadLetterReason     = "Saga-Dead-Letter-Reason"
	hdrDeadLetterNode       = "Saga-Dead-Letter-Node"
	hdrDeadLetterDeliveries = "Saga-Dead-Letter-Deliveries"
	hdrDeadLetterTime       = "Saga-Dead-Letter-Time"
	hdrDeadLetterSize       = "Saga-Dead-Letter-Size"
	hdrDeadLetterTruncated  = "Saga-Dead-Letter-Truncated"
	hdrDeadLetterHeadersCut = "Saga-Dead-Letter-Headers-Cut"
)

// maxReasonLen bounds the reason header, so that a panic message with its
// stack does not crowd out the body.
const maxReasonLen = 1024

// PublishDeadLetter stores d on the subject of d.Consumer in the dead-letter
// stream. d.Stream, a d.Sequence above 0 and a valid d.Consumer are
// required; a zero d.Time is now. Size and Truncated are set here, and
// DeadLetterSequence is ignored.
//
// It is idempotent per original message and consumer: the Nats-Msg-Id is
// "<stream>:<sequence>:<consumer>", so a message that is redelivered and set
// aside again within the duplicate window is stored once, while two
// consumers giving up on the same message (say, a malformed commit) each
// leave their own record.
//
// A body too large to fit the server's max payload (or Config.MaxMsgSize)
// together with the headers is cut: Truncated is set and Size is the
// original size. The reason is made one line (line breaks become " | ") and
// cut at 1 KiB.
//
// A missing dead-letter stream gives ErrNoStream; a stream without a leader
// ErrUnavailable.
func (s *Store) PublishDeadLetter(ctx context.Context, d DeadLetter) error {
	if d.Stream == "" || d.Sequence == 0 {
		return fmt.Errorf("%w: dead letter needs the original stream and sequence, got %q and %d", ErrInvalidID, d.Stream, d.Sequence)
	}
	if err := ValidateID("consumer", d.Consumer); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	if d.Time.IsZero() {
		d.Time = time.Now()
	}
	streamName := s.cfg.DeadLetterStream()
	h := nats.Header{}
	h.Set(jetstream.MsgIDHeader, oneLine(d.Stream)+":"+strconv.FormatUint(d.Sequence, 10)+":"+d.Consumer)
	h.Set(jetstream.ExpectedStreamHeader, streamName)
	h.Set(hdrDeadLetterStream, oneLine(d.Stream))
	h.Set(hdrDeadLetterSubject, oneLine(d.Subject))
	h.Set(hdrDeadLetterSequence, strconv.FormatUint(d.Sequence, 10))
	h.Set(hdrDeadLetterConsumer, d.Consumer)
	h.Set(hdrDeadLetterReason, cutUTF8(oneLine(d.Reason), maxReasonLen))
	h.Set(hdrDeadLetterNode, oneLine(d.Node))
	h.Set(hdrDeadLetterDeliveries, strconv.FormatUint(d.Deliveries, 10))
	h.Set(hdrDeadLetterTime, d.Time.UTC().Format(time.RFC3339Nano))
	h.Set(hdrDeadLetterSize, strconv.Itoa(len(d.Data)))
	h.Set(hdrDeadLetterTruncated, "false") // measured at its longest
	copyOriginalHeaders(h, d.Headers)
	data := d.Data
	// maxMsgSize leaves headerRoom for the headers; headers that take more
	// (a very long subject or node name) take it from the body instead.
	room := max(s.maxMsgSize()-max(headerLen(h)-headerRoom, 0), 0)
	if len(data) > room {
		data = data[:room]
		h.Set(hdrDeadLetterTruncated, "true")
	}
	subject := s.cfg.DeadLetterSubject(d.Consumer)
	_, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: data})
	if err == nil {
		// A duplicate ack means this very message was set aside already.
		return nil
	}
	if (errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)) && s.streamMissing(ctx, streamName) {
		return fmt.Errorf("dead letter %s:%d to %s: %w: %w", d.Stream, d.Sequence, subject, ErrNoStream, err)
	}
	return fmt.Errorf("dead letter %s:%d to %s: %w", d.Stream, d.Sequence, subject, mapError(err))
}

// oneLine makes s a single-line header value.
func oneLine(s string) string {
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' }), " | ")
}

// cutUTF8 cuts s to at most n bytes, on a character boundary, marking the
// cut with "…".
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// headerLen is the size of h on the wire, as nats.go encodes it.
func headerLen(h nats.Header) int {
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// deadLetterBatch is how many dead letters one direct get asks for: they
// may be near the max payload each, and the server sends a whole batch at
// once.
const deadLetterBatch = 64

// DeadLetters returns the most recent limit dead letters (0: all), oldest
// first. Messages deleted from the stream leave no gap in the count: the
// read goes further back until it has limit letters or reaches the first.
//
// A dead-letter stream that does not exist gives ErrNoStream rather than an
// empty list: engines create it at set-up, so its absence means a wrong
// prefix or a server without the engine's streams, which an operator
// looking for dead letters must not mistake for "none".
//
// Headers are read leniently, since operators may write to the stream: a
// missing or garbled header leaves its field at the zero value.
func (s *Store) DeadLetters(ctx context.Context, limit int) ([]DeadLetter, error) {
	if limit < 0 {
		return nil, fmt.Errorf("dead letters: limit %d is negative", limit)
	}
	name := s.cfg.DeadLetterStream()
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read dead letters from %s: %w", name, mapError(err))
	}
	info := st.CachedInfo()
	if !info.Config.AllowDirect {
		return nil, fmt.Errorf("read dead letters from %s: the stream does not allow direct gets (allow_direct); update it with the engine's configuration", name)
	}
	out := []DeadLetter{}
	first, last := info.State.FirstSeq, info.State.LastSeq
	if info.State.Msgs == 0 || first == 0 || last < first {
		return out, nil
	}
	if limit == 0 {
		return s.readDeadLetters(ctx, first, last)
	}
	// Walk back in windows of the letters still wanted; a window holds
	// fewer only where messages were deleted.
	want := uint64(limit)
	end := last
	for want > 0 {
		start := first
		if end-first+1 > want {
			start = end - want + 1
		}
		got, err := s.readDeadLetters(ctx, start, end)
		if err != nil {
			return nil, err
		}
		out = append(got, out...)
		want -= uint64(len(got))
		if start == first {
			break
		}
		end = start - 1
	}
	return out, nil
}

// readDeadLetters reads the dead letters with sequences from..to, in order.
func (s *Store) readDeadLetters(ctx context.Context, from, to uint64) ([]DeadLetter, error) {
	name := s.cfg.DeadLetterStream()
	var out []DeadLetter
	for from <= to {
		msgs, pending, err := s.directGet(ctx, name, directGetRequest{Seq: from, Batch: int(min(to-from+1, deadLetterBatch))})
		if err != nil {
			return nil, fmt.Errorf("read dead letters from %s: %w", name, err)
		}
		for _, m := range msgs {
			// Direct gets step over deleted messages, so a batch may run
			// past the window.
			if m.Seq > to {
				return out, nil
			}
			out = append(out, decodeDeadLetter(m))
		}
		if len(msgs) == 0 || pending == 0 {
			break
		}
		from = msgs[len(msgs)-1].Seq + 1
	}
	return out, nil
}

// maxOriginalHeaders bounds the original's headers a dead letter keeps (a
// server takes at most 64 KiB of headers, and the dead letter's own need
// room): a header that does not fit is dropped, and hdrDeadLetterHeadersCut
// says so.
const maxOriginalHeaders = 8 << 10

// copyOriginalHeaders adds the original message's headers to a dead
// letter's, in a stable order, within maxOriginalHeaders.
func copyOriginalHeaders(h, original nats.Header) {
	keys := make([]string, 0, len(original))
	for k := range original {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	size := 0
	for _, k := range keys {
		name := k
		switch {
		case strings.HasPrefix(k, deadLetterHeaderPrefix):
			continue // never the original's claim to be a dead letter
		case strings.HasPrefix(k, "Nats-"):
			name = originalHeaderPrefix + k
		}
		for _, v := range original[k] {
			v = oneLine(v)
			n := len(name) + len(v) + 4
			if size+n > maxOriginalHeaders {
				h.Set(hdrDeadLetterHeadersCut, "true") // this one goes; smaller ones may still fit
				continue
			}
			size += n
			h.Add(name, v)
		}
	}
}

// decodeDeadLetter reads a dead letter's headers; what does not parse stays
// zero.
func decodeDeadLetter(m storedMsg) DeadLetter {
	h := m.Header
	d := DeadLetter{
		Stream:             h.Get(hdrDeadLetterStream),
		Subject:            h.Get(hdrDeadLetterSubject),
		Sequence:           parseUint(h.Get(hdrDeadLetterSequence)),
		Consumer:           h.Get(hdrDeadLetterConsumer),
		Reason:             h.Get(hdrDeadLetterReason),
		Node:               h.Get(hdrDeadLetterNode),
		Deliveries:         parseUint(h.Get(hdrDeadLetterDeliveries)),
		Data:               m.Data,
		DeadLetterSequence: m.Seq,
	}
	if t, err := time.Parse(time.RFC3339Nano, h.Get(hdrDeadLetterTime)); err == nil {
		d.Time = t
	}
	if n, err := strconv.Atoi(h.Get(hdrDeadLetterSize)); err == nil && n >= 0 {
		d.Size = n
	}
	d.Truncated, _ = strconv.ParseBool(h.Get(hdrDeadLetterTruncated))
	for k, vs := range h {
		if strings.HasPrefix(k, deadLetterHeaderPrefix) || strings.HasPrefix(k, "Nats-") {
			continue // the dead letter's own, or the stream's
		}
		if d.Headers == nil {
			d.Headers = nats.Header{}
		}
		d.Headers[k] = vs
	}
	return d
}

// parseUint parses a decimal header value; anything else, an overflow
// included, is 0.
func parseUint(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0
	}
	return n
}
