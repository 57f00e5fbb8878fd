package worker

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
)

// fetchLoop pulls messages from one durable consumer and runs a handler
// goroutine per message. It pulls only what it can start on: it waits for
// the next message without holding a handler slot (so idle loops sharing a
// pool of slots do not starve a busy one), keeps that one message alive
// while it waits for a slot, and then takes the backlog with the slots
// that are free. A message a node holds is a message it is working on, or
// the one it is about to start, and its heartbeat (InProgress) keeps it.
type fetchLoop struct {
	node   *Node
	name   string
	cons   jetstream.Consumer
	slots  chan struct{} // a token per running handler; may be shared by loops
	handle func(context.Context, jetstream.Msg)

	ctx    context.Context // canceled to stop fetching
	cancel context.CancelFunc
	done   chan struct{}
}

// maxFetch bounds one pull request.
const maxFetch = 256

// fetchWait is how long one pull request waits for messages.
const fetchWait = 5 * time.Second

// addLoop starts a fetch loop on cons, running handle in at most
// cap(slots) goroutines at a time (together with the other loops sharing
// slots).
func (n *Node) addLoop(cons jetstream.Consumer, err error, name string, slots chan struct{}, handle func(context.Context, jetstream.Msg)) error {
	if err != nil {
		return &saga.Error{Kind: saga.KindTaskQueue, Message: "create consumer for " + name, Cause: err}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &fetchLoop{node: n, name: name, cons: cons, slots: slots, handle: handle, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	n.loops = append(n.loops, l)
	go l.run()
	return nil
}

func (l *fetchLoop) run() {
	defer close(l.done)
	failures := 0
	for l.ctx.Err() == nil {
		msg, err := l.next()
		if msg != nil {
			if !l.reserveFor(msg) {
				return // stopping: the message is redelivered
			}
			l.dispatch(msg)
			// Take the backlog with every slot that is free.
			for err == nil {
				k := l.reserveFree()
				if k == 0 {
					break
				}
				var got int
				got, err = l.fetchNoWait(k)
				l.release(k - got)
				if got < k {
					break
				}
			}
		}
		if err == nil || l.ctx.Err() != nil {
			failures = 0
			continue
		}
		// NATS unreachable, the consumer gone, or its stream without a
		// leader: keep trying, gently, but at least every 2 s, so that work
		// resumes soon after an election (one failed request per consumer
		// every 2 s costs nothing).
		failures++
		delay := min(100*time.Millisecond<<min(failures, 7), 2*time.Second)
		if failures == 1 || failures%20 == 0 {
			l.node.log.Warn("fetching messages failed; retrying", "consumer", l.name, "err", err, "retry_in", delay)
		}
		select {
		case <-l.ctx.Done():
		case <-time.After(delay):
		}
	}
}

// next waits up to fetchWait for one message; nil if none came.
func (l *fetchLoop) next() (jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(l.ctx, fetchWait)
	defer cancel()
	batch, err := l.cons.Fetch(1, jetstream.FetchContext(ctx))
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
// busy; false when the loop stops first.
func (l *fetchLoop) reserveFor(msg jetstream.Msg) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	beat := time.NewTicker(l.node.opts.AckWait / 3)
	defer beat.Stop()
	for {
		select {
		case l.slots <- struct{}{}:
			return true
		case <-beat.C:
			_ = msg.InProgress()
		case <-l.ctx.Done():
			return false
		}
	}
}

// reserveFree takes the free slots, up to maxFetch, without waiting.
func (l *fetchLoop) reserveFree() int {
	k := 0
	for k < maxFetch {
		select {
		case l.slots <- struct{}{}:
			k++
			continue
		default:
		}
		break
	}
	return k
}

func (l *fetchLoop) release(k int) {
	for range k {
		<-l.slots
	}
}

// fetchNoWait pulls the messages available now, up to k, and starts a
// handler for each on the slots reserved for them; it returns how many
// came.
func (l *fetchLoop) fetchNoWait(k int) (int, error) {
	batch, err := l.cons.FetchNoWait(k)
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		l.dispatch(msg)
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
func (l *fetchLoop) dispatch(msg jetstream.Msg) {
	n := l.node
	if !n.track() {
		<-l.slots // stopping: JetStream redelivers the message
		return
	}
	go func() {
		defer n.untrack()
		defer func() { <-l.slots }()
		l.handle(n.runCtx, msg)
	}()
}

// stop ends fetching and waits for the loop; handlers already started go
// on (the node waits for them).
func (l *fetchLoop) stop() {
	l.cancel()
	<-l.done
}
