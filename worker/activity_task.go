package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
)

// activityTasks handles the tasks of the activity types a node registers:
// it works out which attempt a task runs (see attemptStore), runs it, and
// records its outcome in the saga's history, together with the workflow's
// next decision when this node runs the workflow, before the task goes.
// A retryable failure comes back after its backoff: short ones by a
// delayed redelivery, longer ones by a durable timer that queues the next
// attempt's task, so that tasks waiting out a backoff do not hold the
// consumer's pending slots that new tasks need.
type activityTasks struct{ n *Node }

var _ givingBack = activityTasks{}

// retryTimerThreshold: a retry backoff from this long on waits on a durable
// timer instead of a delayed redelivery.
const retryTimerThreshold = time.Second

func (h activityTasks) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	task, err := n.store.DecodeTask(d.msg.Data())
	switch {
	case errors.Is(err, stream.ErrUnsupported):
		return nakAfter(unsupportedDelay(d), "decode activity task (leaving it to a node that can)", err)
	case err != nil:
		return deadLetter("undecodable activity task", err)
	}
	act, ok := n.reg.Activity(task.ActivityType)
	if want := n.store.Config().TaskSubject(task.ActivityType, task.SagaID, task.ScheduledEventID); !ok || d.msg.Subject() != want {
		return deadLetter("activity task does not match its subject", fmt.Errorf("task for %s of saga %s event %d on %s", task.ActivityType, task.SagaID, task.ScheduledEventID, d.msg.Subject()))
	}
	d.with(slog.String("saga_id", task.SagaID), slog.String("activity_type", task.ActivityType), slog.Uint64("scheduled_event_id", task.ScheduledEventID))
	if !stream.CanOpen(n.opts.Codec, task.Input) {
		// Its input is sealed with a key this node lacks: no attempt
		// starts here, and the task goes to a node that holds the key.
		delay := newerCodePolicy.Delay(int(d.meta.NumDelivered))
		d.logger().Error("leaving the activity to a node that holds the payload key", "err", errCannotOpen, "retry_in", delay.Round(time.Millisecond))
		return nakAfter(delay, "", nil)
	}

	attempt, recorded, details, out, run := n.startAttempt(ctx, d, task)
	if !run {
		return out
	}
	ctx, span := n.tracer.StartActivity(ctx, d.msg.Headers(), telemetry.ActivityAttempt{
		SagaID: task.SagaID, ActivityType: task.ActivityType, ScheduledEventID: task.ScheduledEventID, Attempt: attempt})
	defer span.End()
	hb := newHeartbeats(n, task, attempt, d.meta.Sequence.Stream)
	result, runErr := n.runActivity(ctx, act, task, attempt, details, hb)
	stoppedBy := hb.stoppedBy()
	// A heartbeat of an attempt that started without a record wrote one.
	recorded = recorded || hb.wroteRecord()
	if task.Options.HeartbeatTimeout > 0 && (stoppedBy == nil || errors.Is(stoppedBy, saga.ErrCanceled)) && ctx.Err() == nil {
		// The attempt returned: its silence while its outcome is recorded
		// (through an outage, say) is no dead node.
		n.markEnded(ctx, d, task, attempt)
	}
	if ctx.Err() != nil {
		// Canceled because the node stops now: not the activity's fault;
		// the task comes back after AckWait, and this attempt counts.
		return leave()
	}
	if runErr == nil {
		if err := n.store.Config().CheckPayload("result of activity "+task.ActivityType, result); err != nil {
			runErr = saga.Permanent(&saga.Error{Kind: saga.KindValidation, Message: "activity result", Cause: err})
		} else {
			return n.reportOutcome(ctx, d, task, attempt, recorded, attemptOutcome{result: result})
		}
	}
	switch {
	case errors.Is(stoppedBy, saga.ErrCanceled):
		d.logger().Info("activity stopped: the saga was canceled", "attempt", attempt, "err", runErr)
		return n.reportOutcome(ctx, d, task, attempt, recorded, attemptOutcome{canceled: true})
	case stoppedBy != nil:
		// Closed meanwhile, or given up by its heartbeat timeout for a
		// later attempt: this one has nothing to record.
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
		return n.reportOutcome(ctx, d, task, attempt, recorded, attemptOutcome{failure: activityFailure(task, attempt, cause)})
	}
	n.stats.activityRetries.Add(1)
	delay := retryBackoff(policy, attempt)
	d.logger().Warn("activity attempt failed; retrying", "attempt", attempt, "retry_in", delay, "err", runErr)
	if delay < retryTimerThreshold {
		// The same message comes back: the record (or, on the fast path,
		// the redelivery itself) says this attempt started.
		return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt), runErr)
	}
	if !recorded {
		// The attempt ran without a record (the fast path): with the task
		// gone until the timer fires, only a record says it started, so
		// that a task queued again meanwhile (a wake) runs the next one.
		rec := attemptRecord{Started: attempt, TaskSeq: d.meta.Sequence.Stream, Node: n.opts.NodeName, At: n.clock.Now()}
		if err := n.attempts.put(ctx, task.SagaID, task.ScheduledEventID, rec, 0, false); err != nil {
			return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt), runErr)
		}
	}
	timer := kv.Timer{Kind: timerRetry, SagaID: task.SagaID, EventID: task.ScheduledEventID, Attempt: attempt + 1, Due: n.clock.Now().Add(delay)}
	if err := n.timers.Load().Schedule(ctx, timer); err != nil {
		// No timer: wait on the message instead.
		d.logger().Warn("retry timer not created; retrying by redelivery", "err", err)
		return nakAfter(delay, "activity attempt "+strconv.Itoa(attempt), runErr)
	}
	return ack()
}

