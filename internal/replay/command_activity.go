package replay

import "github.com/jetsaga/saga/stream"

// activityCommand schedules an activity, or a compensation step (which
// runs as an activity). Its result, an input event that names the
// scheduled event, resolves its future.
type activityCommand struct {
	commandBase
	scheduled *stream.ActivityTaskScheduledAttrs
	// compensation is set for a compensation step, instead of scheduled.
	compensation *compensation
	future       *Future
	// neverRuns is set when the recorded event says the activity was
	// canceled as it was scheduled: it never gets a result.
	neverRuns bool
}

var _ cancellable = (*activityCommand)(nil)

func (c *activityCommand) eventType() stream.EventType {
	if c.compensation != nil {
		return stream.CompensationStepScheduled
	}
	return stream.ActivityTaskScheduled
}

func (c *activityCommand) attrs() any {
	if c.compensation != nil {
		return c.compensationAttrs()
	}
	if c.state == stateCancelRequested {
		// Canceled before it was ever proposed: recorded, never run.
		a := *c.scheduled
		a.Canceled = true
		return &a
	}
	return c.scheduled
}

func (c *activityCommand) compensationAttrs() *stream.CompensationStepScheduledAttrs {
	return &stream.CompensationStepScheduledAttrs{CompensationRegistration: *c.compensation.registration(), RegisteredEventID: c.compensation.marker.eventID}
}

func (c *activityCommand) describe() string {
	if c.compensation != nil {
		return describeCompensation(c.compensationAttrs())
	}
	return describeActivity(c.scheduled)
}

func describeActivity(a *stream.ActivityTaskScheduledAttrs) string {
	return string(stream.ActivityTaskScheduled) + " " + a.ActivityType
}

// matches compares the activity type only: options and input may change
// between versions of the code without changing the decision.
func (c *activityCommand) matches(e stream.Event) bool {
	if c.compensation != nil {
		a, ok := e.Attrs.(*stream.CompensationStepScheduledAttrs)
		reg := c.compensation.registration()
		return ok && a.Step == reg.Step && a.ActivityType == reg.ActivityType
	}
	a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs)
	return ok && a.ActivityType == c.scheduled.ActivityType
}

// commit registers the command under its event id, which its result
// names. A cancel-requested command stays so.
func (c *activityCommand) commit(m *Machine, e stream.Event) error {
	m.activities[e.ID] = c
	if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.Canceled {
		c.neverRuns = true
	}
	if c.state == statePending {
		c.state = stateCommitted
	}
	return nil
}

// resolve applies the activity's result. After a cancel request the
// future has already reported the cancellation; the result ends the
// command all the same, so that replay reaches the same state.
func (c *activityCommand) resolve(value stream.Payload, failure *stream.Failure) {
	if c.state == stateDone {
		return // a second result for the same activity changes nothing
	}
	c.state = stateDone
	c.future.resolve(value, failure)
}

func (c *activityCommand) requestCancel() {
	if c.state != statePending && c.state != stateCommitted {
		return
	}
	// The activity keeps running: no event asks the worker to stop it yet.
	c.state = stateCancelRequested
	c.future.cancel()
}
