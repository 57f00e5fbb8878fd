package worker

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
)

// Eager activities: the node dispatching a commit that schedules an
// activity runs the activity itself, when it registers the activity and
// has a free activity slot, instead of queueing its task for some node to
// take. No task is written, delivered, acked or removed: three fewer
// stored writes per activity. The commit's delivery is the lease: it is
// kept alive while the activity runs and acked only once the outcome is in
// the history (or the retry is on its timer). If the node dies meanwhile,
// the commit is redelivered and its next dispatch queues the activity's
// task as usual, for the next attempt: activities run at least once, as
// they always did.
//
// Only the first delivery of a commit runs activities eagerly, and only
// activities whose first attempt may start without a record anyway (see
// fastEligible): a lost eager start costs at most one of several attempts,
// exactly as a task's first delivery may, and an activity with a
// heartbeat or schedule-to-start timeout keeps the path that records its
// attempts before they start.

// A run holds its commit's delivery, which counts against the dispatcher
// consumer's MaxAckPending, shared by every saga of the fleet: long runs
// held there could stall the dispatch of every commit. So an activity
// type whose runs are long goes through tasks on this node: one whose
// eager run has lasted more than eagerMaxRun, or whose last run did,
// until eagerSlowFor has passed.
const (
	eagerMaxRun  = 10 * time.Second
	eagerSlowFor = 10 * time.Minute
)

// eagerRun is an activity the dispatcher runs itself, with the activity
// slot it took.
type eagerRun struct {
	task stream.ActivityTask
	act  *saga.RegisteredActivity
}

// eagerGate tells which activity types run eagerly on a node: those
// whose runs are short (see eagerMaxRun).
type eagerGate struct {
	mu        sync.Mutex
	running   map[string]map[*time.Time]struct{} // start times of eager runs, by type
	slowUntil map[string]time.Time
}

// short reports whether the type's runs are short, as far as the node
// knows.
func (g *eagerGate) short(activityType string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Before(g.slowUntil[activityType]) {
		return false
	}
	for began := range g.running[activityType] {
		if now.Sub(*began) > eagerMaxRun {
			g.slowUntil[activityType] = now.Add(eagerSlowFor)
			return false
		}
	}
	return true
}

// begin notes an eager run that starts; the returned func notes its end.
func (g *eagerGate) begin(activityType string, now func() time.Time) (end func()) {
	began := now()
	g.mu.Lock()
	if g.running == nil {
		g.running, g.slowUntil = map[string]map[*time.Time]struct{}{}, map[string]time.Time{}
	}
	if g.running[activityType] == nil {
		g.running[activityType] = map[*time.Time]struct{}{}
	}
	g.running[activityType][&began] = struct{}{}
	g.mu.Unlock()
	return func() {
		ended := now()
		g.mu.Lock()
		defer g.mu.Unlock()
		delete(g.running[activityType], &began)
		if ended.Sub(began) > eagerMaxRun {
			g.slowUntil[activityType] = ended.Add(eagerSlowFor)
		}
	}
}

// eagerRuns picks the activities a delivered commit schedules that this
// node runs eagerly, taking an activity slot for each. Their scheduling
// events' effect (queueing the task) is skipped; the caller must either
// run them (runEager) or give them back (releaseEager and queue them).
func (n *Node) eagerRuns(d *delivery, commit *stream.Commit) map[uint64]eagerRun {
	if n.opts.DisableEagerActivities || n.activitySlots == nil || d.meta.NumDelivered != 1 {
		return nil
	}
	var runs map[uint64]eagerRun
	for _, e := range commit.Events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.Canceled {
			continue
		}
		task, ok := stream.TaskFor(e)
		if !ok || !fastEligible(task.Options) || !stream.CanOpen(n.opts.Codec, task.Input) {
			continue
		}
		act, ok := n.reg.Activity(task.ActivityType)
		if !ok || !n.eagerGate.short(task.ActivityType, n.clock.Now()) {
			continue
		}
		select {
		case n.activitySlots <- struct{}{}:
		default:
			return runs // all slots busy: the rest go as tasks
		}
		if runs == nil {
			runs = map[uint64]eagerRun{}
		}
		runs[e.ID] = eagerRun{task: task, act: act}
	}
	return runs
}

// releaseEager gives back the slots of activities that will not run
// eagerly after all.
func (n *Node) releaseEager(runs map[uint64]eagerRun) {
	for range runs {
		<-n.activitySlots
	}
}

// handOffEager runs the activities concurrently after the dispatcher's
// handler returned, and finishes the commit's delivery once every one is
// settled: acked when all are, redelivered otherwise (its next dispatch
// queues the unsettled ones' tasks). When the node is stopping it runs
// nothing and queues their tasks now.
func (n *Node) handOffEager(ctx context.Context, d *delivery, runs map[uint64]eagerRun) outcome {
	if !n.track() {
		n.releaseEager(runs)
		return n.queueInstead(ctx, d, runs)
	}
	finish := d.handOff()
	go func() {
		defer n.untrack()
		outs := make([]outcome, 0, len(runs))
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, r := range runs {
			wg.Go(func() {
				defer func() { <-n.activitySlots }()
				out := n.runEager(ctx, d, r)
				mu.Lock()
				outs = append(outs, out)
				mu.Unlock()
			})
		}
		wg.Wait()
		finish(worstOutcome(outs))
	}()
	return handedOff()
}

