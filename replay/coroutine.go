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
	// waitFor is the condition the coroutine is blocked on; nil when it
	// has not started or is runnable.
	waitFor func() bool
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
func (m *Machine) run() error {
	if m.finished {
		return nil
	}
	for progressed := true; progressed; {
		progressed = false
		for i := 0; i < len(m.coroutines); i++ { // coroutines may spawn more
			co := m.coroutines[i]
			if co.done || (co.waitFor != nil && !co.waitFor()) {
				continue
			}
			co.waitFor = nil
			if err := m.resume(co); err != nil {
				return err
			}
			if m.err != nil {
				return m.err
			}
			progressed = true
			if m.finished {
				return nil // the workflow returned; its other coroutines are moot
			}
		}
	}
	return nil
}

// resume hands control to co and waits until it blocks or ends.
func (m *Machine) resume(co *coroutine) error {
	m.current = co
	defer func() { m.current = nil }()
	timer := time.NewTimer(m.cfg.DeadlockTimeout)
	defer timer.Stop()
	select {
	case co.resume <- struct{}{}:
	case <-m.stop:
		return ErrClosed
	}
	select {
	case <-co.yield:
		return nil
	case <-timer.C:
		return fmt.Errorf("%w after %s", ErrDeadlock, m.cfg.DeadlockTimeout)
	case <-m.stop:
		return ErrClosed
	}
}

// await blocks the calling coroutine until cond holds.
func (m *Machine) await(cond func() bool) {
	co := m.current
	if co == nil {
		panic("saga: a blocking workflow call was made outside workflow code (from a native goroutine?)")
	}
	for !cond() {
		co.waitFor = cond
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
	}
}

// replayAwareHandler drops log records while the machine replays history
// it has already acted on, so that workflow code logs each line once.
type replayAwareHandler struct {
	inner slog.Handler
	m     *Machine
}

func (h replayAwareHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return !h.m.replaying() && h.inner.Enabled(ctx, l)
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
