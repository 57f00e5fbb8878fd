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
	case timerHeartbeat:
		return n.heartbeatFired(ctx, d, t)
	case timerRunTimeout:
		return n.runTimeoutFired(ctx, d, t)
	case timerWorkflow:
		return n.workflowTimerFired(ctx, d, t)
	}
	return nakAfter(unsupportedDelay(d), "fire timer (leaving it to a node that knows its kind)", fmt.Errorf("timer kind %q", t.Kind))
}

// retryFired queues the task of the attempt a retry timer waited for.
func (n *Node) retryFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	a, state, err := n.lookupActivity(ctx, t.SagaID, t.EventID)
	if err != nil {
		return n.handlingFailed(ctx, d, "look up activity to retry", err)
	}
	switch state {
	case activityClosed:
		return ack()
	case activityCancelRequested:
		// The saga was canceled while the activity waited for its retry.
		rec, _, _, err := n.attempts.get(ctx, t.SagaID, t.EventID)
		if err != nil {
			return retryLater(d, "read attempts", err)
		}
		if err := n.closeActivity(ctx, t.SagaID, t.EventID, rec.Started, attemptOutcome{canceled: true}); err != nil {
			return n.handlingFailed(ctx, d, "record activity canceled", err)
		}
		n.attempts.remove(ctx, t.SagaID, t.EventID)
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
	a, state, err := n.lookupActivity(ctx, t.SagaID, t.EventID)
	if err != nil {
		return n.handlingFailed(ctx, d, "look up activity", err)
	}
	if state == activityClosed {
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
	err = n.closeActivity(ctx, t.SagaID, t.EventID, 0, attemptOutcome{failure: failure})
	if err != nil {
		return n.handlingFailed(ctx, d, "record schedule-to-start timeout", err)
	}
	d.logger().Warn("activity timed out before it started", "activity_type", a.ActivityType, "timeout", a.Options.ScheduleToStartTimeout)
	return ack()
}

// heartbeatFired checks that an attempt showed a sign of life (a recorded
// heartbeat, or its start) within its heartbeat timeout, comparing the
// server's time of the last write of its record with the server's time of
// firing. One that did gets its timer again, due a timeout after that
// write. One that did not is given up for dead: its record says so (a
// late heartbeat from it then stops it, and its task starts nothing more),
// its task is removed, and the next attempt's task is queued now rather
// than after the ack wait, or the activity fails when no attempt is left.
// Everything after the record is written is redone if this timer comes
// back, so a failure half-way loses nothing.
func (n *Node) heartbeatFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	a, state, err := n.lookupActivity(ctx, t.SagaID, t.EventID)
	if err != nil {
		return n.handlingFailed(ctx, d, "look up activity", err)
	}
	if state == activityClosed {
		return ack()
	}
	timeout := a.Options.HeartbeatTimeout
	firedAt := d.meta.Timestamp
	var rec attemptRecord
	var found bool
	err = n.attempts.update(ctx, t.SagaID, t.EventID, func(r *attemptRecord, ok bool) (bool, error) {
		rec, found = *r, ok
		if !ok || r.Started != t.Attempt || r.Ended >= t.Attempt || r.TimedOut || r.GivenUp >= t.Attempt || firedAt.Sub(r.written) < timeout {
			return false, nil
		}
		r.GivenUp = t.Attempt
		rec = *r
		return true, nil
	})
	if err != nil {
		return retryLater(d, "check heartbeat", err)
	}
	switch {
	case !found || rec.Started != t.Attempt || rec.TimedOut:
		return ack() // a later attempt started; it has its own timer
	case rec.GivenUp >= t.Attempt:
		// Given up (now, or by an earlier delivery of this timer whose
		// follow-up failed): carry out what follows.
	case rec.Ended >= t.Attempt:
		return ack() // the attempt returned; its outcome decides
	default:
		next := t
		next.Due = rec.written.Add(timeout)
		if err := n.timers.Load().Schedule(ctx, next); err != nil {
			return retryLater(d, "arm heartbeat timeout", err)
		}
		return ack()
	}
	d.logger().Warn("activity attempt missed its heartbeat timeout; its node is taken for dead", "attempt", t.Attempt,
		"heartbeat_timeout", timeout, "last_sign_of_life", rec.written)
	task := a.Task(t.SagaID, t.EventID, t.Attempt+1)
	policy := a.Options.RetryPolicy
	switch {
	case state == activityCancelRequested:
		if err := n.closeActivity(ctx, t.SagaID, t.EventID, t.Attempt, attemptOutcome{canceled: true}); err != nil {
			return n.handlingFailed(ctx, d, "record activity canceled", err)
		}
		n.attempts.remove(ctx, t.SagaID, t.EventID)
		return ack()
	case policy.MaximumAttempts > 0 && t.Attempt >= policy.MaximumAttempts:
		cause := &stream.Failure{Kind: string(saga.KindTimeout), Message: fmt.Sprintf("attempt %d sent no heartbeat for %s", t.Attempt, timeout)}
		if err := n.closeActivity(ctx, t.SagaID, t.EventID, t.Attempt, attemptOutcome{failure: activityFailure(task, t.Attempt, cause)}); err != nil {
			return n.handlingFailed(ctx, d, "record heartbeat timeout", err)
		}
		n.attempts.remove(ctx, t.SagaID, t.EventID)
		return ack()
	}
	// One task per activity: the silent attempt's goes, the next one's
	// takes its place.
	if err := n.store.RemoveTask(ctx, rec.TaskSeq); err != nil {
		return retryLater(d, "remove the silent attempt's task", err)
	}
	if delay := retryBackoff(policy, t.Attempt); delay >= retryTimerThreshold {
		retry := kv.Timer{Kind: timerRetry, SagaID: t.SagaID, EventID: t.EventID, Attempt: t.Attempt + 1, Due: n.clock.Now().Add(delay)}
		if err := n.timers.Load().Schedule(ctx, retry); err != nil {
			return retryLater(d, "schedule retry after heartbeat timeout", err)
		}
		return ack()
	}
	if _, err := n.queueActivity(ctx, task); err != nil {
		return n.handlingFailed(ctx, d, "queue the next attempt", err)
	}
	return ack()
}