// giveBack records that a task the node returns unhandled started no
// attempt, where its redelivery would otherwise count one (see
// attemptStore).
func (h activityTasks) giveBack(ctx context.Context, d *delivery) {
	n := h.n
	task, err := n.store.DecodeTask(d.msg.Data())
	if err != nil || d.meta.NumDelivered != 1 || task.Attempt != 1 || !fastEligible(task.Options) {
		return
	}
	rec := attemptRecord{Started: 0, TaskSeq: d.meta.Sequence.Stream, Node: n.opts.NodeName, At: n.clock.Now()}
	if err := n.attempts.put(ctx, task.SagaID, task.ScheduledEventID, rec, 0, false); err != nil {
		d.logger().Warn("could not record a task given back; its next delivery counts an attempt", "err", err)
	}
}

// fastEligible reports whether the first attempt of an activity may start
// without a record: when a lost start costs at most one of several
// attempts and no timeout claims the activity.
func fastEligible(o stream.ActivityOptions) bool {
	return o.RetryPolicy.MaximumAttempts != 1 && o.ScheduleToStartTimeout == 0 && o.HeartbeatTimeout == 0
}

// markEnded records that an attempt ended and waits for its retry.
func (n *Node) markEnded(ctx context.Context, d *delivery, task stream.ActivityTask, attempt int) {
	err := n.attempts.update(ctx, task.SagaID, task.ScheduledEventID, func(rec *attemptRecord, found bool) (bool, error) {
		if !found || rec.Started != attempt || rec.GivenUp >= attempt {
			// A heartbeat timeout gave the attempt up: its replacement,
			// not this end, decides what comes next.
			return false, nil
		}
		rec.Ended = attempt
		return true, nil
	})
	if err != nil {
		d.logger().Warn("could not record the end of an attempt; its heartbeat timeout may start the retry early", "attempt", attempt, "err", err)
	}
}

