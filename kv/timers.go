package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/clock"
	"github.com/jetsaga/saga/stream"
)

// Errors of the timers. Match them with errors.Is. A timer whose fields
// are not subject tokens is refused with stream.ErrInvalidID.
var (
	// ErrNotTimer means a key that Key did not make.
	ErrNotTimer = errors.New("not a timer")
	// ErrBucketUnfit means the timers bucket exists but is configured so
	// that timers would fire late or never: more than one value per key
	// (the server then raises every TTL to the marker TTL), no expiry
	// markers, a bucket-wide TTL (which would fire timers early), or
	// markers kept for less than TimersConfig.MarkerTTL.
	ErrBucketUnfit = errors.New("timers bucket unfit for timers")
)

// TimersConfig configures the timers bucket.
type TimersConfig struct {
	// Bucket names the key-value bucket, e.g. "SAGA_TIMERS": letters,
	// digits, '-' and '_'. Required.
	Bucket string
	// Replicas of the bucket: 1 for a single server, 3 in a cluster.
	// Defaults to 1.
	Replicas int
	// Storage of the bucket. Defaults to file (the zero value).
	Storage jetstream.StorageType
	// MarkerTTL is how long an expiry marker is kept for a consumer that is
	// not running: the longest outage of every node after which due timers
	// still fire. It also bounds how long Schedule remembers that a timer
	// fired. Whole seconds, rounded up. Defaults to 24h.
	MarkerTTL time.Duration
}

// DefaultMarkerTTL is TimersConfig.MarkerTTL when it is not set.
const DefaultMarkerTTL = 24 * time.Hour

func (c TimersConfig) replicas() int {
	if c.Replicas <= 0 {
		return 1
	}
	return c.Replicas
}

func (c TimersConfig) markerTTL() time.Duration {
	if c.MarkerTTL <= 0 {
		return DefaultMarkerTTL
	}
	return ceilSeconds(c.MarkerTTL)
}

func (c TimersConfig) validate() error {
	if err := stream.ValidateID("timers bucket", c.Bucket); err != nil {
		return fmt.Errorf("timers config: %w", err)
	}
	return nil
}

// KeyValueConfig is the bucket the timers need: one value per key (with
// more, the server raises every TTL to the marker TTL), expiry markers kept
// for MarkerTTL, no bucket-wide TTL. The engine's set-up creates it (never
// weakening an existing one); tests may create it with js.CreateKeyValue.
func (c TimersConfig) KeyValueConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         c.Bucket,
		Description:    "saga durable timers: an entry expires at its timer's due time",
		History:        1,
		Replicas:       c.replicas(),
		Storage:        c.Storage,
		LimitMarkerTTL: c.markerTTL(),
	}
}

// StreamName is the bucket's stream, KV_<Bucket>.
func (c TimersConfig) StreamName() string { return "KV_" + c.Bucket }

// FilterSubject is $KV.<Bucket>.>: what a durable consumer of fired timers
// reads.
func (c TimersConfig) FilterSubject() string { return c.subjectPrefix() + ">" }

func (c TimersConfig) subjectPrefix() string { return "$KV." + c.Bucket + "." }

// Timer identifies one durable timer. Every field but Due is a subject
// token or a number, so the whole timer is its key: a fired marker carries
// no value, only its subject. Two timers that differ in any field, Due
// included, are two timers.
type Timer struct {
	// Kind says what the timer is for, e.g. "retry": letters, digits, '-'
	// and '_' (1..128 bytes).
	Kind string
	// SagaID: letters, digits, '-' and '_' (1..128 bytes).
	SagaID string
	// EventID is the history event the timer belongs to.
	EventID uint64
	// Attempt is 0 when not applicable; never negative.
	Attempt int
	// Due is when the timer fires, kept to the millisecond; not before
	// 1970. ParseKey and Fired return it in UTC.
	Due time.Time
}

// Key encodes the timer as a KV key:
// <kind>.<sagaID>.<eventID>.<attempt>.<due unix ms>.
func (t Timer) Key() string {
	return t.Kind + "." + t.SagaID + "." + strconv.FormatUint(t.EventID, 10) + "." +
		strconv.Itoa(t.Attempt) + "." + strconv.FormatInt(t.Due.UnixMilli(), 10)
}

