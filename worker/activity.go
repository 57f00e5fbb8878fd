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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
)

// handleTask runs one attempt of an activity and records its outcome.
//
// The attempt number is the delivery count of the task message, so it
// survives node crashes. A retryable failure is naked with the retry
// policy's backoff; a result or final failure is appended to the saga
// (with the workflow's next decision when this node runs the workflow)
// before the task is acknowledged. A redelivered task first checks the
// history: if the result is there, the activity does not run again.
func (n *Node) handleTask(ctx context.Context, msg jetstream.Msg) {
	meta, err := metadata(msg)
	if err != nil {
		n.log.Error("task delivery without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	task, err := n.store.DecodeTask(msg.Data())
	if err != nil {
		n.log.Error("undecodable activity task; dropped", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("undecodable task")
		return
	}
	log := n.log.With("saga_id", task.SagaID, "activity_type", task.ActivityType, "scheduled_event_id", task.ScheduledEventID)
	act, ok := n.reg.Activity(task.ActivityType)
	if !ok || msg.Subject() != n.opts.Stream.TaskSubject(task.ActivityType) {
		log.Error("task for an activity this consumer does not serve; dropped", "subject", msg.Subject())
		_ = msg.TermWithReason("task does not match its subject")
		return
	}
	attempt := int(meta.NumDelivered)
	policy := task.Options.RetryPolicy
	stopBeat := n.keepAlive(msg)
	defer stopBeat()

	// A task delivered before may have reported already, and one published
	// long ago may be a republication the duplicate window no longer
	// caught: in both cases look at the history first.
	if attempt > 1 || time.Since(task.ScheduledAt) > n.opts.Stream.DuplicateWindow/2 {
		open, err := n.activityOpen(ctx, task)
		switch {
		case err != nil && n.unrecordable(msg, meta, log, err):
			return
		case err != nil:
			n.retryLater(msg, meta, log, "check activity state", err)
			return
		case !open:
			log.Debug("activity already reported; not running it again", "delivery", attempt)
			_ = msg.Ack()
			return
		}
	}
	if policy.MaximumAttempts > 0 && attempt > policy.MaximumAttempts {
		// Earlier attempts never reported back: the nodes running them died.
		failure := &stream.Failure{Kind: string(saga.KindActivityExecution),
			Message: fmt.Sprintf("%d attempts started without reporting back (the nodes running them stopped)", attempt-1)}
		n.report(ctx, msg, meta, log, task, attempt-1, nil, activityFailure(task, attempt-1, failure))
		return
	}
	if ctx.Err() != nil {
		return // stopping: another node takes the task
	}

	result, runErr := n.runActivity(ctx, act, task, attempt)
	if runErr == nil {
		if err := n.opts.Stream.CheckPayload("result of activity "+task.ActivityType, result); err != nil {
			runErr = saga.Permanent(&saga.Error{Kind: saga.KindValidation, Message: "activity result", Cause: err})
		} else {
			n.report(ctx, msg, meta, log, task, attempt, result, nil)
			return
		}
	}
	if ctx.Err() != nil {
		// Canceled because the node is stopping: not the activity's fault.
		return
	}
	cause := saga.ToFailure(runErr, saga.KindActivityExecution).Bounded()
	if retryable(cause, policy) && attempt < policy.MaximumAttempts {
		delay := backoff(policy, attempt)
		log.Warn("activity attempt failed; retrying", "attempt", attempt, "retry_in", delay, "err", runErr)
		n.stats.activityRetries.Add(1)
		_ = msg.NakWithDelay(delay)
		return
	}
	log.Warn("activity failed", "attempt", attempt, "err", runErr)
	n.report(ctx, msg, meta, log, task, attempt, nil, activityFailure(task, attempt, cause))
}

// keepAlive extends the message's ack deadline every AckWait/3 until the
// returned function is called, so that JetStream does not hand a message
// the node is working on to another node.
func (n *Node) keepAlive(msg jetstream.Msg) (stop func()) {
	stopped := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(n.opts.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-stopped:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() {
		close(stopped)
		<-done
	}
}

// abandonGrace is how long an activity may run past its timeout before
// the node stops waiting for it: the timeout itself, at most 5 seconds.
func abandonGrace(timeout time.Duration) time.Duration { return min(timeout, 5*time.Second) }

// runActivity runs one attempt with the activity's timeout. A panic is an
// error. An activity that ignores its context and runs on past the timeout
// is abandoned after abandonGrace: the attempt counts as timed out, and
// whatever the activity returns later is dropped.
func (n *Node) runActivity(ctx context.Context, act *saga.RegisteredActivity, task stream.ActivityTask, attempt int) (stream.Payload, error) {
	n.stats.activitiesRun.Add(1)
	timeout := task.Options.StartToCloseTimeout
	if timeout <= 0 {
		timeout = n.opts.DefaultActivityTimeout
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	actx = saga.WithActivityInfo(actx, saga.ActivityInfo{
		SagaID: task.SagaID, ActivityType: task.ActivityType, ScheduledEventID: task.ScheduledEventID, Attempt: attempt,
	})
	type outcome struct {
		result stream.Payload
		err    error
	}
	out := make(chan outcome, 1)
	go func() {
		var o outcome
		defer func() {
			if r := recover(); r != nil {
				o.err = (&saga.Error{Kind: saga.KindActivityExecution, Message: fmt.Sprintf("activity panicked: %v", r)}).
					WithContext("stack", string(debug.Stack()))
			}
			out <- o
		}()
		o.result, o.err = act.Run(actx, task.Input)
	}()
	var o outcome
	select {
	case o = <-out:
	case <-actx.Done():
		select {
		case o = <-out:
		case <-time.After(abandonGrace(timeout)):
			n.log.Error("activity ignores its context; abandoned", "saga_id", task.SagaID, "activity_type", task.ActivityType, "attempt", attempt)
			o.err = context.DeadlineExceeded
		}
	}
	if o.err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		o.err = &saga.Error{Kind: saga.KindTimeout, Message: fmt.Sprintf("activity attempt timed out after %s", timeout), Cause: o.err}
	}
	return o.result, o.err
}

// behindPatience bounds how long the node retries, in-process, a task
// whose saga history does not (yet) hold the scheduled activity: a replica
// lagging that long, or a task no engine derived.
const behindPatience = 5 * time.Minute

// unrecordable handles the errors after which the task's outcome can never
// be recorded: a history holding a message the engine did not write (the
// task is dropped), and a history that does not schedule the activity
// after behindPatience (the task comes back later, a few times, then is
// dropped). It reports whether it dealt with the task.
func (n *Node) unrecordable(msg jetstream.Msg, meta *jetstream.MsgMetadata, log *slog.Logger, err error) bool {
	var ce *stream.CodecError
	switch {
	case errors.As(err, &ce):
		log.Error("the saga's history is unreadable; task dropped", "err", err)
		_ = msg.TermWithReason("history unreadable")
		return true
	case !errors.Is(err, errBehind):
		return false
	case meta.NumDelivered >= 10:
		log.Error("the saga's history does not schedule this activity; task dropped", "err", err)
		_ = msg.TermWithReason("activity not in history")
		return true
	}
	log.Warn("the saga's history does not show the activity yet; will retry", "err", err)
	_ = msg.NakWithDelay(30 * time.Second)
	return true
}

// report appends an activity's outcome, then acknowledges the task. It
// retries in-process until it succeeds or the node stops (the task kept
// alive meanwhile): an outcome in hand is not given up for a NATS outage,
// which would cost an attempt and could turn a success into a failure. A
// draining node records the outcomes in hand; StopAndCancel gives up on
// them.
func (n *Node) report(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, log *slog.Logger, task stream.ActivityTask, attempt int, result stream.Payload, failure *stream.Failure) {
	inputs := func(st *stream.State) []stream.Event {
		if _, open := st.OpenActivities[task.ScheduledEventID]; !open {
			return nil // recorded already, by an earlier attempt
		}
		events := []stream.Event{{Type: stream.ActivityTaskStarted, Attrs: &stream.ActivityTaskStartedAttrs{
			ScheduledEventID: task.ScheduledEventID, Attempt: attempt, Node: n.opts.NodeName}}}
		switch {
		case failure == nil:
			events = append(events, stream.Event{Type: stream.ActivityTaskCompleted,
				Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: task.ScheduledEventID, Result: result}})
		case failure.Kind == string(saga.KindTimeout):
			events = append(events, stream.Event{Type: stream.ActivityTaskTimedOut,
				Attrs: &stream.ActivityTaskTimedOutAttrs{ScheduledEventID: task.ScheduledEventID, Failure: failure, Attempts: attempt}})
		default:
			events = append(events, stream.Event{Type: stream.ActivityTaskFailed,
				Attrs: &stream.ActivityTaskFailedAttrs{ScheduledEventID: task.ScheduledEventID, Failure: failure, Attempts: attempt}})
		}
		return events
	}
	// The cache is trusted when it has the scheduled event: an activity it
	// shows open may have closed since (the append then conflicts and the
	// saga is read again), but one it shows closed is closed.
	req := advanceRequest{sagaID: task.SagaID, inputs: inputs, needEvent: &task.ScheduledEventID}
	err := retryFor(ctx, func() error { return n.advance(ctx, req) })
	switch {
	case err == nil:
		_ = msg.Ack()
	case n.unrecordable(msg, meta, log, err):
	default:
		// Not recorded and the node is stopping: the activity runs again on
		// redelivery, which is what at-least-once means.
		n.retryLater(msg, meta, log, "record activity outcome", err)
	}
}

// retryFor calls f until it succeeds, ctx ends, or it keeps failing for
// lack of history (errBehind) for behindPatience, or with an unreadable
// history, backing off from 50ms to 2s; it returns the last error.
func retryFor(ctx context.Context, f func() error) error {
	wait := 50 * time.Millisecond
	start := time.Now()
	for {
		err := f()
		var ce *stream.CodecError
		if err == nil || ctx.Err() != nil || errors.As(err, &ce) ||
			errors.Is(err, errBehind) && time.Since(start) > behindPatience {
			return err
		}
		if sleepCtx(ctx, wait) != nil {
			return err
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// activityOpen reports whether the scheduled activity still waits for its
// result, reading whatever the node has not seen of the history.
func (n *Node) activityOpen(ctx context.Context, task stream.ActivityTask) (bool, error) {
	var open bool
	err := retryFor(ctx, func() error {
		e := n.cache.acquire(task.SagaID)
		defer n.cache.release(e, false)
		if err := n.catchUp(ctx, e, nil, readLatest); err != nil {
			e.reset()
			return err
		}
		if e.state.NextEventID <= task.ScheduledEventID {
			e.reset()
			return errBehind
		}
		_, open = e.state.OpenActivities[task.ScheduledEventID]
		open = open && !e.state.Status.Terminal()
		return nil
	})
	return open, err
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

// backoff is the wait after the given failed attempt:
// InitialInterval * BackoffCoefficient^(attempt-1), at most MaximumInterval.
func backoff(p stream.RetryPolicy, attempt int) time.Duration {
	d := float64(p.InitialInterval) * math.Pow(max(p.BackoffCoefficient, 1), float64(attempt-1))
	if p.MaximumInterval > 0 && d > float64(p.MaximumInterval) {
		return p.MaximumInterval
	}
	return time.Duration(d)
}
