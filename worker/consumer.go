package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/stream"
)

// A handler processes the messages of one durable consumer. It returns what
// to do with each: the consumer loop carries it out. Handlers do not ack,
// nak or heartbeat themselves.
type handler interface {
	handle(ctx context.Context, d *delivery) outcome
}

// A givingBack handler learns of the messages the loop returns unhandled
// (held for a slot when the node stopped), before they are naked.
type givingBack interface {
	giveBack(ctx context.Context, d *delivery)
}

// delivery is one message handed to a handler.
type delivery struct {
	msg      jetstream.Msg
	meta     *jetstream.MsgMetadata
	base     *slog.Logger
	consumer string
	// The logger is built only when something is logged: most messages
	// log nothing, and formatting attributes for each would cost more than
	// handling it.
	attrs []slog.Attr
	buf   [4]slog.Attr
	log   *slog.Logger
	// owner is the consumer that delivered the message.
	owner *consumer
}

// handOff lets work that outlives the handler finish the delivery: the
// handler returns handedOff(), and finish carries out the outcome that
// work reaches, once. Until then the message stays held (kept alive by
// the consumer's heartbeats) without holding one of the consumer's slots.
// The caller must have the node track the work (Node.track), so that a
// stopping node waits for it.
func (d *delivery) handOff() (finish func(outcome)) {
	var once sync.Once
	return func(out outcome) { once.Do(func() { d.owner.finish(d, out) }) }
}

// with adds attributes to what the delivery logs.
func (d *delivery) with(attrs ...slog.Attr) {
	if d.attrs == nil {
		d.attrs = d.buf[:0]
	}
	d.attrs = append(d.attrs, attrs...)
	d.log = nil
}

// logger returns the delivery's logger.
func (d *delivery) logger() *slog.Logger {
	if d.log == nil {
		args := make([]any, 0, 3+len(d.attrs))
		args = append(args, slog.String("consumer", d.consumer), slog.String("subject", d.msg.Subject()))
		if d.meta != nil {
			args = append(args, slog.Uint64("stream_seq", d.meta.Sequence.Stream))
		}
		for _, a := range d.attrs {
			args = append(args, a)
		}
		d.log = d.base.With(args...)
	}
	return d.log
}

type outcomeKind int

const (
	// outcomeAck: done; the message goes.
	outcomeAck outcomeKind = iota
	// outcomeNak: deliver the message again after delay.
	outcomeNak
	// outcomeDeadLetter: the message can never be handled; set it aside in
	// the dead-letter stream with the reason, then terminate it.
	outcomeDeadLetter
	// outcomeLeave: touch nothing (the node is stopping); the message is
	// redelivered after AckWait.
	outcomeLeave
	// outcomeHandedOff: the handler gave the message to work that goes on
	// after it returns (see delivery.handOff); that work finishes it. The
	// message is kept alive meanwhile, and the handler's slot is free.
	outcomeHandedOff
)

// outcome is what a handler made of a message.
type outcome struct {
	kind   outcomeKind
	delay  time.Duration
	reason string
	err    error
}

func ack() outcome { return outcome{kind: outcomeAck} }

func handedOff() outcome { return outcome{kind: outcomeHandedOff} }

func leave() outcome { return outcome{kind: outcomeLeave} }

// nakAfter asks for the message again after delay; what and err say why,
// for the log (nil err: an expected wait, not logged).
func nakAfter(delay time.Duration, what string, err error) outcome {
	return outcome{kind: outcomeNak, delay: delay, reason: what, err: err}
}

// deadLetter sets the message aside for good: reason is one line for the
// operator.
func deadLetter(reason string, err error) outcome {
	return outcome{kind: outcomeDeadLetter, reason: reason, err: err}
}

// redeliveryPolicy spaces the redeliveries of a message whose handling
// failed for a reason that may pass (NATS unavailable, a lagging replica):
// by delivery count, with jitter, at most 10 s apart.
var redeliveryPolicy = backoff.Policy{Initial: 200 * time.Millisecond, Max: 10 * time.Second}

// retryLater asks for the message again, later the more often it came.
func retryLater(d *delivery, what string, err error) outcome {
	return nakAfter(redeliveryPolicy.Delay(int(d.meta.NumDelivered)), what, err)
}

