package worker

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/stream"
)

// The inbox: what any NATS client publishes to the engine (starts,
// signals, cancellations) is captured by the inbox stream, so that a
// fire-and-forget publish is durable, and moved into histories by these
// consumers. A message is acked once its effect is in the history, or set
// aside in the dead-letter stream with the reason it has none (a signal
// to a saga that does not exist): never dropped silently. See
// docs/protocol.md.

// Headers of inbox messages.
const (
	// HeaderContentType declares the encoding of a body:
	// "application/msgpack" (the default) or "application/json".
	HeaderContentType = "Content-Type"
	// HeaderSagaID names the saga a published start creates; without it,
	// the body is an envelope (api.StartRequest).
	HeaderSagaID = "Saga-Id"
	// HeaderRequestID and HeaderRunTimeout are a published start's
	// request id and run timeout (a Go duration).
	HeaderRequestID  = "Saga-Request-Id"
	HeaderRunTimeout = "Saga-Run-Timeout"
	// HeaderIdentity says who publishes a cancellation.
	HeaderIdentity = "Saga-Identity"
)

// Content types of inbox bodies.
const (
	ContentTypeJSON    = "application/json"
	ContentTypeMsgpack = "application/msgpack"
)

// startInboxConsumers starts the consumers of the inbox stream: signals
// one at a time fleet-wide (MaxAckPending 1), so that they reach each
// history in the order the inbox stored them; cancellations; and the
// starts of each workflow type this node registers, so that a start
// waits for a node that can check its input.
func (n *Node) startInboxConsumers(ctx context.Context, slots chan struct{}) error {
	cfg := n.store.Config()
	inbox := cfg.InboxStream()
	if err := n.addConsumerPending(ctx, inbox, stream.InboxSignalConsumer, "signals published to sagas, moved in order",
		cfg.InboxSignalFilter(), 1, make(chan struct{}, 1), inboxSignals{n}); err != nil {
		return err
	}
	if err := n.addConsumer(ctx, inbox, stream.InboxCancelConsumer, "cancellations published", cfg.InboxCancelFilter(), slots, inboxCancels{n}); err != nil {
		return err
	}
	for _, name := range n.reg.WorkflowNames() {
		if err := n.addConsumer(ctx, inbox, stream.InboxStartConsumer(name), "starts of "+name+" published", cfg.InboxStartSubject(name), slots, inboxStarts{n}); err != nil {
			return err
		}
	}
	return nil
}

// inboxPayload decodes a published body into a payload, by its content
// type, and checks it against the engine's limits.
func (n *Node) inboxPayload(what string, h nats.Header, body []byte) (stream.Payload, error) {
	var p stream.Payload
	switch ct := h.Get(HeaderContentType); ct {
	case "", ContentTypeMsgpack:
		if len(body) > 0 {
			if err := stream.CheckMsgpack(body); err != nil {
				return nil, fmt.Errorf("%s is not msgpack (set %s: %s for JSON): %w", what, HeaderContentType, ContentTypeJSON, err)
			}
			p = stream.Payload(body)
		}
	case ContentTypeJSON:
		if len(bytes.TrimSpace(body)) > 0 {
			var err error
			if p, err = stream.PayloadFromJSON(body); err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
		}
	default:
		return nil, fmt.Errorf("%w: %s %q is not %s or %s", stream.ErrCodec, HeaderContentType, ct, ContentTypeMsgpack, ContentTypeJSON)
	}
	// A value published plain (by a client without the codec, or as JSON)
	// is sealed before it reaches the history.
	p, err := stream.SealPayload(n.opts.Codec, p)
	if err != nil {
		return nil, err
	}
	if err := n.store.Config().CheckPayload(what, p); err != nil {
		return nil, err
	}
	return p, nil
}

// inboxSignals moves published signals into their sagas' histories.
type inboxSignals struct{ n *Node }

