package replay

import (
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"time"

	"github.com/jetsaga/saga/stream"
)

// Signals are inputs: SignalReceived buffers the value under its name, in
// history order, until the code takes it.

// queuedSignal is a signal received and not yet taken, with the event
// that recorded it: signals a run passes on keep the order they were
// recorded in.
type queuedSignal struct {
	value   stream.Payload
	eventID uint64
}

// SignalPending reports whether a signal of that name waits to be taken.
func (e *Env) SignalPending(name string) bool { return len(e.m.signals[name]) > 0 }

// TakeSignal takes the oldest waiting signal of that name.
func (e *Env) TakeSignal(name string) (stream.Payload, bool) {
	e.checkAlive()
	q := e.m.signals[name]
	if len(q) == 0 {
		return nil, false
	}
	v := q[0].value
	q[0] = queuedSignal{}
	e.m.signals[name] = q[1:]
	return v, true
}

// ReceiveSignal blocks the calling coroutine until a signal of that name
// waits, and takes it; canceled when scope s is canceled first.
func (e *Env) ReceiveSignal(s *Scope, name string) (value stream.Payload, canceled bool) {
	e.checkAlive()
	e.m.await(func() bool { return e.SignalPending(name) || s.Canceled() }, true)
	if v, ok := e.TakeSignal(name); ok {
		return v, false
	}
	return nil, true
}

// QueryFunc answers a query from the workflow's state: encoded input in,
// encoded result out.
type QueryFunc func(input stream.Payload) (stream.Payload, error)

// SetQueryHandler registers the handler of a named query; a second
// registration of the name replaces the first.
func (e *Env) SetQueryHandler(name string, fn QueryFunc) {
	e.checkAlive()
	e.m.queries[name] = fn
}

// Query errors.
var (
	// ErrUnknownQuery: the workflow registered no handler of that name
	// (yet: handlers are registered by the code as it runs).
	ErrUnknownQuery = errors.New("replay: unknown query")
	// ErrQueryChangesState: a query handler tried to make a decision.
	ErrQueryChangesState = errors.New("replay: a query handler must not change the saga")
)

// Query runs the named handler on the workflow's current state. It must
// be called by the machine's driver, between inputs; it changes nothing.
// A handler that does not return within DeadlockTimeout makes Query fail
// with ErrDeadlock and leaves the machine unusable: the driver must drop
// it (the handler may still be reading its state).
func (m *Machine) Query(name string, input stream.Payload) (stream.Payload, error) {
	if err := m.Err(); err != nil {
		return nil, err
	}
	fn, ok := m.queries[name]
	if !ok {
		return nil, fmt.Errorf("%w %q (the workflow answers: %v)", ErrUnknownQuery, name, m.QueryNames())
	}
	type answer struct {
		out stream.Payload
		err error
	}
	done := make(chan answer, 1)
	returned := make(chan struct{})
	m.inQuery = true
	go func() {
		var a answer
		defer close(returned)
		defer func() {
			if p := recover(); p != nil {
				if p == errQueryChangesState {
					a.err = ErrQueryChangesState
				} else {
					a.err = &PanicError{Value: p, Stack: string(debug.Stack())}
				}
			}
			done <- a
		}()
		a.out, a.err = fn(input)
	}()
	timer := time.NewTimer(m.cfg.DeadlockTimeout)
	defer timer.Stop()
	select {
	case a := <-done:
		m.inQuery = false
		return a.out, a.err
	case <-timer.C:
		m.abandoned = fmt.Errorf("%w: query %s did not return within %s", ErrDeadlock, name, m.cfg.DeadlockTimeout)
		m.queryRunning = returned
		return nil, m.abandoned
	}
}

// errQueryChangesState unwinds a query handler that called into the engine.
var errQueryChangesState = errors.New("query changes state")

// QueryNames lists the queries the workflow answers, sorted.
func (m *Machine) QueryNames() []string {
	names := make([]string, 0, len(m.queries))
	for n := range m.queries {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