func (t Timer) validate() error {
	if err := stream.ValidateID("timer kind", t.Kind); err != nil {
		return err
	}
	if err := stream.ValidateID("saga id", t.SagaID); err != nil {
		return err
	}
	if t.Attempt < 0 {
		return fmt.Errorf("%w: timer attempt %d is negative", stream.ErrInvalidID, t.Attempt)
	}
	if t.Due.UnixMilli() < 0 {
		return fmt.Errorf("%w: timer due time %v is unset or before 1970", stream.ErrInvalidID, t.Due)
	}
	return nil
}

// ParseKey decodes a key made by Key; an error wrapping ErrNotTimer for
// anything else.
func ParseKey(key string) (Timer, error) {
	parts := strings.Split(key, ".")
	if len(parts) != 5 {
		return Timer{}, fmt.Errorf("%w: key %q has %d tokens, a timer's has 5", ErrNotTimer, key, len(parts))
	}
	event, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		return Timer{}, fmt.Errorf("%w: key %q: event id: %w", ErrNotTimer, key, err)
	}
	attempt, err := strconv.Atoi(parts[3])
	if err != nil {
		return Timer{}, fmt.Errorf("%w: key %q: attempt: %w", ErrNotTimer, key, err)
	}
	due, err := strconv.ParseInt(parts[4], 10, 64)
	if err != nil {
		return Timer{}, fmt.Errorf("%w: key %q: due time: %w", ErrNotTimer, key, err)
	}
	t := Timer{Kind: parts[0], SagaID: parts[1], EventID: event, Attempt: attempt, Due: time.UnixMilli(due).UTC()}
	if err := t.validate(); err != nil {
		return Timer{}, fmt.Errorf("%w: key %q: %w", ErrNotTimer, key, err)
	}
	// One timer, one key: "01" or "+1" would decode to a timer whose key is
	// another subject, whose marker Fired would never match.
	if t.Key() != key {
		return Timer{}, fmt.Errorf("%w: key %q is not in canonical form", ErrNotTimer, key)
	}
	return t, nil
}

// Timers creates and cancels timers in a bucket. It is safe for concurrent
// use.
type Timers struct {
	js     jetstream.JetStream
	cfg    TimersConfig
	cfgErr error
	clk    clock.Clock
	// checked is set once the bucket was found fit; a failed check is
	// repeated by the next call.
	checked atomic.Bool
}

// NewTimers uses an existing bucket (see KeyValueConfig), checked on first
// use. It takes the JetStream context rather than the bucket's KeyValue
// because exactness needs what the KeyValue API hides: the marker that
// tells a fired timer from a canceled one, and a create that is
// conditional on it (see Schedule). clk tells the time for TTLs
// (clock.Real in production). A config error is returned by every call.
func NewTimers(js jetstream.JetStream, cfg TimersConfig, clk clock.Clock) *Timers {
	return &Timers{js: js, cfg: cfg, cfgErr: cfg.validate(), clk: clk}
}

// Headers of the bucket's messages. KV-Operation is the KeyValue API's own
// header for deletions, which nats.go does not export.
const (
	kvOperationHeader = "KV-Operation"
	kvOperationPurge  = "PURGE"
	markerReasonAge   = "MaxAge"
)