// signalPatience bounds the in-process retries of recording one signal:
// signals move one at a time, so a saga whose history cannot be written
// (its shard has no leader) must not hold the others for long; the
// signal is then redelivered later.
const signalPatience = time.Minute

func (h inboxSignals) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	_, tokens, err := n.store.Config().ParseInboxSubject(d.msg.Subject())
	if err != nil {
		return deadLetter("signal on an invalid subject", err)
	}
	sagaID, name := tokens[0], tokens[1]
	d.with(slog.String("saga_id", sagaID), slog.String("signal", name))
	payload, err := n.inboxPayload("signal "+name, d.msg.Headers(), d.msg.Data())
	if err != nil {
		return deadLetter("undecodable signal", err)
	}
	msgID := d.msg.Headers().Get(jetstream.MsgIDHeader)
	if len(msgID) > saga.MaxSignalMsgID {
		return deadLetter("invalid signal", fmt.Errorf("%s of %d bytes, at most %d", jetstream.MsgIDHeader, len(msgID), saga.MaxSignalMsgID))
	}
	seq := d.meta.Sequence.Stream
	var epoch int64
	record := func(checkEpoch bool) (suspect bool, err error) {
		err = backoff.Retry{Policy: reportPolicy, Clock: n.clock, MaxElapsed: signalPatience,
			Retryable: func(err error) bool { return !isHistoryProblem(err) && stream.Transient(err) },
			OnRetry: func(attempt int, delay time.Duration, err error) {
				d.logger().Warn("record signal failed; retrying", "err", err, "tries", attempt, "retry_in", delay.Round(time.Millisecond))
			},
		}.Do(ctx, func(ctx context.Context) error {
			suspect = false
			return n.advance(ctx, advanceRequest{sagaID: sagaID, inputs: func(st *stream.State) []stream.Event {
				if checkEpoch && st.LastInboxEpoch != 0 && st.LastInboxEpoch != epoch {
					// Recorded from another inbox than the one this node
					// knows.
					suspect = true
					return nil
				}
				if st.SignalRecorded(epoch, seq) {
					return nil // moved already, by an earlier delivery
				}
				return []stream.Event{{Type: stream.SignalReceived, Attrs: &stream.SignalReceivedAttrs{
					Name: name, Input: payload, InboxSeq: seq, InboxEpoch: epoch, MsgID: msgID}}}
			}})
		})
		return suspect, err
	}
	if epoch, err = n.inboxEpoch(ctx, false); err != nil {
		return retryLater(d, "read the inbox stream", err)
	}
	suspect, err := record(true)
	if err == nil && suspect {
		// The history names another inbox than the one this node knows:
		// the inbox may have been created again since this node read it.
		// Read its epoch afresh (outside the saga's lock) and decide on
		// that: the history's is then an older inbox's, whose numbering
		// says nothing of this one's.
		if epoch, err = n.inboxEpoch(ctx, true); err != nil {
			return retryLater(d, "read the inbox stream", err)
		}
		_, err = record(false)
	}
	switch {
	case err != nil && ctx.Err() != nil:
		return leave()
	case errors.Is(err, stream.ErrUnsupported):
		return nakAfter(unsupportedDelay(d), "record signal (leaving it to a node that can read the history)", err)
	case err != nil && stream.Transient(err):
		return retryLater(d, "record signal", err)
	case err != nil:
		// Permanent (too large to record, say): set aside rather than
		// retried, which would hold every signal behind it.
		return deadLetter("signal cannot be recorded", err)
	}
	// Whether it landed (advance records nothing for a saga that does not
	// exist or has ended, and a lost race may have found it ended) is
	// what the history says, as the node's view holds it after advance.
	return n.settleInbox(ctx, d, "signal to", sagaID, trustCache, func(st *stream.State) bool { return st.SignalRecorded(epoch, seq) })
}

// inboxEpochTTL bounds how long a node trusts the inbox epoch it read: an
// inbox deleted and created again is noticed within it, or at once when a
// history names another epoch.
const inboxEpochTTL = 30 * time.Second

