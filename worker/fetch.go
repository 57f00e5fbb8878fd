package worker

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
)

// fetchLoop pulls messages from one durable consumer and runs a handler
// goroutine per message. It fetches only as many messages as it has free
// handler slots, so that no message waits in the node while its ack
// deadline runs: a message a node holds is a message it is working on, and
// its heartbeat (InProgress) keeps it.
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
		// Wait for a message holding a single slot, so that an idle loop
		// does not keep slots from the loops it shares them with...
		if !l.reserveOne() {
			return
		}
		got, err := l.fetch(1, true)
		if got == 0 {
			l.release(1)
		}
		// ...then take the backlog with every slot that is free.
		for err == nil && got > 0 {
			k := l.reserveFree()
			if k == 0 {
				break
			}
			got, err = l.fetch(k, false)
			l.release(k - got)
			if got < k {
				break
			}
		}
		if err == nil || l.ctx.Err() != nil {
			failures = 0
			continue
		}
		// NATS unreachable or the consumer gone: keep trying, gently.
		failures++
		delay := min(100*time.Millisecond<<min(failures, 7), 10*time.Second)
		if failures == 1 || failures%20 == 0 {
			l.node.log.Warn("fetching messages failed; retrying", "consumer", l.name, "err", err, "retry_in", delay)
		}
		select {
		case <-l.ctx.Done():
		case <-time.After(delay):
		}
	}
}

// reserveOne waits for a free slot; false when the loop stops.
func (l *fetchLoop) reserveOne() bool {
	select {
	case l.slots <- struct{}{}:
		return true
	case <-l.ctx.Done():
		return false
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

// fetch pulls up to k messages, waiting for them up to fetchWait when wait
// is set, and starts a handler for each as it arrives; it returns how many
// arrived.
func (l *fetchLoop) fetch(k int, wait bool) (int, error) {
	var batch jetstream.MessageBatch
	var err error
	if wait {
		ctx, cancel := context.WithTimeout(l.ctx, fetchWait)
		defer cancel()
		batch, err = l.cons.Fetch(k, jetstream.FetchContext(ctx))
	} else {
		batch, err = l.cons.FetchNoWait(k)
	}
	if err != nil {
		return 0, err
	}
	got := 0
	for msg := range batch.Messages() {
		got++
		l.dispatch(msg)
	}
	err = batch.Error()
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, jetstream.ErrNoMessages) {
		err = nil
	}
	return got, err
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
