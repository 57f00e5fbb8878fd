package replay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"
)

// errAbort unwinds a coroutine whose machine is closing or has failed. It
// is recovered at the coroutine's root and never reaches user code's
// callers.
var errAbort = errors.New("replay: coroutine aborted")

// coroutine is one goroutine of workflow code. Only one coroutine of a
// machine runs at a time; the machine's driver waits while it runs, and
// the channels order every access to machine state.
type coroutine struct {
	resume chan struct{}
	yield  chan struct{}
	exited chan struct{}
	// waitFor is the engine's own condition the coroutine is blocked on (a
	// future being ready), which the driver may evaluate; nil when the
	// coroutine is runnable or waits on a condition of workflow code.
	waitFor func() bool
	// stalled is set when the coroutine, resumed to re-check a condition
	// of workflow code, found it still false: it made no progress.
	stalled bool
	done    bool
}

// spawn creates a coroutine that starts on the next run.
func (m *Machine) spawn(fn func(env *Env)) {
	co := &coroutine{resume: make(chan struct{}), yield: make(chan struct{}), exited: make(chan struct{})}
	m.coroutines = append(m.coroutines, co)
	go func() {
		defer close(co.exited)
		defer func() {
			r := recover()
			if r != nil && r != errAbort {
				m.err = &PanicError{Value: r, Stack: string(debug.Stack())}
			}
			co.done = true
			select {
			case co.yield <- struct{}{}:
			case <-m.stop:
			}
		}()
		select {
		case <-co.resume:
		case <-m.stop:
			return
		}
		fn(m.env)
	}()
}

// run resumes runnable coroutines, in creation order, until none can make
// progress. The order is fixed, so the same inputs give the same commands.
//
// The run has a budget of DeadlockTimeout of wall time. Coroutines that
// keep making progress past it, by waking each other (a livelock), fail
// the machine; so does the end of ctx. Both are checked between two
// resumes, where the driver holds all of the machine's state and the
// coroutines are parked, so Close can still end them. A single resume
// that does not yield is bounded by resume itself.
func (m *Machine) run(ctx context.Context) error {
	if m.finished {
		return nil
	}
	deadline := time.Now().Add(m.cfg.DeadlockTimeout)
	for progressed := true; progressed; {
		progressed = false
		for i := 0; i < len(m.coroutines); i++ { // coroutines may spawn more
			co := m.coroutines[i]
			if co.done || (co.waitFor != nil && !co.waitFor()) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("%w: %w", ErrInterrupted, err)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: the decision did not settle within %s: its coroutines kept waking each other (livelock)", ErrDeadlock, m.cfg.DeadlockTimeout)
			}
			co.waitFor = nil
			if err := m.resume(co); err != nil {
				return err
			}
			if m.err != nil {
				return m.err
			}
			if !co.stalled {
				progressed = true
			}
			if m.finished {
				return nil // the workflow returned; its other coroutines are moot
			}
		}
	}
	return nil
}

// resume hands control to co and waits until it blocks or ends. When co
// overruns DeadlockTimeout the machine is abandoned: co may still wake up
// and touch machine state, with nothing to order it against the driver, so
// from then on the driver leaves all of it to co (see Machine.abandoned).
func (m *Machine) resume(co *coroutine) error {
	m.current = co
	if m.overrun == nil {
		m.overrun = time.NewTimer(m.cfg.DeadlockTimeout)
	} else {
		m.overrun.Reset(m.cfg.DeadlockTimeout)
	}
	defer m.overrun.Stop()
	select {
	case co.resume <- struct{}{}:
	case <-m.stop:
		m.current = nil
		return ErrClosed
	}
	select {
	case <-co.yield:
		m.current = nil
		return nil
	case <-m.overrun.C:
		m.abandoned = fmt.Errorf("%w after %s", ErrDeadlock, m.cfg.DeadlockTimeout)
		return m.abandoned
	case <-m.stop:
		return ErrClosed
	}
}

// await blocks the calling coroutine until cond holds. An engine
// condition (internal) is evaluated by the driver; a condition of workflow
// code is only ever evaluated on the coroutine itself, so that a panic in
// it or a condition that blocks is caught like any bug in workflow code,
// and the driver resumes the coroutine to re-check it.
func (m *Machine) await(cond func() bool, internal bool) {
	if m.inQuery {
		panic(errQueryChangesState) // a query handler may not wait
	}
	co := m.current
	if co == nil {
		panic("saga: a blocking workflow call was made outside workflow code (from a native goroutine?)")
	}
	ranCode := true // the coroutine got here by running workflow code
	for !cond() {
		if internal {
			co.waitFor = cond
		} else {
			co.stalled = !ranCode
		}
		select {
		case co.yield <- struct{}{}:
		case <-m.stop:
			panic(errAbort)
		}
		select {
		case <-co.resume:
		case <-m.stop:
			panic(errAbort)
		}
		m.current = co
		ranCode = false
	}
	co.stalled = false
}

// replayAwareHandler drops log records while the machine replays history
// it has already acted on, so that workflow code logs each line once, and
// while its coroutines unwind because the machine is closed: a node drops
// the machine of a saga that is merely parked or evicted, and the deferred
// calls of the code, which run then, must not log as if the workflow ended.
type replayAwareHandler struct {
	inner slog.Handler
	m     *Machine
}

func (h replayAwareHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.m.replaying() && !h.m.closed() && h.inner.Enabled(ctx, l)
}

func (h replayAwareHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.inner.Handle(ctx, r)
}

func (h replayAwareHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return replayAwareHandler{inner: h.inner.WithAttrs(attrs), m: h.m}
}

func (h replayAwareHandler) WithGroup(name string) slog.Handler {
	return replayAwareHandler{inner: h.inner.WithGroup(name), m: h.m}
}