// inboxEpoch returns when the inbox stream was created, as read within
// inboxEpochTTL, or afresh when fresh is set.
func (n *Node) inboxEpoch(ctx context.Context, fresh bool) (int64, error) {
	if c := n.inboxCreated.Load(); c != nil && !fresh && n.clock.Now().Sub(c.read) < inboxEpochTTL {
		return c.epoch, nil
	}
	s, err := n.store.JetStream().Stream(ctx, n.store.Config().InboxStream())
	if err != nil {
		return 0, stream.MapError(err)
	}
	e := s.CachedInfo().Created.UnixNano()
	n.inboxCreated.Store(&inboxEpochRead{epoch: e, read: n.clock.Now()})
	return e, nil
}

// inboxEpochRead is the inbox epoch and when it was read.
type inboxEpochRead struct {
	epoch int64
	read  time.Time
}

// settleInbox acks an inbox message whose effect the history holds (done
// says), and sets aside one for a saga that does not exist or has ended,
// with that reason. what heads the reason: "signal to", "cancellation of".
func (n *Node) settleInbox(ctx context.Context, d *delivery, what, sagaID string, fresh freshness, done func(*stream.State) bool) outcome {
	var exists, ended, recorded bool
	var status stream.Status
	err := n.withStateFresh(ctx, sagaID, 0, fresh, func(st *stream.State) {
		exists, ended, status, recorded = st.Exists(), st.Status.Terminal(), st.Status, done(st)
	})
	switch {
	case errors.Is(err, errNotInHistory) || err == nil && !exists:
		return deadLetter(what+" a saga that does not exist", fmt.Errorf("saga %s not found", sagaID))
	case err != nil:
		return retryLater(d, "look up saga", err)
	case recorded:
		return ack()
	case ended:
		return deadLetter(what+" a saga that has ended", fmt.Errorf("saga %s ended %s", sagaID, status))
	}
	return retryLater(d, "record the "+what+" a saga", fmt.Errorf("saga %s is %s but took nothing", sagaID, status))
}

// inboxCancels records published cancellation requests.
type inboxCancels struct{ n *Node }

func (h inboxCancels) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	_, tokens, err := n.store.Config().ParseInboxSubject(d.msg.Subject())
	if err != nil {
		return deadLetter("cancellation on an invalid subject", err)
	}
	sagaID := tokens[0]
	d.with(slog.String("saga_id", sagaID))
	reason := d.msg.Data()
	if !utf8.Valid(reason) {
		return deadLetter("cancellation reason is not UTF-8 text", fmt.Errorf("%d bytes", len(reason)))
	}
	identity := d.msg.Headers().Get(HeaderIdentity)
	if identity == "" {
		identity = "publish"
	}
	err = n.client.RequestCancel(ctx, sagaID, string(reason), identity)
	switch {
	case err == nil, errors.Is(err, saga.ErrCancelRequested):
		return ack() // requested, now or before: a repeat changes nothing
	case errors.Is(err, saga.ErrNotFound):
		return deadLetter("cancellation of a saga that does not exist", err)
	case errors.Is(err, saga.ErrAlreadyEnded):
		// Canceled, by this request (redelivered after its node died
		// before the ack) or another: nothing is left to do.
		return n.settleInbox(ctx, d, "cancellation of", sagaID, readLatest, func(st *stream.State) bool { return st.CancelRequested != nil })
	case errors.Is(err, saga.KindValidation):
		return deadLetter("invalid cancellation", err)
	}
	return n.handlingFailed(ctx, d, "record cancellation", err)
}

// inboxStarts starts sagas from published starts of one workflow type.
type inboxStarts struct{ n *Node }

// startEnvelope is a published start without a Saga-Id header, in
// msgpack; in JSON it is api.StartRequest.
type startEnvelope struct {
	ID         string         `msgpack:"id"`
	Input      stream.Payload `msgpack:"input"`
	RequestID  string         `msgpack:"request_id"`
	RunTimeout string         `msgpack:"run_timeout"`
}