// consumer pulls the messages of one durable consumer and runs its handler
// on each, in a goroutine per message, at most as many at a time as its
// slots allow (slots may be shared by several consumers, so that one
// concurrency setting bounds a kind of work on the whole node).
//
// It pulls only what it can start on: it waits for the next message without
// holding a slot (so idle consumers sharing a pool do not starve a busy
// one), holds that one message while it waits for a slot, then takes the
// backlog with the slots that are free. Every message it holds or handles
// is kept alive with heartbeats at a third of the consumer's AckWait as the
// server has it (not as this node would have set it: consumers are shared,
// see stream.EnsureConsumer). A handler that panics is recovered: the
// message comes back a few times, then goes to the dead-letter stream.
type consumer struct {
	node   *Node
	name   string // the durable's name
	stream string
	cons   jetstream.Consumer
	slots  chan struct{}
	h      handler

	mu      sync.Mutex
	ackWait time.Duration
	held    map[jetstream.Msg]struct{} // held or being handled: heartbeat them
	panics  map[uint64]int             // by stream sequence: the messages that made the handler panic

	ctx        context.Context // canceled to stop fetching
	cancel     context.CancelFunc
	fetching   sync.WaitGroup
	beatCtx    context.Context // canceled once no handler runs any more
	beatCancel context.CancelFunc
	heartbeats sync.WaitGroup
}

// maxFetch bounds one pull request.
const maxFetch = 256

// fetchWait is how long one pull request waits for messages.
const fetchWait = 5 * time.Second

// consumerInfoRefresh is how often a consumer re-reads its settings from
// the server, so that an operator's `nats consumer edit` of AckWait reaches
// the heartbeats.
const consumerInfoRefresh = time.Minute

// minHeartbeat bounds how often held messages are kept alive, whatever
// the consumer's AckWait says.
const minHeartbeat = 100 * time.Millisecond

// maxPanics is how many deliveries of one message may panic a handler
// before the message is set aside.
const maxPanics = 3

func newConsumer(n *Node, stream string, cons jetstream.Consumer, slots chan struct{}, h handler) *consumer {
	info := cons.CachedInfo()
	c := &consumer{
		node: n, name: info.Name, stream: stream, cons: cons, slots: slots, h: h,
		ackWait: info.Config.AckWait, held: map[jetstream.Msg]struct{}{}, panics: map[uint64]int{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.beatCtx, c.beatCancel = context.WithCancel(context.Background())
	return c
}

func (c *consumer) start() {
	c.fetching.Go(c.fetchLoop)
	c.heartbeats.Go(c.heartbeatLoop)
}

// stopFetching ends fetching and gives back the message held for a slot,
// if any; handlers already started go on, their messages kept alive, until
// close.
func (c *consumer) stopFetching() {
	c.cancel()
	c.fetching.Wait()
}

// close stops the heartbeats, once the node has no handler running (or has
// given up on them).
func (c *consumer) close() {
	c.stopFetching()
	c.beatCancel()
	c.heartbeats.Wait()
}

func (c *consumer) fetchLoop() {
	failures := 0
	for c.ctx.Err() == nil {
		msg, err := c.next()
		if msg != nil {
			if !c.reserveFor(msg) {
				return // stopping: reserveFor gave the message back
			}
			c.dispatch(msg)
			// Take the backlog with every slot that is free.
			for err == nil {
				k := c.reserveFree()
				if k == 0 {
					break
				}
				var got int
				got, err = c.fetchNoWait(k)
				c.release(k - got)
				if got < k {
					break
				}
			}
		}
		if err == nil || c.ctx.Err() != nil {
			failures = 0
			continue
		}
		// NATS unreachable, the consumer gone, or its stream without a
		// leader: keep trying, gently, but at least every 2 s, so that work
		// resumes soon after an election.
		failures++
		delay := fetchRetryPolicy.Delay(failures)
		if failures == 1 || failures%20 == 0 {
			c.node.log.Warn("fetching messages failed; retrying", "consumer", c.name, "err", err, "failures", failures, "retry_in", delay.Round(time.Millisecond))
		}
		_ = c.node.clock.Sleep(c.ctx, delay)
	}
}

var fetchRetryPolicy = backoff.Policy{Initial: 100 * time.Millisecond, Max: 2 * time.Second}

// next waits up to fetchWait for one message; nil if none came.
func (c *consumer) next() (jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(c.ctx, fetchWait)
	defer cancel()
	batch, err := c.cons.Fetch(1, jetstream.FetchContext(ctx))
	if err != nil {
		return nil, err
	}
	var msg jetstream.Msg
	for m := range batch.Messages() {
		msg = m
	}
	return msg, quietFetchError(batch.Error())
}

// reserveFor takes a slot for msg, keeping msg alive while all slots are
// busy; when the consumer stops first, it gives msg back and reports false.
func (c *consumer) reserveFor(msg jetstream.Msg) bool {
	select {
	case c.slots <- struct{}{}:
		return true
	default:
	}
	c.hold(msg)
	defer c.unhold(msg)
	select {
	case c.slots <- struct{}{}:
		return true
	case <-c.ctx.Done():
		c.giveBack(msg)
		return false
	}
}

// giveBack returns a message the node will not handle: at once, so that
// another node takes it now rather than after AckWait, and without it
// counting as anything but a delivery (see givingBack).
func (c *consumer) giveBack(msg jetstream.Msg) {
	if gb, ok := c.h.(givingBack); ok {
		if meta, err := msg.Metadata(); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), giveBackTimeout)
			gb.giveBack(ctx, &delivery{msg: msg, meta: meta, base: c.node.log, consumer: c.name, owner: c})
			cancel()
		}
	}
	_ = msg.Nak()
}