// Schedule creates the timer's entry with a TTL of the time left to Due,
// rounded up to whole seconds and at least 1 s, so it never fires early
// (the server would drop the fraction of a second). This holds while the
// server's clock agrees with clk. The price is lateness: the rounding, up
// to a second unless Due is a whole number of seconds away, plus the
// server's expiry check, about every 250 ms. A Due in the past fires about
// a second from now: a timer scheduled late, after an outage, must still
// fire.
//
// Schedule reads the key's last message from the stream's leader and
// writes only if that is still the last one, and then:
//   - the key is empty: it creates the entry;
//   - the entry exists: nothing to do (nil);
//   - the timer fired (its expiry marker is there): nothing to do (nil);
//   - the timer was canceled: it creates the entry again, so the timer
//     fires again.
//
// So callers retry freely, even after a lost reply and after the timer
// fired, and a timer fires once per creation. Once a marker expires
// (TimersConfig.MarkerTTL) the timer is forgotten, and scheduling it again
// fires it again. Delivery of the marker to a consumer is at least once:
// whoever acts on Fired must be idempotent.
func (ts *Timers) Schedule(ctx context.Context, t Timer) error {
	if err := ts.usable(ctx, t); err != nil {
		return fmt.Errorf("schedule timer: %w", err)
	}
	key := t.Key()
	subject := ts.cfg.subjectPrefix() + key
	value, err := json.Marshal(timerValue{Kind: t.Kind, Saga: t.SagaID, Event: t.EventID, Attempt: t.Attempt, Due: t.Due.UTC().Truncate(time.Millisecond)})
	if err != nil {
		return fmt.Errorf("schedule timer %s: %w", key, err)
	}
	// A conflict means the key changed between the read and the write: it
	// was created, fired or canceled meanwhile, which the next read sorts
	// out. Only a key that keeps changing exhausts the tries.
	for range scheduleTries {
		last, err := ts.lastMsg(ctx, subject)
		if err != nil {
			return fmt.Errorf("schedule timer %s: %w", key, err)
		}
		var expect uint64
		switch {
		case last == nil:
		case last.header.Get(jetstream.MarkerReasonHeader) == markerReasonAge:
			return nil // fired
		case last.header.Get(jetstream.MarkerReasonHeader) == "" && last.header.Get(kvOperationHeader) == "":
			return nil // scheduled already
		default:
			expect = last.seq // canceled or deleted: schedule again
		}
		// The TTL counts from now, after the read, and the server counts it
		// from when it stores the entry, later still.
		msg := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: value}
		_, err = ts.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(expect), jetstream.WithMsgTTL(ttlUntil(t.Due, ts.clk.Now())))
		if err == nil {
			return nil
		}
		if !isWrongLastSequence(err) {
			return fmt.Errorf("schedule timer %s: %w", key, err)
		}
	}
	return fmt.Errorf("schedule timer %s: the key changed %d times while scheduling", key, scheduleTries)
}

const scheduleTries = 5

// timerValue is an entry's value, for people running `nats kv get`;
// nothing reads it back.
type timerValue struct {
	Kind    string    `json:"kind"`
	Saga    string    `json:"saga"`
	Event   uint64    `json:"event"`
	Attempt int       `json:"attempt"`
	Due     time.Time `json:"due"`
}

// ttlUntil is the TTL that expires no earlier than due: whole seconds
// rounded up, at least 1 s (the server's minimum).
func ttlUntil(due, now time.Time) time.Duration {
	return max(ceilSeconds(due.Sub(now)), time.Second)
}

func ceilSeconds(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return (d + time.Second - 1) / time.Second * time.Second
}

// Cancel removes the timer's entry so that it does not fire; canceling a
// timer that fired or never existed is not an error. It also removes an
// expiry marker no consumer has read yet: a timer canceled after its Due
// fires only if a consumer took the marker first. Scheduling a canceled
// timer again arms it again.
//
// Cancel writes a purge tombstone that expires after MarkerTTL, without a
// marker of its own (the server writes none for a purge), rather than a
// KeyValue Delete, whose tombstone can have no TTL and would stay forever.
func (ts *Timers) Cancel(ctx context.Context, t Timer) error {
	if err := ts.usable(ctx, t); err != nil {
		return fmt.Errorf("cancel timer: %w", err)
	}
	msg := nats.NewMsg(ts.cfg.subjectPrefix() + t.Key())
	msg.Header.Set(kvOperationHeader, kvOperationPurge)
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	if _, err := ts.js.PublishMsg(ctx, msg, jetstream.WithMsgTTL(ts.cfg.markerTTL())); err != nil {
		return fmt.Errorf("cancel timer %s: %w", t.Key(), err)
	}
	return nil
}