func (h inboxStarts) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	_, tokens, err := n.store.Config().ParseInboxSubject(d.msg.Subject())
	if err != nil {
		return deadLetter("start on an invalid subject", err)
	}
	wf, ok := n.reg.Workflow(tokens[0])
	if !ok {
		return nakAfter(unsupportedDelay(d), "start (leaving it to a node that runs the type)", fmt.Errorf("workflow type %q", tokens[0]))
	}
	env, err := n.startFromInbox(wf, d.msg.Headers(), d.msg.Data())
	if err != nil {
		return deadLetter("invalid start", err)
	}
	d.with(slog.String("saga_id", env.ID), slog.String("workflow_type", wf.Name))
	opts := saga.StartOptions{ID: env.ID, RequestID: env.RequestID, IfExists: saga.IfExistsUseExisting}
	if env.RunTimeout != "" {
		if opts.RunTimeout, err = time.ParseDuration(env.RunTimeout); err != nil || opts.RunTimeout < 0 {
			return deadLetter("invalid start", fmt.Errorf("run timeout %q is not a non-negative duration", env.RunTimeout))
		}
	}
	_, err = n.client.StartPayload(ctx, wf.Name, wf.Version, env.Input, opts)
	switch {
	case err == nil:
		return ack() // started, or started before: a start is idempotent by id
	case errors.Is(err, saga.KindValidation), errors.Is(err, saga.KindCodec):
		return deadLetter("invalid start", err)
	}
	return n.handlingFailed(ctx, d, "start saga", err)
}

// startFromInbox reads a published start: the saga id from its header and
// the input from its body, or an envelope; the input is checked against
// the workflow's input type.
func (n *Node) startFromInbox(wf *saga.RegisteredWorkflow, h nats.Header, body []byte) (startEnvelope, error) {
	env := startEnvelope{ID: h.Get(HeaderSagaID), RequestID: h.Get(HeaderRequestID), RunTimeout: h.Get(HeaderRunTimeout)}
	isJSON := h.Get(HeaderContentType) == ContentTypeJSON
	switch {
	case env.ID != "" && isJSON:
		input := body
		if len(bytes.TrimSpace(input)) == 0 {
			input = []byte("null")
		}
		p, err := wf.InputFromJSON(input)
		if err != nil {
			return env, err
		}
		env.Input = p
	case env.ID != "":
		p, err := n.inboxPayload("input", h, body)
		if err != nil {
			return env, err
		}
		env.Input = p
	case isJSON:
		var r api.StartRequest
		if err := decodeJSON(body, &r); err != nil {
			return env, err
		}
		input := []byte(r.Input)
		if len(input) == 0 {
			input = []byte("null")
		}
		p, err := wf.InputFromJSON(input)
		if err != nil {
			return env, err
		}
		// The envelope's fields win; the headers fill in what it leaves
		// out, as for a msgpack envelope.
		env = startEnvelope{ID: r.ID, Input: p, RequestID: cmp.Or(r.RequestID, env.RequestID), RunTimeout: cmp.Or(r.RunTimeout, env.RunTimeout)}
	default:
		if err := stream.Unmarshal(body, &env); err != nil {
			return env, fmt.Errorf("start envelope (no %s header): %w", HeaderSagaID, err)
		}
	}
	if env.ID == "" {
		return env, fmt.Errorf("%w: a published start needs a saga id: header %s, or \"id\" in the envelope", stream.ErrInvalidID, HeaderSagaID)
	}
	if err := stream.ValidateID("saga id", env.ID); err != nil {
		return env, err
	}
	plain, err := stream.OpenPayload(n.opts.Codec, env.Input)
	if err != nil {
		return env, err
	}
	if err := wf.CheckInput(plain); err != nil {
		return env, err
	}
	return env, n.store.Config().CheckPayload("workflow input", env.Input)
}

func decodeJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: start envelope is not the expected JSON: %v", stream.ErrCodec, err)
	}
	return nil
}
