package worker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
)

// effects is the one table of what the dispatcher derives from a committed
// event: the work outside the history that the event asks for. Every
// effect is idempotent, since a commit may be dispatched more than once.
// A new kind of command (a timer, a cancellation) adds its entry here, and,
// if its effect must exist for as long as the command is open, a case in
// rederive.
var effects = map[stream.EventType]func(ctx context.Context, n *Node, e stream.Event) error{
	stream.WorkflowExecutionStarted:  armRunTimeout,
	stream.ActivityTaskScheduled:     dispatchActivity,
	stream.CompensationStepScheduled: dispatchActivity,
	// Activities the cancellation reaches whose task no node took yet
	// never start.
	stream.WorkflowExecutionCancelRequested: cancelUndelivered,
	stream.TimerCreated:                     armWorkflowTimer,
	stream.TimerCanceled:                    deleteWorkflowTimer,
}

// Kinds of the engine's durable timers (see package kv).
const (
	// timerRetry queues the task of an activity's next attempt once its
	// retry backoff has passed.
	timerRetry = "retry"
	// timerScheduleToStart times out an activity whose first attempt did
	// not start in time.
	timerScheduleToStart = "s2s"
	// timerHeartbeat checks that an attempt heartbeated within its
	// heartbeat timeout.
	timerHeartbeat = "hb"
	// timerRunTimeout ends a saga that runs past its run timeout.
	timerRunTimeout = "run"
	// timerWorkflow is a timer of workflow code (TimerCreated).
	timerWorkflow = "wf"
)

// workflowTimer is the durable timer of a TimerCreated event.
func workflowTimer(sagaID string, createdEventID uint64, fireAt time.Time) kv.Timer {
	return kv.Timer{Kind: timerWorkflow, SagaID: sagaID, EventID: createdEventID, Due: fireAt}
}

// armWorkflowTimer puts a workflow timer in the timers bucket.
func armWorkflowTimer(ctx context.Context, n *Node, e stream.Event) error {
	a, ok := e.Attrs.(*stream.TimerCreatedAttrs)
	if !ok {
		return nil
	}
	if err := n.timers.Load().Schedule(ctx, workflowTimer(e.SagaID, e.ID, a.FireAt(e.Time))); err != nil {
		return fmt.Errorf("arm timer: %w", err)
	}
	return nil
}

// deleteWorkflowTimer deletes the durable timer of a canceled workflow
// timer; one that fires anyway finds it closed in the history.
func deleteWorkflowTimer(ctx context.Context, n *Node, e stream.Event) error {
	a, ok := e.Attrs.(*stream.TimerCanceledAttrs)
	if !ok {
		return nil
	}
	var fireAt time.Time
	err := n.withState(ctx, e.SagaID, e.ID, func(st *stream.State) { fireAt = st.Timers[a.StartedEventID].FireAt })
	if err != nil || fireAt.IsZero() {
		return err
	}
	if err := n.timers.Load().Cancel(ctx, workflowTimer(e.SagaID, a.StartedEventID, fireAt)); err != nil {
		return fmt.Errorf("delete timer: %w", err)
	}
	return nil
}

// armRunTimeout arms the run timeout of a saga that has one.
func armRunTimeout(ctx context.Context, n *Node, e stream.Event) error {
	a, ok := e.Attrs.(*stream.WorkflowExecutionStartedAttrs)
	if !ok || a.RunTimeout <= 0 {
		return nil
	}
	t := kv.Timer{Kind: timerRunTimeout, SagaID: e.SagaID, EventID: e.ID, Due: e.Time.Add(a.RunTimeout)}
	if err := n.timers.Load().Schedule(ctx, t); err != nil {
		return fmt.Errorf("arm run timeout: %w", err)
	}
	return nil
}

