package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
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
// take. No task is written, delivered, acked or removed: one stored write
// fewer per activity, and a delivery, an ack and a removal. The commit's
// delivery is the lease: it is kept alive while the activity runs and
// acked only once the activity is settled (its outcome in the history, or
// its next attempt on its way: see retryEager). If the node dies
// meanwhile, the commit is redelivered and its next dispatch queues the
// activity's task as the attempt record says (see nextAfterRedispatch):
// activities run at least once, as they always did.
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

// eagerEligible picks the activities a commit schedules that this node
// may run eagerly: on the commit's first delivery, registered here, and
// eligible (see above). Their scheduling events' effect (queueing the
// task) is left to runEagerly, or to queueEager when the node does not
// get that far.
func (n *Node) eagerEligible(d *delivery, commit *stream.Commit) map[uint64]eagerRun {
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
		if runs == nil {
			runs = map[uint64]eagerRun{}
		}
		runs[e.ID] = eagerRun{task: task, act: act}
	}
	return runs
}

// queueEager queues the tasks of activities picked to run eagerly that
// will not run here after all (the commit's handling failed before, or
// the node stops): as their first attempt's, since none started. out is
// the commit's outcome so far; a task that cannot be queued turns an ack
// into a redelivery.
func (n *Node) queueEager(ctx context.Context, d *delivery, runs map[uint64]eagerRun, out outcome) outcome {
	var errs []error
	for _, r := range runs {
		if _, err := n.queueActivity(ctx, r.task); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil && out.kind == outcomeAck {
		return n.handlingFailed(ctx, d, "queue activity tasks", err)
	}
	return out
}

// runEagerly takes an activity slot (and an eager one, see eagerBudget)
// for each run, queues the tasks of those without one, and hands the
// commit's delivery off to the runs: it is finished once every one of
// them is settled.
func (n *Node) runEagerly(ctx context.Context, d *delivery, runs map[uint64]eagerRun) outcome {
	var slotted []eagerRun
	queued := map[uint64]eagerRun{}
	for id, r := range runs {
		if n.takeEagerSlot() {
			slotted = append(slotted, r)
		} else {
			queued[id] = r
		}
	}
	release := func() {
		for range slotted {
			n.releaseEagerSlot()
		}
	}
	if out := n.queueEager(ctx, d, queued, ack()); out.kind != outcomeAck {
		// None runs here: their tasks go for the first attempt where they
		// can, so that the redelivery does not count one (see
		// dispatchActivity).
		release()
		return n.queueEager(ctx, d, runsByID(slotted), out)
	}
	if len(slotted) == 0 {
		return ack()
	}
	if !n.track() {
		release()
		return n.queueEager(ctx, d, runsByID(slotted), ack())
	}
	finish := d.handOff()
	go func() {
		defer n.untrack()
		outs := make([]outcome, len(slotted))
		// The last run goes on this goroutine: a commit that schedules one
		// activity (the common case) costs one goroutine beside the
		// activity's own while it runs.
		var wg sync.WaitGroup
		for i, r := range slotted[:len(slotted)-1] {
			wg.Go(func() {
				defer n.releaseEagerSlot()
				outs[i] = n.settleEager(ctx, d, r)
			})
		}
		func() {
			defer n.releaseEagerSlot()
			outs[len(slotted)-1] = n.settleEager(ctx, d, slotted[len(slotted)-1])
		}()
		wg.Wait()
		finish(worstOutcome(outs))
	}()
	return handedOff()
}

func runsByID(runs []eagerRun) map[uint64]eagerRun {
	m := make(map[uint64]eagerRun, len(runs))
	for _, r := range runs {
		m[r.task.ScheduledEventID] = r
	}
	return m
}

// takeEagerSlot takes an activity slot and one of the node's eager
// slots, without waiting.
func (n *Node) takeEagerSlot() bool {
	select {
	case n.eagerSlots <- struct{}{}:
	default:
		return false
	}
	select {
	case n.activitySlots <- struct{}{}:
		return true
	default:
		<-n.eagerSlots
		return false
	}
}

func (n *Node) releaseEagerSlot() {
	<-n.activitySlots
	<-n.eagerSlots
}

// eagerBudget bounds the commits one node holds for eager runs: a share
// of the dispatcher's MaxAckPending (10,000 unless an operator set
// another), which every saga of the fleet shares.
func eagerBudget(activityConcurrency, maxAckPending int) int {
	return max(1, min(activityConcurrency, maxAckPending/16))
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
		case o.kind != outcomeAck && (worst.kind == outcomeAck || o.delay < worst.delay):
			worst = o
		}
	}
	if worst.kind == outcomeDeadLetter {
		// The commit itself is sound: its redelivery queues the task,
		// whose own handling sets aside what must be.
		worst = nakAfter(redeliveryPolicy.Delay(1), worst.reason, worst.err)
	}
	return worst
}

