package replay

import (
	"fmt"
	"time"

	"github.com/jetsaga/saga/stream"
)

// timerCommand starts a durable timer. TimerFired, an input that names
// the TimerCreated event, resolves its future. Canceling it before it
// fires issues a timerCancelCommand, which records TimerCanceled.
type timerCommand struct {
	commandBase
	created *stream.TimerCreatedAttrs
	future  *Future
}

var _ cancellable = (*timerCommand)(nil)

func (c *timerCommand) eventType() stream.EventType { return stream.TimerCreated }

func (c *timerCommand) attrs() any { return c.created }

func (c *timerCommand) describe() string { return describeTimer(c.created) }

func describeTimer(a *stream.TimerCreatedAttrs) string {
	return fmt.Sprintf("%s %s", stream.TimerCreated, a.Duration)
}

// matches compares the kind of decision only: a timer's duration may
// change between versions of the code, as an activity's input may.
func (c *timerCommand) matches(e stream.Event) bool {
	_, ok := e.Attrs.(*stream.TimerCreatedAttrs)
	return ok
}

func (c *timerCommand) commit(m *Machine, e stream.Event) error {
	m.timers[e.ID] = c
	if c.state == statePending {
		c.state = stateCommitted
	}
	return nil
}

// fire applies TimerFired. A timer canceled meanwhile stays canceled.
func (c *timerCommand) fire() {
	switch c.state {
	case stateDone, stateCanceled:
		return
	case stateCancelRequested:
		c.state = stateDone // fired before the cancellation was recorded
		return
	}
	c.state = stateDone
	c.future.resolve(nil, nil)
}

// requestCancel stops the wait at once and issues the command that
// records TimerCanceled, so that the durable timer is deleted.
func (c *timerCommand) requestCancel() {
	if c.state != statePending && c.state != stateCommitted {
		return
	}
	c.state = stateCancelRequested
	c.future.cancel()
	c.future.m.issueFrom(&timerCancelCommand{timer: c})
}

// timerCancelCommand records that the code stopped waiting for a timer.
type timerCancelCommand struct {
	commandBase
	timer *timerCommand
}

func (c *timerCancelCommand) eventType() stream.EventType { return stream.TimerCanceled }

// attrs names the timer's event, known once the timer is committed or
// proposed (it always comes before its cancellation).
func (c *timerCancelCommand) attrs() any {
	return &stream.TimerCanceledAttrs{StartedEventID: c.timer.eventID}
}

func (c *timerCancelCommand) describe() string {
	return fmt.Sprintf("%s of the timer at event %d", stream.TimerCanceled, c.timer.eventID)
}

func (c *timerCancelCommand) matches(e stream.Event) bool {
	a, ok := e.Attrs.(*stream.TimerCanceledAttrs)
	return ok && a.StartedEventID == c.timer.eventID
}

func (c *timerCancelCommand) commit(*Machine, stream.Event) error {
	if c.timer.state == stateCancelRequested {
		c.timer.state = stateCanceled
	}
	c.state = stateDone
	return nil
}

// MaxTimer bounds a timer's duration: a longer one waits this long.
const MaxTimer = 100 * 365 * 24 * time.Hour

// NewTimer issues, in scope s, a timer of d (rounded up to whole seconds,
// the unit of durable timers) and returns the future that is ready when
// it fires. A d of zero or less is ready at once and issues nothing; in a
// canceled scope the future is canceled and nothing is issued.
func (e *Env) NewTimer(s *Scope, d time.Duration) *Future {
	e.checkAlive()
	f := &Future{m: e.m}
	switch {
	case s.Canceled():
		f.cancel()
		return f
	case d <= 0:
		f.resolve(nil, nil)
		return f
	}
	d = min(d, MaxTimer) // rounding a larger one would overflow
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	c := &timerCommand{created: &stream.TimerCreatedAttrs{Duration: d}, future: f}
	e.m.issueOrAbort(c)
	s.add(c)
	e.m.allTimers = appendPruned(e.m.allTimers, c, func(t *timerCommand) bool {
		return t.state == stateDone || t.state == stateCanceled
	})
	return f
}

// issueFrom issues a command from a coroutine, or from the driver (a
// cancellation applied as an input cancels scopes): a mismatch then
// fails the machine instead of unwinding a coroutine.
func (m *Machine) issueFrom(c command) {
	if m.current != nil {
		m.issueOrAbort(c)
		return
	}
	if err := m.issue(c); err != nil && m.err == nil {
		m.err = err
	}
}