// cancelUndelivered records as canceled the activities a cancellation
// reaches whose task is still queued and was never delivered, after
// removing the task: the first delivery of a task starts its attempt
// without reading the history, so this is where a cancellation keeps it
// from starting. A task delivered already is left to its attempt's
// heartbeats, or to its next delivery, which reads the history.
func cancelUndelivered(ctx context.Context, n *Node, e stream.Event) error {
	type reached struct {
		id  uint64
		typ string
	}
	var todo []reached
	err := n.withState(ctx, e.SagaID, e.ID, func(st *stream.State) {
		if st.Status.Terminal() || st.CancelRequestedEventID != e.ID {
			return
		}
		for id, a := range st.OpenActivities {
			if st.CancelReaches(id) {
				todo = append(todo, reached{id, a.ActivityType})
			}
		}
	})
	if err != nil {
		return err
	}
	slices.SortFunc(todo, func(a, b reached) int { return int(a.id) - int(b.id) })
	var errs []error
	for _, r := range todo {
		if err := n.cancelIfUndelivered(ctx, e.SagaID, r.id, r.typ); err != nil {
			errs = append(errs, fmt.Errorf("activity at event %d: %w", r.id, err))
		}
	}
	return errors.Join(errs...)
}

func (n *Node) cancelIfUndelivered(ctx context.Context, sagaID string, id uint64, activityType string) error {
	if _, _, found, err := n.attempts.get(ctx, sagaID, id); err != nil || found {
		return err // started, or waiting for a retry (its timer cancels it)
	}
	_, seq, queued, err := n.store.QueuedTask(ctx, activityType, sagaID, id)
	if err != nil || !queued {
		return err
	}
	delivered, err := n.store.TaskDelivered(ctx, activityType, seq)
	if err != nil || delivered {
		return err
	}
	if err := n.store.RemoveTask(ctx, seq); err != nil {
		return err
	}
	// The consumer not past the task now: it was never delivered, and
	// never will be. Past it: delivered before the removal, or the
	// consumer stepped over the removed task to a later one; the two look
	// alike. Then a task queued again in its place, which reads the
	// history before it runs anything, records the cancellation, unless
	// an attempt that did start records what it did first.
	delivered, err = n.store.TaskDelivered(ctx, activityType, seq)
	if err != nil {
		return err
	}
	if delivered {
		a, state, err := n.lookupActivity(ctx, sagaID, id)
		if err != nil || state == activityClosed {
			return err
		}
		task := a.Task(sagaID, id, 1)
		task.Rederived = true
		_, err = n.queueActivity(ctx, task)
		return err
	}
	return n.closeActivity(ctx, sagaID, id, 0, attemptOutcome{canceled: true})
}

// dispatchActivity queues the first attempt's task of a scheduled activity
// and arms its schedule-to-start timeout, if it has one.
func dispatchActivity(ctx context.Context, n *Node, e stream.Event) error {
	if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.Canceled {
		return nil // canceled in the decision that scheduled it
	}
	task, _ := stream.TaskFor(e)
	if redispatched(ctx) && fastEligible(task.Options) {
		next, queue, err := n.nextAfterRedispatch(ctx, task)
		if err != nil || !queue {
			return err
		}
		task.Attempt = next
	}
	_, err := n.queueActivity(ctx, task)
	return err
}

// nextAfterRedispatch works out the attempt a commit delivered again
// queues for an activity it schedules: its first dispatch may have run
// the first attempt eagerly without a record (it died doing so), or
// queued the task whose first delivery started it without one. The
// record, when there is one, says: a retry waiting on its timer is the
// timer's to queue. queue is false when nothing is to be queued.
func (n *Node) nextAfterRedispatch(ctx context.Context, task stream.ActivityTask) (next int, queue bool, err error) {
	_, state, err := n.lookupActivity(ctx, task.SagaID, task.ScheduledEventID)
	if err != nil || state == activityClosed {
		return 0, false, err
	}
	rec, _, found, err := n.attempts.get(ctx, task.SagaID, task.ScheduledEventID)
	switch {
	case err != nil:
		return 0, false, err
	case found && retryPending(rec, n.clock.Now()):
		return 0, false, nil
	case found:
		return rec.Started + 1, true, nil
	}
	return 2, true, nil
}

type redispatchKey struct{}