// giveBackTimeout bounds what a handler records about a message it gives
// back while its node stops.
const giveBackTimeout = 2 * time.Second

// reserveFree takes the free slots, up to maxFetch, without waiting.
func (c *consumer) reserveFree() int {
	k := 0
	for k < maxFetch {
		select {
		case c.slots <- struct{}{}:
			k++
			continue
		default:
		}
		break
	}
	return k
}

func (c *consumer) release(k int) {
	for range k {
		<-c.slots
	}
}

// fetchNoWait pulls the messages available now, up to k, and starts a
// handler for each on the slots reserved for them; it returns how many
// came.
func (c *consumer) fetchNoWait(k int) (int, error) {
	batch, err := c.cons.FetchNoWait(k)
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		c.dispatch(msg)
	}
	return got, quietFetchError(batch.Error())
}

// quietFetchError drops the errors that only say a pull ended empty.
func quietFetchError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, jetstream.ErrNoMessages) {
		return nil
	}
	return err
}

// dispatch runs the handler of one message on a slot already reserved.
func (c *consumer) dispatch(msg jetstream.Msg) {
	n := c.node
	if !n.track() {
		// Stopping: the message goes back at once.
		c.giveBack(msg)
		<-c.slots
		return
	}
	c.hold(msg)
	go func() {
		defer n.untrack()
		defer func() { <-c.slots }()
		c.handleOne(msg)
	}()
}

// handleOne runs the handler and carries out its outcome, unless the
// handler handed the message off.
func (c *consumer) handleOne(msg jetstream.Msg) {
	n := c.node
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery: nothing to redeliver or set aside.
		n.log.Error("message without JetStream metadata; dropped", "consumer", c.name, "subject", msg.Subject(), "err", err)
		c.unhold(msg)
		_ = msg.Term()
		return
	}
	d := &delivery{msg: msg, meta: meta, base: n.log, consumer: c.name, owner: c}
	if out := c.safeHandle(d); out.kind != outcomeHandedOff {
		c.finish(d, out)
	}
}

// finish carries out a handler's outcome for a message.
func (c *consumer) finish(d *delivery, out outcome) {
	n := c.node
	msg, meta := d.msg, d.meta
	ctx := n.runCtx
	if out.kind == outcomeDeadLetter {
		out = c.setAside(ctx, d, out)
	}
	// No heartbeat after this point: one sent after a delayed nak would
	// stretch the delay to a whole AckWait.
	c.unhold(msg)
	switch out.kind {
	case outcomeAck:
		_ = msg.Ack()
	case outcomeNak:
		if ctx.Err() != nil {
			return // StopAndCancel: leave it, as a crash would
		}
		if out.err != nil {
			d.logger().Warn(out.reason+" failed; will retry", "err", out.err, "delivery", meta.NumDelivered, "retry_in", out.delay.Round(time.Millisecond))
		}
		_ = msg.NakWithDelay(out.delay)
	case outcomeDeadLetter:
		_ = msg.TermWithReason(firstLine(out.reason))
	case outcomeLeave:
	}
}