// startAttempt decides which attempt, if any, the delivered task runs, and
// records its start when it must. When nothing is to run it returns the
// outcome for the message instead.
func (n *Node) startAttempt(ctx context.Context, d *delivery, task stream.ActivityTask) (attempt int, recorded bool, details stream.Payload, out outcome, run bool) {
	// The first delivery of a fresh task: no attempt started before, and
	// the task's activity is open unless the task is a late copy (which the
	// duplicate window and the one-task-per-subject rule stop before half
	// the window has passed).
	age := n.clock.Now().Sub(task.ScheduledAt)
	if d.meta.NumDelivered == 1 && task.Attempt == 1 && !task.Rederived && fastEligible(task.Options) && age < n.taskDuplicateWindow()/2 {
		return 1, false, nil, outcome{}, true
	}
	_, state, err := n.lookupActivity(ctx, task.SagaID, task.ScheduledEventID)
	if err != nil {
		return 0, false, nil, n.handlingFailed(ctx, d, "check activity state", err), false
	}
	if state == activityClosed {
		d.logger().Debug("activity already closed; not running it again", "delivery", d.meta.NumDelivered)
		n.attempts.remove(ctx, task.SagaID, task.ScheduledEventID)
		return 0, false, nil, ack(), false
	}
	rec, rev, found, err := n.attempts.get(ctx, task.SagaID, task.ScheduledEventID)
	if err != nil {
		return 0, false, nil, retryLater(d, "read attempts", err), false
	}
	if found && rec.TimedOut {
		return 0, false, nil, ack(), false // the timeout records the outcome
	}
	if found && rec.GivenUp > 0 && rec.GivenUp >= rec.Started && rec.TaskSeq == d.meta.Sequence.Stream {
		// This task's attempt was given up by its heartbeat timeout, and
		// the next attempt's task replaces it: it starts nothing more.
		d.logger().Debug("task of an attempt given up for dead; dropped", "attempt", rec.Started)
		return 0, false, nil, ack(), false
	}
	if state == activityCancelRequested {
		// The saga was canceled before this attempt could start.
		return 0, false, nil, n.reportOutcome(ctx, d, task, 0, found, attemptOutcome{canceled: true, attempts: rec.Started}), false
	}
	next, stale := nextAttempt(task, d.meta.Sequence.Stream, d.meta.NumDelivered, rec, found)
	if stale {
		d.logger().Debug("task for an attempt that started from another task; dropped", "attempt", task.Attempt, "started", rec.Started)
		return 0, false, nil, ack(), false
	}
	if max := task.Options.RetryPolicy.MaximumAttempts; max > 0 && next > max {
		// Earlier attempts never reported back: the nodes running them died.
		failure := &stream.Failure{Kind: string(saga.KindActivityExecution),
			Message: fmt.Sprintf("%d attempts started without reporting back (the nodes running them stopped)", next-1)}
		return 0, false, nil, n.reportOutcome(ctx, d, task, next-1, found, attemptOutcome{failure: activityFailure(task, next-1, failure)}), false
	}
	details = rec.Details
	rec = attemptRecord{Started: next, TaskSeq: d.meta.Sequence.Stream, Node: n.opts.NodeName, At: n.clock.Now(),
		Details: rec.Details, HeartbeatAt: rec.HeartbeatAt, Ended: rec.Ended, GivenUp: rec.GivenUp}
	if err := n.attempts.put(ctx, task.SagaID, task.ScheduledEventID, rec, rev, found); err != nil {
		// errRecordMoved: another delivery or the timeout moved first;
		// decide again on what it wrote.
		return 0, false, nil, nakAfter(redeliveryPolicy.Delay(1), "record attempt start", err), false
	}
	if hb := task.Options.HeartbeatTimeout; hb > 0 {
		t := kv.Timer{Kind: timerHeartbeat, SagaID: task.SagaID, EventID: task.ScheduledEventID, Attempt: next, Due: rec.At.Add(hb)}
		if err := n.timers.Load().Schedule(ctx, t); err != nil {
			// Without its timer, a dead node is found by the redelivery
			// after AckWait instead: later, not never.
			d.logger().Warn("heartbeat timeout not armed; a dead node is found after the ack wait instead", "attempt", next, "err", err)
		}
	}
	return next, true, details, outcome{}, true
}

// taskDuplicateWindow is the task stream's duplicate window as the server
// has it (an existing stream keeps its own).
func (n *Node) taskDuplicateWindow() time.Duration {
	if sc, ok := n.store.StreamConfigInForce(n.store.Config().TaskStream()); ok && sc.Duplicates > 0 {
		return sc.Duplicates
	}
	return n.store.Config().DuplicateWindow
}

// nextAttempt works out the attempt a delivered task runs from the record
// of attempts started; stale when the task is a leftover for an attempt
// that another task started already.
func nextAttempt(task stream.ActivityTask, taskSeq, deliveries uint64, rec attemptRecord, found bool) (next int, stale bool) {
	switch {
	case found && rec.TaskSeq == taskSeq:
		// This very message started attempts before (a retry by
		// redelivery, or a node that died running it).
		return rec.Started + 1, false
	case found && task.Attempt <= rec.Started:
		return 0, true
	case found:
		return task.Attempt, false
	case deliveries > 1 && task.Attempt == 1 && fastEligible(task.Options):
		// Delivered before, and that delivery may have started attempt 1
		// without a record (and without a trace: it would have left one
		// had it given the task back).
		return 2, false
	}
	return task.Attempt, false
}

