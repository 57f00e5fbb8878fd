package replay

import (
	"fmt"
	"slices"

	"github.com/jetsaga/saga/stream"
)

// CompensationOptions say how a saga's registered compensations run.
type CompensationOptions struct {
	// Parallel schedules every compensation at once, in LIFO order,
	// instead of one after the other (the default).
	Parallel bool
	// ContinueAfterFailure runs the remaining compensations after one
	// failed for good, instead of stopping there (the default: an earlier
	// step's undo may depend on a later one's).
	ContinueAfterFailure bool
}

// compensation is a registered undo on the saga's stack.
type compensation struct {
	marker *markerCommand
}

func (c *compensation) registration() *stream.CompensationRegistration {
	return c.marker.marker.Compensation
}

// compensationState is the machine's record of compensation: the stack of
// registrations, how many Compensate calls are under way, and the outcome
// of every compensation run so far, which the saga's last event reports.
type compensationState struct {
	opts    CompensationOptions
	stack   []*compensation
	active  int
	outcome *stream.CompensationOutcome
}

// SetCompensationOptions sets how compensations run, for this saga.
func (e *Env) SetCompensationOptions(o CompensationOptions) {
	e.checkAlive()
	e.m.comp.opts = o
}

// AddCompensation registers reg as the undo of a step that succeeded: it
// records a compensation marker and pushes reg on the saga's stack. A
// registration made while the saga is compensating (its code still ran
// after its run timeout) is undone too, first: it is the latest.
func (e *Env) AddCompensation(reg stream.CompensationRegistration) {
	e.checkAlive()
	c := &markerCommand{marker: &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation, Compensation: &reg}, used: true}
	e.m.issueOrAbort(c)
	e.m.comp.stack = append(e.m.comp.stack, &compensation{marker: c})
}

// PendingCompensations returns how many registered compensations have not
// run.
func (e *Env) PendingCompensations() int { return len(e.m.comp.stack) }

// DiscardCompensations empties the stack: the workflow chose not to undo
// the steps registered so far. The saga's last event names them.
func (e *Env) DiscardCompensations() {
	e.checkAlive()
	cs := &e.m.comp
	if len(cs.stack) == 0 {
		return
	}
	call := &stream.CompensationOutcome{}
	call.NotRun = cs.popAll()
	settle(call)
	cs.merge(call)
}

// popAll empties the stack and returns its steps, last registered first.
func (cs *compensationState) popAll() []string {
	var steps []string
	for i := len(cs.stack) - 1; i >= 0; i-- {
		steps = append(steps, cs.stack[i].registration().Step)
	}
	cs.stack = nil
	return steps
}

// merge adds the outcome of one Compensate (or discard) to the saga's.
func (cs *compensationState) merge(call *stream.CompensationOutcome) {
	if call.Completed == 0 && len(call.FailedSteps) == 0 && len(call.NotRun) == 0 {
		return
	}
	if cs.outcome == nil {
		cs.outcome = &stream.CompensationOutcome{}
	}
	o := cs.outcome
	o.Completed += call.Completed
	o.FailedSteps = append(o.FailedSteps, call.FailedSteps...)
	o.NotRun = append(o.NotRun, call.NotRun...)
	if o.Failure == nil {
		o.Failure = call.Failure
	}
	settle(o)
}

// settle sets an outcome's status from what it holds.
func settle(o *stream.CompensationOutcome) {
	switch {
	case len(o.FailedSteps) > 0:
		o.Status = stream.CompensationFailed
	case len(o.NotRun) > 0:
		o.Status = stream.CompensationSkipped
	default:
		o.Status = stream.CompensationCompleted
	}
}

// Compensate runs the registered compensations, last registered first,
// until the stack is empty (a registration made meanwhile runs too); it
// blocks the calling coroutine until they are done. Each runs as an
// activity in a scope no cancellation reaches. After a compensation fails
// for good the rest are not run, unless ContinueAfterFailure. It returns
// the outcome of this call; the saga's outcome adds up every call.
func (e *Env) Compensate() *stream.CompensationOutcome {
	e.checkAlive()
	m := e.m
	cs := &m.comp
	// One compensation at a time, whoever started it: a second caller
	// (another coroutine, or the run timeout's) waits, then runs what the
	// first left, if anything.
	m.await(func() bool { return cs.active == 0 }, true)
	cs.active++
	defer func() { cs.active-- }()
	call := &stream.CompensationOutcome{}
	scope := e.NewDisconnectedScope()
	run := func(c *compensation) *Future {
		cmd := &activityCommand{compensation: c, future: &Future{m: m}}
		m.issueOrAbort(cmd)
		scope.add(cmd)
		return cmd.future
	}
	record := func(c *compensation, f *Future) {
		if _, failure, _ := f.Get(scope); failure != nil {
			call.FailedSteps = append(call.FailedSteps, c.registration().Step)
			if call.Failure == nil {
				call.Failure = failure
			}
		} else {
			call.Completed++
		}
	}
	for len(cs.stack) > 0 {
		if len(call.FailedSteps) > 0 && !cs.opts.ContinueAfterFailure {
			call.NotRun = append(call.NotRun, cs.popAll()...)
			break
		}
		var batch []*compensation
		if cs.opts.Parallel {
			batch = slices.Clone(cs.stack)
			slices.Reverse(batch)
			cs.stack = nil
		} else {
			batch = []*compensation{cs.stack[len(cs.stack)-1]}
			cs.stack = cs.stack[:len(cs.stack)-1]
		}
		futures := make([]*Future, len(batch))
		for i, c := range batch {
			futures[i] = run(c)
		}
		for i, c := range batch {
			record(c, futures[i])
		}
	}
	settle(call)
	cs.merge(call)
	return call
}

// closing is how the saga ends once the workflow code returned with an
// error, or its run timeout passed: the terminal event to record.
type closing struct {
	typ     stream.EventType
	failure *stream.Failure
}

// close compensates what is registered and issues the saga's last event.
// It runs on a coroutine: the workflow's, when the code returned, or one
// of its own when the run timeout passed, which first lets a compensation
// the code started finish (see Compensate).
func (m *Machine) close(env *Env, c closing) {
	env.Compensate()
	outcome := m.comp.outcome
	var attrs any
	switch c.typ {
	case stream.WorkflowExecutionCanceled:
		a := &stream.WorkflowExecutionCanceledAttrs{Compensation: outcome}
		if m.cancel != nil {
			a.Reason = m.cancel.Reason
		}
		attrs = a
	case stream.WorkflowExecutionTimedOut:
		attrs = &stream.WorkflowExecutionTimedOutAttrs{RunTimeout: m.runTimeout, Compensation: outcome}
	default:
		attrs = &stream.WorkflowExecutionFailedAttrs{Failure: c.failure, Compensation: outcome}
	}
	m.cancelOpenTimers()
	m.finished = true
	m.issueOrAbort(&completeCommand{typ: c.typ, attributes: attrs})
}

// describeCompensation says which compensation a command or event is.
func describeCompensation(a *stream.CompensationStepScheduledAttrs) string {
	return fmt.Sprintf("%s %s (%s)", stream.CompensationStepScheduled, a.Step, a.ActivityType)
}