// withRedispatch marks a commit delivered before: the effects of its
// first dispatch may have started.
func withRedispatch(ctx context.Context) context.Context {
	return context.WithValue(ctx, redispatchKey{}, true)
}

func redispatched(ctx context.Context) bool {
	v, _ := ctx.Value(redispatchKey{}).(bool)
	return v
}

// queueActivity puts an activity's (or compensation step's) task on the task stream (a no-op when
// one is queued already: queued false) and, for its first attempt, arms
// the schedule-to-start timeout.
func (n *Node) queueActivity(ctx context.Context, task stream.ActivityTask) (queued bool, err error) {
	queued, err = n.store.PublishTask(ctx, task)
	if errors.Is(err, stream.ErrInvalidID) || errors.Is(err, stream.ErrCodec) || errors.Is(err, stream.ErrTooLarge) {
		// A task that can never be published (an activity type that is not
		// a subject token, say, from a foreign writer): the workflow gets
		// the error as the activity's failure instead of a saga that waits
		// forever.
		n.log.Error("activity task cannot be published; failing the activity", "saga_id", task.SagaID, "err", err)
		return false, n.failUnpublishable(ctx, task, err)
	}
	if err != nil {
		return false, err
	}
	if queued {
		n.stats.tasksPublished.Add(1)
	}
	if d := task.Options.ScheduleToStartTimeout; d > 0 && task.Attempt == 1 {
		t := kv.Timer{Kind: timerScheduleToStart, SagaID: task.SagaID, EventID: task.ScheduledEventID, Due: task.ScheduledAt.Add(d)}
		if err := n.timers.Load().Schedule(ctx, t); err != nil {
			return queued, fmt.Errorf("arm schedule-to-start timeout: %w", err)
		}
	}
	return queued, nil
}

// rederive carries out again the effects of whatever is still open in a
// saga: its timers and run timeout, and the task of each open activity, for the attempt after those that
// started. A task lost for any reason (set aside, a stream purged by hand)
// is queued again; one still queued is left as it is. An operator's wake
// does this.
func (n *Node) rederive(ctx context.Context, st *stream.State) error {
	if !st.Exists() || st.Status.Terminal() {
		return nil
	}
	for id, t := range st.Timers {
		if t.Open {
			if err := n.timers.Load().Schedule(ctx, workflowTimer(st.SagaID, id, t.FireAt)); err != nil {
				return fmt.Errorf("arm timer: %w", err)
			}
		}
	}
	if st.RunTimeout > 0 && !st.RunTimedOut {
		t := kv.Timer{Kind: timerRunTimeout, SagaID: st.SagaID, EventID: st.RunStartEventID, Due: st.StartedAt.Add(st.RunTimeout)}
		if err := n.timers.Load().Schedule(ctx, t); err != nil {
			return fmt.Errorf("arm run timeout: %w", err)
		}
	}
	ids := make([]uint64, 0, len(st.OpenActivities))
	for id := range st.OpenActivities {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rec, _, found, err := n.attempts.get(ctx, st.SagaID, id)
		if err != nil {
			return err
		}
		if found && (rec.TimedOut || retryPending(rec, n.clock.Now())) {
			continue // its outcome, or its retry's timer, is on the way
		}
		held, err := n.heldForEagerRun(ctx, st, id, rec, found)
		if err != nil {
			return err
		}
		if held {
			n.log.Info("wake: activity left to the commit that scheduled it, which its dispatcher still holds (it may be running there); wake again once it is over if the activity stays stuck",
				"saga_id", st.SagaID, "scheduled_event_id", id)
			continue
		}
		attempt := 1
		if found {
			attempt = rec.Started + 1
		}
		task := st.OpenActivities[id].Task(st.SagaID, id, attempt)
		task.Rederived = true
		if err := n.queueReplacingLeftover(ctx, task, rec, found); err != nil {
			return err
		}
	}
	return nil
}

// retryTimerGrace is how long past its due time a retry timer may take
// to fire before wake and a redispatch take it for lost.
const retryTimerGrace = time.Minute