// attemptOutcome is how an attempt ended: a result, a failure, or stopped
// by the saga's cancellation.
type attemptOutcome struct {
	result   stream.Payload
	failure  *stream.Failure
	canceled bool
	// attempts is recorded as the attempts started when no running
	// attempt reports the outcome (outcomeEvents' attempt is 0).
	attempts int
}

// reportOutcome records an attempt's outcome and says what becomes of the
// task. A result that cannot be stored (a permanent error: too large for
// the server, say) is recorded as a non-retryable failure instead of being
// retried forever.
func (n *Node) reportOutcome(ctx context.Context, d *delivery, task stream.ActivityTask, attempt int, recorded bool, out attemptOutcome) outcome {
	err := n.recordOutcome(ctx, d, task, attempt, out)
	// Only an outcome the server refuses as such (too large for its
	// stream) is replaced: an outage, however long, is waited out.
	if err != nil && errors.Is(err, stream.ErrTooLarge) && ctx.Err() == nil && !out.canceled {
		failure := out.failure
		if failure == nil {
			d.logger().Error("activity result cannot be recorded; recording the activity as failed", "err", err)
			failure = activityFailure(task, attempt, &stream.Failure{Kind: string(saga.KindValidation), NonRetryable: true,
				Message: "the activity's result could not be recorded: " + err.Error()})
		} else {
			d.logger().Error("activity failure cannot be recorded in full; recording its summary", "err", err)
		}
		err = n.recordOutcome(ctx, d, task, attempt, attemptOutcome{failure: failure.Bounded()})
		if errors.Is(err, stream.ErrTooLarge) {
			err = n.recordOutcome(ctx, d, task, attempt, attemptOutcome{failure: failure.Summary()})
		}
	}
	if err != nil {
		return n.handlingFailed(ctx, d, "record activity outcome", err)
	}
	if recorded {
		n.attempts.remove(ctx, task.SagaID, task.ScheduledEventID)
	}
	return ack()
}

// reportPolicy spaces the in-process retries of recording an outcome.
var reportPolicy = backoff.Policy{Initial: 50 * time.Millisecond, Max: 2 * time.Second}

// recordOutcome appends an activity's outcome (with the workflow's next
// decision when this node runs the workflow). An outcome in hand is not
// given up for a NATS outage, which would cost an attempt and could turn a
// success into a failure: transient errors are retried in-process, with a
// log line now and then, until the node stops. A draining node records the
// outcomes in hand; StopAndCancel gives up on them.
func (n *Node) recordOutcome(ctx context.Context, d *delivery, task stream.ActivityTask, attempt int, out attemptOutcome) error {
	inputs := func(st *stream.State) []stream.Event {
		a, open := st.OpenActivities[task.ScheduledEventID]
		if !open {
			return nil // recorded already, by an earlier attempt
		}
		return outcomeEvents(a, task.ScheduledEventID, attempt, n.opts.NodeName, out)
	}
	// The view is trusted when it has the scheduled event: an activity it
	// shows open may have closed since (the append then conflicts and the
	// saga is read again), but one it shows closed is closed.
	req := advanceRequest{sagaID: task.SagaID, inputs: inputs, needEvent: &task.ScheduledEventID}
	return n.retryInProcess(ctx, d, "record activity outcome", func(ctx context.Context) error {
		return n.confirmBehind(ctx, task.SagaID, n.advance(ctx, req))
	})
}