// settleEager runs an eager activity on its own copy of the delivery
// (its logger is its own: runs of one commit go on at once), turning a
// panic of the engine's code around it into a redelivery of the commit.
func (n *Node) settleEager(ctx context.Context, d *delivery, r eagerRun) (out outcome) {
	run := &delivery{msg: d.msg, meta: d.meta, base: d.base, consumer: d.consumer, owner: d.owner}
	run.with(slog.String("saga_id", r.task.SagaID), slog.String("activity_type", r.task.ActivityType), slog.Uint64("scheduled_event_id", r.task.ScheduledEventID))
	defer func() {
		if p := recover(); p != nil {
			run.logger().Error("eager activity run panicked", "panic", p, "stack", string(debug.Stack()))
			out = retryLater(d, "run activity eagerly", fmt.Errorf("panic: %v", p))
		}
	}()
	return n.runEager(ctx, run, r)
}

// runEager runs the first attempt of an activity for the commit that
// scheduled it, and settles it as the task handler would: its outcome
// recorded (with the workflow's next decision), or its next attempt
// queued after the backoff, by the node itself for a short one and by a
// durable timer for a longer one. It returns ack once the activity is
// settled; nak (the commit is redelivered, whose dispatch queues the next
// attempt's task) when it could not be; leave when the node stops.
func (n *Node) runEager(ctx context.Context, d *delivery, r eagerRun) outcome {
	task := r.task
	const attempt = 1
	commitSeq := d.meta.Sequence.Stream
	n.stats.activitiesEager.Add(1)
	// Held from here to the outcome's recording: the gate keeps types
	// whose runs hold commits long off the eager path.
	defer n.eagerGate.begin(task.ActivityType, n.clock.Now)()
	ctx, span := n.tracer.StartActivity(ctx, d.msg.Headers(), telemetry.ActivityAttempt{
		SagaID: task.SagaID, ActivityType: task.ActivityType, ScheduledEventID: task.ScheduledEventID, Attempt: attempt})
	defer span.End()
	// No task: a record a heartbeat writes names the commit instead.
	hb := newHeartbeats(n, task, attempt, 0)
	hb.commitSeq = commitSeq
	result, runErr := n.runActivity(ctx, r.act, task, attempt, nil, hb)
	stoppedBy := hb.stoppedBy()
	recorded := hb.wroteRecord()
	if ctx.Err() != nil {
		return leave()
	}
	settle := func(out attemptOutcome) outcome {
		return n.reportOutcome(ctx, d, task, attempt, recorded, out)
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
	return n.retryEager(ctx, d, task, commitSeq, delay, runErr)
}

// retryEager queues the attempt after a failed eager one, after delay,
// with a record that the eager attempt started (what a redelivery of the
// commit, or a wake, goes by). A short backoff is waited out here, then
// the task is queued; a longer one waits on a durable timer, armed before
// the record says so.
func (n *Node) retryEager(ctx context.Context, d *delivery, task stream.ActivityTask, commitSeq uint64, delay time.Duration, runErr error) outcome {
	what := "retry activity " + task.ActivityType
	var retryAt time.Time
	if delay >= retryTimerThreshold {
		retryAt = n.clock.Now().Add(delay)
		timer := kv.Timer{Kind: timerRetry, SagaID: task.SagaID, EventID: task.ScheduledEventID, Attempt: 2, Due: retryAt}
		if err := n.timers.Load().Schedule(ctx, timer); err != nil {
			// The commit comes back after the backoff instead, and its
			// dispatch queues the next attempt.
			return nakAfter(delay, what+" (arm its timer)", err)
		}
	}
	superseded := false
	err := n.attempts.update(ctx, task.SagaID, task.ScheduledEventID, func(rec *attemptRecord, found bool) (bool, error) {
		superseded = found && rec.Started > 1
		if superseded {
			return false, nil // a later attempt started (a wake's): it goes on
		}
		if !found {
			*rec = attemptRecord{Started: 1, CommitSeq: commitSeq, Node: n.opts.NodeName, At: n.clock.Now()}
		}
		rec.Ended, rec.RetryAt = 1, retryAt
		return true, nil
	})
	if err != nil {
		return nakAfter(delay, what+" (record the attempt)", err)
	}
	if superseded {
		return ack()
	}
	if !retryAt.IsZero() {
		return ack()
	}
	if err := n.clock.Sleep(ctx, delay); err != nil {
		return leave()
	}
	next := task
	next.Attempt = 2
	if _, err := n.queueActivity(ctx, next); err != nil {
		return retryLater(d, what+" (queue its task)", errors.Join(err, runErr))
	}
	return ack()
}