// Fired reports the timer a message of the bucket's stream announces, if
// it is an expiry marker (Nats-Marker-Reason: MaxAge) of a timer key.
// Creations, cancellations, deletions, purges and foreign keys under the
// bucket are not fired timers: ok is false.
func Fired(msg jetstream.Msg, cfg TimersConfig) (Timer, bool) {
	if msg.Headers().Get(jetstream.MarkerReasonHeader) != markerReasonAge {
		return Timer{}, false
	}
	key, ok := strings.CutPrefix(msg.Subject(), cfg.subjectPrefix())
	if !ok {
		return Timer{}, false
	}
	t, err := ParseKey(key)
	if err != nil {
		return Timer{}, false
	}
	return t, true
}

// usable checks the config, the timer and, once, the bucket.
func (ts *Timers) usable(ctx context.Context, t Timer) error {
	if ts.cfgErr != nil {
		return ts.cfgErr
	}
	if err := t.validate(); err != nil {
		return err
	}
	if ts.checked.Load() {
		return nil
	}
	if err := ts.checkBucket(ctx); err != nil {
		return err
	}
	ts.checked.Store(true)
	return nil
}

// checkBucket refuses a bucket on which timers would fire late, early or
// never, which would otherwise go unnoticed until they did.
func (ts *Timers) checkBucket(ctx context.Context) error {
	s, err := ts.js.Stream(ctx, ts.cfg.StreamName())
	if err != nil {
		return fmt.Errorf("timers bucket %s: %w", ts.cfg.Bucket, err)
	}
	c := s.CachedInfo().Config
	switch {
	case c.MaxMsgsPerSubject != 1:
		return fmt.Errorf("%w: bucket %s keeps %d values per key, timers need 1", ErrBucketUnfit, ts.cfg.Bucket, c.MaxMsgsPerSubject)
	case !c.AllowMsgTTL || c.SubjectDeleteMarkerTTL <= 0:
		return fmt.Errorf("%w: bucket %s has no limit marker TTL", ErrBucketUnfit, ts.cfg.Bucket)
	case c.SubjectDeleteMarkerTTL < ts.cfg.markerTTL():
		return fmt.Errorf("%w: bucket %s keeps markers %s, the config asks for %s", ErrBucketUnfit, ts.cfg.Bucket, c.SubjectDeleteMarkerTTL, ts.cfg.markerTTL())
	case c.MaxAge > 0:
		return fmt.Errorf("%w: bucket %s expires every entry after %s", ErrBucketUnfit, ts.cfg.Bucket, c.MaxAge)
	}
	return nil
}

// storedMsg is the part of a stored message Schedule decides on.
type storedMsg struct {
	seq    uint64
	header nats.Header
}

// lastMsg asks the stream's leader for the subject's last message; nil if
// there is none. Not a direct get: any replica answers those, and a replica
// behind the leader could show an entry that a Cancel already removed.
func (ts *Timers) lastMsg(ctx context.Context, subject string) (*storedMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, leaderReadTimeout)
	defer cancel()
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return nil, err
	}
	// The default API prefix, as the engine's jetstream.New(nc) uses.
	reply, err := ts.js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+ts.cfg.StreamName(), req)
	if err != nil {
		return nil, fmt.Errorf("read last message: %w", err)
	}
	var resp struct {
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("read last message: %w", err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == codeNoMessageFound:
		return nil, nil
	case resp.Error != nil:
		return nil, fmt.Errorf("read last message: %w", resp.Error)
	case resp.Message == nil:
		return nil, errors.New("read last message: reply without a message")
	}
	m := &storedMsg{seq: resp.Message.Seq}
	if len(resp.Message.Header) > 0 {
		if m.header, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return nil, fmt.Errorf("read last message: headers: %w", err)
		}
	}
	return m, nil
}

// leaderReadTimeout bounds the leader's answer to lastMsg.
const leaderReadTimeout = 5 * time.Second

// JetStream API error codes the timers react to.
const (
	codeNoMessageFound            jetstream.ErrorCode = 10037
	codeWrongLastSequence         jetstream.ErrorCode = 10071
	codeWrongLastSequenceInFlight jetstream.ErrorCode = 10164 // replicated streams
)

func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == codeWrongLastSequence || apiErr.ErrorCode == codeWrongLastSequenceInFlight)
}