// outcomeEvents are the events that close an open activity (or
// compensation step) with an outcome: ActivityTaskStarted for the attempt
// that produced it (none when no attempt ran), then the result.
func outcomeEvents(a stream.OpenActivity, id uint64, attempt int, node string, out attemptOutcome) []stream.Event {
	var events []stream.Event
	attempts := attempt
	if attempt == 0 {
		attempts = out.attempts
	}
	if attempt > 0 {
		events = append(events, stream.Event{Type: stream.ActivityTaskStarted, Attrs: &stream.ActivityTaskStartedAttrs{
			ScheduledEventID: id, Attempt: attempt, Node: node}})
	}
	failure := out.failure
	if out.canceled && a.IsCompensation() {
		// No cancellation reaches a compensation; should one be asked
		// for, it is a failure of the step, for an operator to see.
		failure = &stream.Failure{Kind: string(saga.KindCancelled), Message: "compensation step canceled", NonRetryable: true}
	}
	var closing stream.Event
	switch {
	case a.IsCompensation() && failure == nil:
		closing = stream.Event{Type: stream.CompensationStepCompleted, Attrs: &stream.CompensationStepCompletedAttrs{
			ScheduledEventID: id, Step: a.Step, Result: out.result}}
	case a.IsCompensation():
		closing = stream.Event{Type: stream.CompensationStepFailed, Attrs: &stream.CompensationStepFailedAttrs{
			ScheduledEventID: id, Step: a.Step, Failure: failure, Attempts: attempts}}
	case out.canceled:
		closing = stream.Event{Type: stream.ActivityTaskCanceled, Attrs: &stream.ActivityTaskCanceledAttrs{ScheduledEventID: id, Attempts: attempts}}
	case failure == nil:
		closing = stream.Event{Type: stream.ActivityTaskCompleted, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: id, Result: out.result}}
	case failure.Kind == string(saga.KindTimeout):
		closing = stream.Event{Type: stream.ActivityTaskTimedOut, Attrs: &stream.ActivityTaskTimedOutAttrs{ScheduledEventID: id, Failure: failure, Attempts: attempts}}
	default:
		closing = stream.Event{Type: stream.ActivityTaskFailed, Attrs: &stream.ActivityTaskFailedAttrs{ScheduledEventID: id, Failure: failure, Attempts: attempts}}
	}
	return append(events, closing)
}

// retryInProcess runs op until it succeeds, fails for good, or the node
// stops, logging the first retry and every tenth.
func (n *Node) retryInProcess(ctx context.Context, d *delivery, what string, op func(context.Context) error) error {
	err := op(ctx)
	if err == nil || isHistoryProblem(err) || !stream.Transient(err) || ctx.Err() != nil {
		return err // the common case, without the retry's machinery
	}
	d.logger().Warn(what+" failed; retrying", "err", err)
	return backoff.Retry{
		Policy:    reportPolicy,
		Clock:     n.clock,
		Retryable: func(err error) bool { return !isHistoryProblem(err) && stream.Transient(err) },
		OnRetry: func(attempt int, delay time.Duration, err error) {
			if attempt == 1 || attempt%10 == 0 {
				d.logger().Warn(what+" failed; retrying", "err", err, "tries", attempt, "retry_in", delay.Round(time.Millisecond))
			}
		},
	}.Do(ctx, op)
}

// activityState is where a scheduled activity stands.
type activityState int

const (
	// activityClosed: it has its outcome, or the saga ended.
	activityClosed activityState = iota
	// activityOpen: it waits for its outcome.
	activityOpen
	// activityCancelRequested: it waits for its outcome, and the saga's
	// cancellation reaches it (see stream.State.CancelReaches).
	activityCancelRequested
)

// lookupActivity returns a scheduled activity of a saga, and where it
// stands, reading whatever the node has not seen of the history. A
// history that lacks the scheduled event, as the stream's leader confirms,
// is errNotInHistory.
func (n *Node) lookupActivity(ctx context.Context, sagaID string, scheduledEventID uint64) (stream.OpenActivity, activityState, error) {
	var a stream.OpenActivity
	state := activityClosed
	err := n.withState(ctx, sagaID, scheduledEventID, func(st *stream.State) {
		var open bool
		a, open = st.OpenActivities[scheduledEventID]
		switch {
		case !open || st.Status.Terminal():
			state = activityClosed
		case st.CancelReaches(scheduledEventID):
			state = activityCancelRequested
		default:
			state = activityOpen
		}
	})
	return a, state, err
}

// withState runs fn on the saga's state, read up to at least the given
// event, under the saga's lock; fn must not keep the state.
func (n *Node) withState(ctx context.Context, sagaID string, eventID uint64, fn func(*stream.State)) error {
	return n.withStateFresh(ctx, sagaID, eventID, readLatest, fn)
}

