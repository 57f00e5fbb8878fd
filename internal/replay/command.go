package replay

import (
	"fmt"

	"github.com/jetsaga/saga/stream"
)

// commandState is where a command is in its lifecycle:
//
//	pending ──commit──▶ committed ──result──▶ done
//	   │                    │
//	   └──────cancel────────┴──▶ cancelRequested ──result──▶ done
//	                                    └──cancellation recorded──▶ canceled
//
// Markers and the workflow's completion have no result: commit takes them
// straight to done.
type commandState uint8

const (
	// statePending: issued by the code, not in the history yet.
	statePending commandState = iota
	// stateCommitted: paired with its history event, waiting for its
	// result.
	stateCommitted
	// stateCancelRequested: the code canceled it after issuing it. No
	// history event records a cancellation yet, so the command is still
	// proposed and committed like any other (replay must meet it where the
	// code issued it), and its future reports the cancellation to its
	// waiters at once.
	stateCancelRequested
	// stateCanceled: the history records that the cancellation took
	// effect. Reached once commands can emit cancellation events (timers).
	stateCanceled
	// stateDone: its result arrived, or it needs none.
	stateDone
)

func (s commandState) String() string {
	switch s {
	case statePending:
		return "pending"
	case stateCommitted:
		return "committed"
	case stateCancelRequested:
		return "cancelRequested"
	case stateCanceled:
		return "canceled"
	case stateDone:
		return "done"
	}
	return fmt.Sprintf("commandState(%d)", uint8(s))
}

// command is one decision of the workflow code. Each kind (one file each)
// knows the event that records it, how to describe it, how to recognise
// its recorded event, and what commit does to it.
//
// Matching is positional: the k-th command the code issues pairs with the
// k-th command event of the history, whichever of the two comes first.
type command interface {
	lifecycle() *commandBase
	eventType() stream.EventType
	// attrs are the attributes of the event proposed for the command.
	attrs() any
	// describe says what the code asked for, in non-determinism messages.
	describe() string
	// matches reports whether e, an event of the command's type, records
	// the same decision.
	matches(e stream.Event) bool
	// commit pairs the command with its recorded event (already known to
	// match). An error means the code has already acted on a value the
	// history contradicts.
	commit(m *Machine, e stream.Event) error
}

// commandBase is the lifecycle state every kind embeds, and the id of the
// event that records the command: known once it is committed, or proposed.
type commandBase struct {
	state   commandState
	eventID uint64
}

func (b *commandBase) lifecycle() *commandBase { return b }

// cancellable is a command that a scope's cancellation reaches.
type cancellable interface {
	command
	// requestCancel moves a pending or committed command to
	// cancelRequested; later states are left alone.
	requestCancel()
}

// issue records a command from the code. If the history already holds
// the command at this position, the two are committed at once.
func (m *Machine) issue(c command) error {
	if m.inQuery {
		panic(errQueryChangesState) // a query handler may only read
	}
	k := len(m.issued)
	m.issued = append(m.issued, c)
	if k >= len(m.recorded) {
		return nil // the next decision: proposed, committed when fed back
	}
	return m.commit(c, m.recorded[k])
}

// issueOrAbort issues a command from a coroutine; a mismatch stops the
// coroutine and surfaces from run.
func (m *Machine) issueOrAbort(c command) {
	if err := m.issue(c); err != nil {
		m.err = err
		panic(errAbort)
	}
}

// commit pairs a command with the history event at its position after
// checking that they are the same decision.
func (m *Machine) commit(c command, e stream.Event) error {
	if e.Type != c.eventType() || !c.matches(e) {
		return nonDeterminism(e, c.describe())
	}
	c.lifecycle().eventID = e.ID
	return c.commit(m, e)
}

// recordedAt returns the k-th command event of the history, if known.
func (m *Machine) recordedAt(k int) (stream.Event, bool) {
	if k < len(m.recorded) {
		return m.recorded[k], true
	}
	return stream.Event{}, false
}

// nonDeterminism is the error for a recorded event e where the code asked
// for code. A version marker there is a change the code does not make at
// this point (had it asked for that change, the two would match).
func nonDeterminism(e stream.Event, code string) *NonDeterminismError {
	err := &NonDeterminismError{EventID: e.ID, History: describeEvent(e), Code: code}
	if a, ok := e.Attrs.(*stream.MarkerRecordedAttrs); ok && a.Name == stream.MarkerVersion {
		err.UnknownChangeID = a.ChangeID
	}
	return err
}

// describeEvent describes a recorded command event the way its command
// kind describes itself.
func describeEvent(e stream.Event) string {
	switch a := e.Attrs.(type) {
	case *stream.ActivityTaskScheduledAttrs:
		return describeActivity(a)
	case *stream.MarkerRecordedAttrs:
		return describeMarker(a)
	case *stream.CompensationStepScheduledAttrs:
		return describeCompensation(a)
	case *stream.TimerCreatedAttrs:
		return describeTimer(a)
	}
	return string(e.Type)
}
