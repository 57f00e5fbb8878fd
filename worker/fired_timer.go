package worker

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
)

// firedTimers handles the expiry markers of the engine's durable timers
// (package kv), on a durable consumer all nodes share. A timer fires at most
// as often as its marker is delivered, and what it does is checked against
// the history first, so a timer whose command closed meanwhile does
// nothing.
type firedTimers struct{ n *Node }

func (h firedTimers) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	t, ok := kv.Fired(d.msg, n.timersCfg)
	if !ok {
		return ack() // an entry being created or deleted, not a timer firing
	}
	if wait := t.Due.Sub(n.clock.Now()); wait > 0 {
		// The server fired by its clock; never act before the due time by
		// this node's.
		return nakAfter(wait, "", nil)
	}
	d.with(slog.String("saga_id", t.SagaID), slog.String("timer", t.Kind), slog.Uint64("event_id", t.EventID))
	switch t.Kind {
	case timerRetry:
		return n.retryFired(ctx, d, t)
	case timerScheduleToStart:
		return n.scheduleToStartFired(ctx, d, t)
	}
	return nakAfter(unsupportedDelay(d), "fire timer (leaving it to a node that knows its kind)", fmt.Errorf("timer kind %q", t.Kind))
}

// retryFired queues the task of the attempt a retry timer waited for.
func (n *Node) retryFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	a, open, err := n.lookupActivity(ctx, t.SagaID, t.EventID)
	if err != nil {
		return n.handlingFailed(ctx, d, "look up activity to retry", err)
	}
	if !open {
		return ack()
	}
	queued, err := n.queueActivity(ctx, a.Task(t.SagaID, t.EventID, t.Attempt))
	if err != nil {
		return n.handlingFailed(ctx, d, "queue retry", err)
	}
	if queued {
		return ack()
	}
	// A task is there. If it is the one that runs this attempt (it started,
	// or will: it is not a leftover for an earlier one), the timer is done;
	// otherwise it fires again once that task has gone its way.
	rec, _, found, err := n.attempts.get(ctx, t.SagaID, t.EventID)
	if err != nil {
		return retryLater(d, "read attempts", err)
	}
	if found && rec.Started >= t.Attempt {
		return ack()
	}
	_, queued, leftover, err := n.queuedLeftover(ctx, a.Task(t.SagaID, t.EventID, t.Attempt), rec, found)
	if err != nil {
		return retryLater(d, "read the queued task", err)
	}
	if queued && !leftover {
		return ack() // what is queued runs this attempt
	}
	return nakAfter(redeliveryPolicy.Delay(int(d.meta.NumDelivered)), "", nil)
}

// scheduleToStartFired times out an activity whose first attempt has not
// started. It claims the activity's attempt record first, so that no
// attempt starts once the timeout is decided, and none is timed out once
// it started.
func (n *Node) scheduleToStartFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	a, open, err := n.lookupActivity(ctx, t.SagaID, t.EventID)
	if err != nil {
		return n.handlingFailed(ctx, d, "look up activity", err)
	}
	if !open {
		return ack()
	}
	rec, rev, found, err := n.attempts.get(ctx, t.SagaID, t.EventID)
	if err != nil {
		return retryLater(d, "read attempts", err)
	}
	if found && !rec.TimedOut && rec.Started > 0 {
		return ack() // started in time
	}
	if !found || !rec.TimedOut {
		claim := attemptRecord{Started: rec.Started, TaskSeq: rec.TaskSeq, Node: n.opts.NodeName, At: n.clock.Now(), TimedOut: true}
		if err := n.attempts.put(ctx, t.SagaID, t.EventID, claim, rev, found); err != nil {
			return nakAfter(redeliveryPolicy.Delay(1), "claim activity for its schedule-to-start timeout", err)
		}
	}
	task := a.Task(t.SagaID, t.EventID, 1)
	cause := &stream.Failure{Kind: string(saga.KindTimeout), NonRetryable: true,
		Message: fmt.Sprintf("activity %s did not start within its schedule-to-start timeout of %s", a.ActivityType, a.Options.ScheduleToStartTimeout)}
	failure := activityFailure(task, 0, cause)
	failure.Message = fmt.Sprintf("activity %s timed out before it started", a.ActivityType)
	err = n.closeActivity(ctx, t.SagaID, t.EventID, stream.Event{Type: stream.ActivityTaskTimedOut,
		Attrs: &stream.ActivityTaskTimedOutAttrs{ScheduledEventID: t.EventID, Failure: failure}})
	if err != nil {
		return n.handlingFailed(ctx, d, "record schedule-to-start timeout", err)
	}
	d.logger().Warn("activity timed out before it started", "activity_type", a.ActivityType, "timeout", a.Options.ScheduleToStartTimeout)
	return ack()
}