// queueInstead queues the tasks of activities picked to run eagerly.
func (n *Node) queueInstead(ctx context.Context, d *delivery, runs map[uint64]eagerRun) outcome {
	var errs []error
	for _, r := range runs {
		if _, err := n.queueActivity(ctx, r.task); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return n.handlingFailed(ctx, d, "queue activity tasks", err)
	}
	return ack()
}

// worstOutcome is what becomes of a commit whose eager activities ended
// with outs: left alone if one was left (the node stops), redelivered if
// one was not settled, acked when all were.
func worstOutcome(outs []outcome) outcome {
	worst := ack()
	for _, o := range outs {
		switch {
		case o.kind == outcomeLeave:
			return o
		case o.kind == outcomeNak && (worst.kind == outcomeAck || o.delay < worst.delay):
			worst = o
		}
	}
	return worst
}

// runEager runs the first attempt of an activity for the commit that
// scheduled it, and settles it as the task handler would: its outcome
// recorded (with the workflow's next decision), or its retry on a durable
// timer. It returns ack once the activity is settled; nak (the commit is
// redelivered, and queues the next attempt's task) when it could not be;
// leave when the node stops.
func (n *Node) runEager(ctx context.Context, d *delivery, r eagerRun) outcome {
	task := r.task
	const attempt = 1
	n.stats.activitiesEager.Add(1)
	ctx, span := n.tracer.StartActivity(ctx, d.msg.Headers(), telemetry.ActivityAttempt{
		SagaID: task.SagaID, ActivityType: task.ActivityType, ScheduledEventID: task.ScheduledEventID, Attempt: attempt})
	defer span.End()
	// No task: the attempt record a heartbeat writes names none.
	hb := newHeartbeats(n, task, attempt, 0)
	end := n.eagerGate.begin(task.ActivityType, n.clock.Now)
	result, runErr := n.runActivity(ctx, r.act, task, attempt, nil, hb)
	end()
	stoppedBy := hb.stoppedBy()
	recorded := hb.wroteRecord()
	if ctx.Err() != nil {
		return leave()
	}
	settle := func(out attemptOutcome) outcome {
		o := n.reportOutcome(ctx, d, task, attempt, recorded, out)
		if o.kind == outcomeDeadLetter {
			// The commit itself is sound: its redelivery queues the task,
			// whose own handling sets aside what must be.
			return retryLater(d, "record eager activity outcome", o.err)
		}
		return o
	}
	if runErr == nil {
		if err := n.store.Config().CheckPayload("result of activity "+task.ActivityType, result); err != nil {
			runErr = saga.Permanent(&saga.Error{Kind: saga.KindValidation, Message: "activity result", Cause: err})
		} else {
			return settle(attemptOutcome{result: result})
		}
	}
	switch {
	case errors.Is(stoppedBy, saga.ErrCanceled):
		d.logger().Info("activity stopped: the saga was canceled", "attempt", attempt, "err", runErr)
		return settle(attemptOutcome{canceled: true})
	case stoppedBy != nil:
		d.logger().Info("activity attempt stopped", "attempt", attempt, "reason", stoppedBy)
		if errors.Is(stoppedBy, errActivityClosed) {
			n.attempts.remove(ctx, task.SagaID, task.ScheduledEventID)
		}
		return ack()
	}
	policy := task.Options.RetryPolicy
	cause := saga.ToFailure(runErr, saga.KindActivityExecution).Bounded()
	if !retryable(cause, policy) || policy.MaximumAttempts > 0 && attempt >= policy.MaximumAttempts {
		d.logger().Warn("activity failed", "attempt", attempt, "err", runErr)
		return settle(attemptOutcome{failure: activityFailure(task, attempt, cause)})
	}
	n.stats.activityRetries.Add(1)
	delay := retryBackoff(policy, attempt)
	d.logger().Warn("activity attempt failed; retrying", "attempt", attempt, "retry_in", delay, "err", runErr)
	if delay < retryTimerThreshold {
		// The commit comes back after the backoff, and its redelivery
		// queues the next attempt's task (see dispatchActivity).
		return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt), runErr)
	}
	// A longer backoff waits on a durable timer, after a record that this
	// attempt started.
	if !recorded {
		rec := attemptRecord{Started: attempt, Node: n.opts.NodeName, At: n.clock.Now()}
		if err := n.attempts.put(ctx, task.SagaID, task.ScheduledEventID, rec, 0, false); err != nil {
			return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt)+" (record)", runErr)
		}
	}
	timer := kv.Timer{Kind: timerRetry, SagaID: task.SagaID, EventID: task.ScheduledEventID, Attempt: attempt + 1, Due: n.clock.Now().Add(delay)}
	if err := n.timers.Load().Schedule(ctx, timer); err != nil {
		d.logger().Warn("retry timer not created; the commit's redelivery queues the next attempt", "err", err)
		return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt), runErr)
	}
	return ack()
}