// retryPending reports whether the record's retry is its timer's to
// queue: the timer is not due yet, or only just.
func retryPending(rec attemptRecord, now time.Time) bool {
	return !rec.RetryAt.IsZero() && now.Before(rec.RetryAt.Add(retryTimerGrace))
}

// heldForEagerRun reports whether an open activity may be running eagerly
// on the delivery of a commit the dispatcher still holds: its first
// attempt, without a record or with one its heartbeats wrote, on the
// commit that scheduled it. A task queued for it then would run it a
// second time, at once; the commit settles it, or its redelivery queues
// the task. The dispatcher's ack floor says whether it still holds the
// commit; a floor held back by another commit makes this true for longer
// than needed, never false while the run goes on.
func (n *Node) heldForEagerRun(ctx context.Context, st *stream.State, id uint64, rec attemptRecord, found bool) (bool, error) {
	a := st.OpenActivities[id]
	seq := a.ScheduledSeq
	switch {
	case !fastEligible(a.Options):
		return false, nil
	case found && (rec.CommitSeq == 0 || rec.Started != 1):
		return false, nil // started from a task
	case found:
		seq = rec.CommitSeq
	}
	if seq == 0 {
		seq = st.LastSeq // a state that does not say (folded by an older engine)
	}
	dispatched, err := n.store.Dispatched(ctx, st.SagaID, seq)
	return !dispatched, err
}

// queueReplacingLeftover queues task unless a task that runs its attempt
// is queued already. A leftover that would be dropped unrun (a task for an
// attempt another task started) does not count: it is removed, so that it
// does not stand in for the task the saga needs.
func (n *Node) queueReplacingLeftover(ctx context.Context, task stream.ActivityTask, rec attemptRecord, found bool) error {
	for range 3 { // each round removes one leftover; more mean a racing writer
		queued, err := n.queueActivity(ctx, task)
		if err != nil || queued {
			return err
		}
		seq, queued, leftover, err := n.queuedLeftover(ctx, task, rec, found)
		if err != nil || !queued || !leftover {
			return err // gone meanwhile (the next wake sees), or a task that runs the attempt
		}
		if err := n.store.RemoveTask(ctx, seq); err != nil {
			return err
		}
	}
	return nil
}

// queuedLeftover reports whether a task is queued for an activity (at
// seq), and whether it is a leftover: a task for an attempt that another
// task started, which will be dropped unrun.
func (n *Node) queuedLeftover(ctx context.Context, task stream.ActivityTask, rec attemptRecord, found bool) (seq uint64, queued, leftover bool, err error) {
	there, seq, queued, err := n.store.QueuedTask(ctx, task.ActivityType, task.SagaID, task.ScheduledEventID)
	if err != nil || !queued {
		return 0, false, false, err
	}
	_, leftover = nextAttempt(there, seq, 1, rec, found)
	return seq, true, leftover, nil
}

// failUnpublishable records a non-retryable failure for an activity whose
// task cannot be published.
func (n *Node) failUnpublishable(ctx context.Context, task stream.ActivityTask, cause error) error {
	failure := activityFailure(task, 0, &stream.Failure{Kind: string(saga.KindValidation), Message: cause.Error(), NonRetryable: true})
	return n.closeActivity(ctx, task.SagaID, task.ScheduledEventID, 0, attemptOutcome{failure: failure})
}

// closeActivity records the outcome of an activity (or compensation step)
// that no running attempt produced, after attempts attempts started, if
// the activity is still open.
func (n *Node) closeActivity(ctx context.Context, sagaID string, scheduledEventID uint64, attempts int, out attemptOutcome) error {
	out.attempts = attempts
	return n.advance(ctx, advanceRequest{sagaID: sagaID, needEvent: &scheduledEventID, inputs: func(st *stream.State) []stream.Event {
		a, open := st.OpenActivities[scheduledEventID]
		if !open {
			return nil
		}
		return outcomeEvents(a, scheduledEventID, 0, n.opts.NodeName, out)
	}})
}
