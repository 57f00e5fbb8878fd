package replay

import (
	"fmt"

	"github.com/jetsaga/saga/stream"
)

// markerCommand records a value the code used: a side effect's result or
// the version of a change. It has no result: commit ends it.
type markerCommand struct {
	commandBase
	marker *stream.MarkerRecordedAttrs
	// used is set when the code already acted on marker's value (it ran
	// the side effect live, or chose a version). Otherwise commit adopts
	// the recorded value.
	used bool
}

func newSideEffectCommand() *markerCommand {
	return &markerCommand{marker: &stream.MarkerRecordedAttrs{Name: stream.MarkerSideEffect}}
}

func newVersionCommand(changeID string, data stream.Payload) *markerCommand {
	return &markerCommand{marker: &stream.MarkerRecordedAttrs{Name: stream.MarkerVersion, ChangeID: changeID, Data: data}, used: true}
}

func (c *markerCommand) eventType() stream.EventType { return stream.MarkerRecorded }

func (c *markerCommand) attrs() any { return c.marker }

func (c *markerCommand) describe() string { return describeMarker(c.marker) }

func describeMarker(a *stream.MarkerRecordedAttrs) string {
	if c := a.Compensation; c != nil {
		return fmt.Sprintf("%s %s of step %s (%s)", stream.MarkerRecorded, a.Name, c.Step, c.ActivityType)
	}
	if a.ChangeID != "" {
		return fmt.Sprintf("%s %s %s", stream.MarkerRecorded, a.Name, a.ChangeID)
	}
	return string(stream.MarkerRecorded) + " " + a.Name
}

func (c *markerCommand) matches(e stream.Event) bool {
	a, ok := e.Attrs.(*stream.MarkerRecordedAttrs)
	if !ok || a.Name != c.marker.Name || a.ChangeID != c.marker.ChangeID || (a.Compensation == nil) != (c.marker.Compensation == nil) {
		return false
	}
	// A compensation is the same decision when it undoes the same step
	// with the same activity; its input may change between versions.
	return a.Compensation == nil || a.Compensation.Step == c.marker.Compensation.Step && a.Compensation.ActivityType == c.marker.Compensation.ActivityType
}

// commit checks a value the code already used against the recorded one:
// if another writer recorded a different value, the code has acted on
// the wrong one and the machine must be rebuilt.
func (c *markerCommand) commit(_ *Machine, e stream.Event) error {
	rec := e.Attrs.(*stream.MarkerRecordedAttrs)
	if rec.Compensation != nil {
		// The registration recorded is the one compensation runs: replay
		// rebuilds the stack from history.
		c.marker = rec
		c.state = stateDone
		return nil
	}
	if c.used && (string(c.marker.Data) != string(rec.Data) || (c.marker.Failure == nil) != (rec.Failure == nil)) {
		return ErrStale
	}
	c.marker = rec
	c.state = stateDone
	return nil
}