// withStateFresh is withState with the view read as fresh says: trustCache
// takes the node's view as it is when it holds the saga (after an advance
// of the node's own, say). A saga the node does not hold is folded from
// its latest snapshot when it has one, and stays out of the view.
func (n *Node) withStateFresh(ctx context.Context, sagaID string, eventID uint64, fresh freshness, fn func(*stream.State)) error {
	return backoff.Retry{Policy: reportPolicy, Clock: n.clock, MaxElapsed: behindPatience,
		Retryable: func(err error) bool { return !isHistoryProblem(err) && stream.Transient(err) },
	}.Do(ctx, func(ctx context.Context) error {
		e := n.cache.acquire(sagaID)
		defer n.cache.release(e, false)
		v := &e.view
		if !v.known() {
			if done, err := n.stateFromSnapshot(ctx, sagaID, eventID, fn); done {
				return err
			}
		}
		f := fresh
		fresh = readLatest // a retry reads what the view lacked
		if err := n.catchUp(ctx, v, nil, f); err != nil {
			v.reset()
			return err
		}
		if v.state.NextEventID <= eventID {
			have := v.state.LastSeq
			v.reset()
			return n.confirmBehind(ctx, sagaID, &behindError{have: have})
		}
		fn(v.state)
		return nil
	})
}

// behindPatience bounds how long the node waits, in-process, for a replica
// to show a history the stream's leader says exists.
const behindPatience = time.Minute

// behindError is errBehind with the stream sequence the read reached.
type behindError struct{ have uint64 }

func (e *behindError) Error() string {
	return fmt.Sprintf("%v (read up to stream sequence %d)", errBehind, e.have)
}

func (e *behindError) Is(target error) bool { return target == errBehind }

// errNotInHistory: the stream's leader confirms that the saga's history
// does not hold what a message refers to (a task no engine derived, or the
// saga of a foreign message).
var errNotInHistory = errors.New("the saga's history does not hold the event this message refers to")

// confirmBehind turns a read that lacks an event into a verdict: if the
// stream's leader holds nothing newer than what was read, the event does
// not exist (errNotInHistory, permanent); otherwise a replica lags and the
// error stays transient.
func (n *Node) confirmBehind(ctx context.Context, sagaID string, err error) error {
	var be *behindError
	if !errors.As(err, &be) {
		if errors.Is(err, errBehind) {
			return fmt.Errorf("%w: %w", stream.ErrUnavailable, err)
		}
		return err
	}
	leader, lerr := n.store.LastSeqOnLeader(ctx, sagaID)
	if seen, ok := seenSeq(ctx, sagaID); ok && lerr == nil && leader < seen {
		// The message being handled was read from the stream at a later
		// sequence: the one that answered is behind, not the history.
		return fmt.Errorf("%w: %w (the leader's last sequence %d is before %d, which this node has seen)", stream.ErrUnavailable, err, leader, seen)
	}
	if lerr == nil && leader <= be.have {
		return fmt.Errorf("%w (saga %s, stream sequence %d)", errNotInHistory, sagaID, leader)
	}
	return fmt.Errorf("%w: %w", stream.ErrUnavailable, err)
}

// notInHistoryConfirmations is how many deliveries of a message must find
// the event it refers to missing before it is set aside, notInHistoryRetry
// apart: long enough for a server that lags, or a leader just elected,
// to catch up.
const (
	notInHistoryConfirmations = 3
	notInHistoryRetry         = 2 * time.Second
)

type seenSeqKey struct{}

type seenSeqValue struct {
	sagaID string
	seq    uint64
}

// withSeenSeq records that the saga's history holds a commit at seq: the
// message being handled was read there.
func withSeenSeq(ctx context.Context, sagaID string, seq uint64) context.Context {
	return context.WithValue(ctx, seenSeqKey{}, seenSeqValue{sagaID, seq})
}

func seenSeq(ctx context.Context, sagaID string) (uint64, bool) {
	v, ok := ctx.Value(seenSeqKey{}).(seenSeqValue)
	return v.seq, ok && v.sagaID == sagaID
}

// isHistoryProblem reports an error about the saga's history itself: a
// message no engine wrote, or no trace of what a message refers to.
func isHistoryProblem(err error) bool {
	var ce *stream.CodecError
	return errors.As(err, &ce) && !errors.Is(err, stream.ErrUnsupported) || errors.Is(err, errNotInHistory)
}

// unsupportedDelay spaces the redeliveries of a message this node cannot
// read (a newer format, a larger limit), leaving it to nodes that can: it
// never goes to the dead-letter stream from a node that merely lacks the
// code for it.
func unsupportedDelay(d *delivery) time.Duration {
	return backoff.Policy{Initial: time.Second, Max: time.Minute}.Delay(int(d.meta.NumDelivered))
}

// abandonGrace is how long an activity may run past its timeout before
// the node stops waiting for it: the timeout itself, at most 5 seconds.
func abandonGrace(timeout time.Duration) time.Duration { return min(timeout, 5*time.Second) }