// safeHandle runs the handler, turning a panic into a redelivery and, once
// the message made the handler panic maxPanics times on this node, a dead
// letter: a message that crashes its handler must not take node after node
// down with it. Panics are counted, not deliveries: a delivery that failed
// for another reason is no evidence against the message.
func (c *consumer) safeHandle(d *delivery) (out outcome) {
	seq := d.meta.Sequence.Stream
	defer func() {
		r := recover()
		if r == nil {
			c.mu.Lock()
			delete(c.panics, seq)
			c.mu.Unlock()
			return
		}
		d.logger().Error("handler panicked", "panic", r, "delivery", d.meta.NumDelivered, "stack", string(debug.Stack()))
		c.mu.Lock()
		c.panics[seq]++
		panics := c.panics[seq]
		if panics >= maxPanics {
			delete(c.panics, seq)
		}
		c.mu.Unlock()
		err := fmt.Errorf("handler panicked: %v", r)
		if panics >= maxPanics {
			out = deadLetter(fmt.Sprintf("handler panicked on %d deliveries: %v", panics, r), err)
			return
		}
		out = retryLater(d, "handle message", err)
	}()
	return c.h.handle(c.node.runCtx, d)
}

// setAside publishes a dead letter for the message. If that fails the
// message is retried later rather than lost.
func (c *consumer) setAside(ctx context.Context, d *delivery, out outcome) outcome {
	reason := out.reason
	if out.err != nil {
		reason += ": " + out.err.Error()
	}
	d.logger().Error("message set aside in the dead-letter stream", "reason", reason, "delivery", d.meta.NumDelivered)
	dl := stream.DeadLetter{
		Stream:     d.meta.Stream,
		Subject:    d.msg.Subject(),
		Sequence:   d.meta.Sequence.Stream,
		Consumer:   c.name,
		Reason:     reason,
		Node:       c.node.opts.NodeName,
		Deliveries: d.meta.NumDelivered,
		Time:       c.node.clock.Now(),
		Data:       d.msg.Data(),
		Headers:    d.msg.Headers(),
	}
	err := c.node.store.PublishDeadLetter(ctx, dl)
	if err != nil && !stream.Transient(err) && len(dl.Headers) > 0 {
		// The server refuses it as such (the original's headers, say):
		// set it aside without them rather than retrying for ever.
		d.logger().Warn("dead letter refused; setting it aside without the original's headers", "err", err)
		dl.Headers = nil
		err = c.node.store.PublishDeadLetter(ctx, dl)
	}
	if err != nil {
		return retryLater(d, "set aside in the dead-letter stream", err)
	}
	c.node.stats.deadLetters.Add(1)
	c.node.metrics.DeadLetter(c.name)
	return deadLetter(reason, nil)
}

func (c *consumer) hold(msg jetstream.Msg) {
	c.mu.Lock()
	c.held[msg] = struct{}{}
	c.mu.Unlock()
}

func (c *consumer) unhold(msg jetstream.Msg) {
	c.mu.Lock()
	delete(c.held, msg)
	c.mu.Unlock()
}

// heartbeatLoop keeps every held or handled message alive, at a third of
// the consumer's AckWait, and re-reads the consumer's settings now and
// then. It runs until close: a draining node keeps the messages it still
// handles alive.
func (c *consumer) heartbeatLoop() {
	lastInfo := c.node.clock.Now()
	for {
		if c.node.clock.Sleep(c.beatCtx, max(c.currentAckWait()/3, minHeartbeat)) != nil {
			return
		}
		c.beat()
		if c.node.clock.Now().Sub(lastInfo) >= consumerInfoRefresh {
			lastInfo = c.node.clock.Now()
			c.refreshInfo()
		}
	}
}

// beat sends the heartbeats under the lock (each is a buffered publish),
// so that none goes out for a message whose handler has let it go.
func (c *consumer) beat() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for m := range c.held {
		_ = m.InProgress()
	}
}

func (c *consumer) refreshInfo() {
	ctx, cancel := context.WithTimeout(c.beatCtx, 5*time.Second)
	defer cancel()
	info, err := c.cons.Info(ctx)
	if err != nil || info.Config.AckWait <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if info.Config.AckWait != c.ackWait {
		c.node.log.Info("consumer AckWait changed on the server; heartbeats follow", "consumer", c.name, "ack_wait", info.Config.AckWait)
		c.ackWait = info.Config.AckWait
	}
}

// currentAckWait is the consumer's AckWait as the server last reported it.
func (c *consumer) currentAckWait() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ackWait
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