// runTimeoutFired requests the cancellation of a saga past its run
// timeout, with the run timeout as its cause: the saga compensates and
// ends timed_out.
func (n *Node) runTimeoutFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	err := n.advance(ctx, advanceRequest{sagaID: t.SagaID, inputs: func(st *stream.State) []stream.Event {
		// The timer of a run that continued as new is that run's: the run
		// in progress has its own.
		if st.RunTimedOut || st.RunTimeout <= 0 || t.EventID != st.RunStartEventID {
			return nil
		}
		return []stream.Event{{Type: stream.WorkflowExecutionCancelRequested, Attrs: &stream.WorkflowExecutionCancelRequestedAttrs{
			Cause: stream.CancelByRunTimeout, Reason: fmt.Sprintf("run timeout of %s passed", st.RunTimeout), Identity: n.opts.NodeName}}}
	}})
	if err != nil {
		return n.handlingFailed(ctx, d, "record run timeout", err)
	}
	return ack()
}

// workflowTimerFired records TimerFired for a timer of workflow code that
// is still open in the history: once, however often its marker comes.
func (n *Node) workflowTimerFired(ctx context.Context, d *delivery, t kv.Timer) outcome {
	// Read up to the timer's event first: a replica behind it is waited
	// for, and a timer no history holds (written by hand) is set aside.
	var open bool
	if err := n.withState(ctx, t.SagaID, t.EventID, func(st *stream.State) { open = st.Timers[t.EventID].Open }); err != nil {
		return n.handlingFailed(ctx, d, "look up timer", err)
	}
	if !open {
		return ack() // fired or canceled already
	}
	err := n.advance(ctx, advanceRequest{sagaID: t.SagaID, inputs: func(st *stream.State) []stream.Event {
		if !st.Timers[t.EventID].Open {
			return nil
		}
		return []stream.Event{{Type: stream.TimerFired, Attrs: &stream.TimerFiredAttrs{StartedEventID: t.EventID}}}
	}})
	if err != nil {
		return n.handlingFailed(ctx, d, "record timer fired", err)
	}
	return ack()
}
