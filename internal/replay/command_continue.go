package replay

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jetsaga/saga/stream"
)

// continueAsNewCommand ends the run because the code asked to continue as
// new (saga.ContinueAsNew). Like the completion, it has no result, and
// which input the next run gets is not compared on replay: the next
// run's start, recorded with it, holds the input.
type continueAsNewCommand struct {
	commandBase
	nextRun uint32
}

func (c *continueAsNewCommand) eventType() stream.EventType {
	return stream.WorkflowExecutionContinuedAsNew
}

func (c *continueAsNewCommand) attrs() any {
	return &stream.WorkflowExecutionContinuedAsNewAttrs{NextRun: c.nextRun}
}

func (c *continueAsNewCommand) describe() string {
	return string(stream.WorkflowExecutionContinuedAsNew)
}

func (c *continueAsNewCommand) matches(stream.Event) bool { return true }

func (c *continueAsNewCommand) commit(*Machine, stream.Event) error {
	c.state = stateDone
	return nil
}

// ContinueAsNew records that the workflow function, which returns right
// after (its results are then ignored), asks to end this run and start a
// new one with input, under the same saga id. The machine carries it out
// as the function returns (see continueAsNew).
func (e *Env) ContinueAsNew(input stream.Payload) {
	e.checkAlive()
	e.m.continueWith = &input
}

// continueAsNew ends the run as the code asked, or returns the failure
// the run ends with instead. A run continues as new only with nothing
// left open that the new run could not finish: an activity without its
// result (its result would reach a run that never scheduled it), or a
// compensation registered and neither run nor discarded (the new run
// could not undo it). Such a request fails the saga, with the reason, as
// deterministically as any return of the code. A saga whose cancellation
// was requested ends canceled instead: its cancellation is not carried
// past the code's decision. Open timers are canceled, as at completion.
func (m *Machine) continueAsNew() *stream.Failure {
	var open []string
	if n := m.openActivities(); n > 0 {
		open = append(open, fmt.Sprintf("%d activities have no result yet (wait for them)", n))
	}
	if n := len(m.comp.stack); n > 0 {
		open = append(open, fmt.Sprintf("%d compensations are registered (run them with Compensate, or discard them)", n))
	}
	switch {
	case len(open) > 0:
		return &stream.Failure{Kind: "Validation", NonRetryable: true,
			Message: "continue as new refused: " + strings.Join(open, "; ")}
	case m.cancel != nil:
		return &stream.Failure{Kind: "Cancelled", NonRetryable: true,
			Message: "continue as new: the saga's cancellation was requested"}
	}
	m.cancelOpenTimers()
	m.finished = true
	m.continued = &continueAsNewCommand{nextRun: m.runNumber + 1}
	m.issueOrAbort(m.continued)
	return nil
}

// openActivities counts the activities (compensation steps included) the
// code issued that have no result and will have one: not those canceled
// before they were ever proposed, which are recorded as never run. It
// counts the same live and on replay.
func (m *Machine) openActivities() int {
	n := 0
	for k, c := range m.issued {
		a, ok := c.(*activityCommand)
		if !ok || a.state == stateDone {
			continue
		}
		if a.state == stateCancelRequested && (k >= len(m.recorded) || a.neverRuns) {
			continue
		}
		n++
	}
	return n
}

// NextRun is what the run a machine ends with continue-as-new hands to
// the next: its input, the signals the code had not taken, and a
// cancellation that came after the code decided.
type NextRun struct {
	Input           stream.Payload
	Signals         []stream.CarriedSignal
	CancelRequested *stream.WorkflowExecutionCancelRequestedAttrs
}

// NextRun returns what the next run starts with, when the code ended
// this run with continue-as-new and that decision is being proposed; nil
// otherwise. Call it once the
// decision is proposed: the inputs fed after the code decided (a signal
// in the same batch) are passed on too.
func (m *Machine) NextRun() *NextRun {
	if m.abandoned != nil || m.continued == nil || m.continued.state != statePending || m.continueWith == nil {
		return nil // not continuing, or the history records it already
	}
	next := &NextRun{Input: *m.continueWith}
	for name, q := range m.signals {
		for _, s := range q {
			next.Signals = append(next.Signals, stream.CarriedSignal{Name: name, Input: s.value, EventID: s.eventID})
		}
	}
	slices.SortFunc(next.Signals, func(a, b stream.CarriedSignal) int {
		switch {
		case a.EventID < b.EventID:
			return -1
		case a.EventID > b.EventID:
			return 1
		}
		return 0
	})
	if m.cancel != nil && m.cancel.Cause == stream.CancelByRequest {
		// A run timeout is the run's own: the next run has its own.
		next.CancelRequested = m.cancel
	}
	return next
}