// runActivity runs one attempt with the activity's timeout. A panic is an
// error. An activity that ignores its context and runs on past the timeout
// is abandoned after abandonGrace: the attempt counts as timed out, and
// whatever the activity returns later is dropped. hb takes the attempt's
// heartbeats; it is stopped when runActivity returns.
func (n *Node) runActivity(ctx context.Context, act *saga.RegisteredActivity, task stream.ActivityTask, attempt int, details stream.Payload, hb *heartbeats) (stream.Payload, error) {
	n.stats.activitiesRun.Add(1)
	began := time.Now()
	timeout := task.Options.StartToCloseTimeout
	if timeout <= 0 {
		timeout = n.opts.DefaultActivityTimeout
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	actx, cancelCause := context.WithCancelCause(actx)
	defer cancelCause(nil)
	hb.cancel = cancelCause
	defer hb.stop()
	actx = saga.WithActivityInfo(actx, saga.ActivityInfo{
		SagaID: task.SagaID, ActivityType: task.ActivityType, ScheduledEventID: task.ScheduledEventID, Attempt: attempt,
	})
	actx = saga.WithHeartbeat(actx, hb, details)
	actx = saga.WithPayloadCodec(actx, n.opts.Codec)
	type result struct {
		value stream.Payload
		err   error
	}
	out := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				r.err = (&saga.Error{Kind: saga.KindActivityExecution, Message: fmt.Sprintf("activity panicked: %v", p)}).
					WithContext("stack", string(debug.Stack()))
			}
			out <- r
		}()
		r.value, r.err = act.Run(actx, task.Input)
	}()
	var r result
	select {
	case r = <-out:
	case <-actx.Done():
		select {
		case r = <-out:
		case <-time.After(abandonGrace(timeout)):
			n.log.Error("activity ignores its context; abandoned", "saga_id", task.SagaID, "activity_type", task.ActivityType, "attempt", attempt)
			r.err = context.Cause(actx)
		}
	}
	hb.stop()
	if r.err != nil && hb.stoppedBy() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		r.err = &saga.Error{Kind: saga.KindTimeout, Message: fmt.Sprintf("activity attempt timed out after %s", timeout), Cause: r.err}
	}
	n.observeActivity(ctx, task.ActivityType, time.Since(began), r.err, hb.stoppedBy())
	return r.value, r.err
}

// activityFailure wraps the error of an activity's last attempt as the
// workflow will see it: kind ActivityExecution (Timeout for a timeout),
// with the activity's own error as the cause.
func activityFailure(task stream.ActivityTask, attempts int, cause *stream.Failure) *stream.Failure {
	kind := saga.KindActivityExecution
	if cause.Kind == string(saga.KindTimeout) {
		kind = saga.KindTimeout
	}
	var msg string
	switch attempts {
	case 0:
		msg = fmt.Sprintf("activity %s could not be scheduled", task.ActivityType)
	case 1:
		msg = fmt.Sprintf("activity %s failed after 1 attempt", task.ActivityType)
	default:
		msg = fmt.Sprintf("activity %s failed after %d attempts", task.ActivityType, attempts)
	}
	return &stream.Failure{
		Kind:    string(kind),
		Message: msg,
		Context: map[string]string{
			"activity_type":      task.ActivityType,
			"scheduled_event_id": strconv.FormatUint(task.ScheduledEventID, 10),
			"attempts":           strconv.Itoa(attempts),
		},
		NonRetryable: cause.NonRetryable,
		Cause:        cause,
	}
}

func retryable(f *stream.Failure, p stream.RetryPolicy) bool {
	return !f.NonRetryable && !slices.Contains(p.NonRetryableErrorKinds, f.Kind)
}

// retryBackoff is the wait after the given failed attempt, as the
// activity's retry policy says: InitialInterval *
// BackoffCoefficient^(attempt-1), at most MaximumInterval. The policy is
// recorded with the activity, so it is applied as written, without jitter.
func retryBackoff(p stream.RetryPolicy, attempt int) time.Duration {
	d := float64(p.InitialInterval) * math.Pow(max(p.BackoffCoefficient, 1), float64(attempt-1))
	if p.MaximumInterval > 0 && d > float64(p.MaximumInterval) {
		return p.MaximumInterval
	}
	return time.Duration(d)
}
