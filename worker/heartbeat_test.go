package worker_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

var heartbeatRetry = saga.RetryPolicy{InitialInterval: 50 * time.Millisecond, MaximumAttempts: 3}

// An attempt that stays silent past its heartbeat timeout is given up,
// even on a live node: the next attempt runs, and the silent one, when it
// heartbeats again, has its context canceled and records nothing.
func TestSilentAttemptIsGivenUpAndStopsAtItsNextHeartbeat(t *testing.T) {
	e := newEnv(t)
	secondStarted := make(chan struct{})
	firstEnded := make(chan error, 1)
	job := saga.NewActivity("silent-job", func(ctx context.Context, _ int) (int, error) {
		info, _ := saga.GetActivityInfo(ctx)
		if info.Attempt > 1 {
			close(secondStarted)
			return info.Attempt, nil
		}
		if err := saga.Heartbeat(ctx, "started"); err != nil {
			return 0, err
		}
		select { // silent until the next attempt runs
		case <-secondStarted:
		case <-ctx.Done():
		}
		for ctx.Err() == nil { // then heartbeating again, until stopped
			_ = saga.Heartbeat(ctx, "late")
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		firstEnded <- context.Cause(ctx)
		return 0, ctx.Err()
	}, saga.WithHeartbeatTimeout(time.Second), saga.WithStartToCloseTimeout(time.Minute), saga.WithRetryPolicy(heartbeatRetry))
	wf := saga.NewWorkflow("silent-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
	})
	e.node(worker.Options{AckWait: 20 * time.Second}, wf, job)
	out, err := run(e, wf, "silent-1", 0)
	if err != nil || out != 2 {
		t.Fatalf("got %d, %v", out, err)
	}
	select {
	case cause := <-firstEnded:
		if cause == nil || errors.Is(cause, saga.ErrCanceled) || errors.Is(cause, context.DeadlineExceeded) {
			t.Fatalf("the given-up attempt stopped with %v, want its giving up", cause)
		}
	case <-e.ctx.Done():
		t.Fatal("the given-up attempt never stopped")
	}
	started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("silent-1"))
	if len(started) != 1 || started[0].Attempt != 2 {
		t.Fatalf("outcomes recorded for %+v, want attempt 2 alone", started)
	}
}

// An attempt that returned but whose outcome takes long to record (an
// outage) is not taken for a dead node by its heartbeat timeout: the
// activity runs once.
func TestSlowOutcomeRecordingIsNotTakenForADeadNode(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	job := saga.NewActivity("slow-report-job", func(ctx context.Context, _ int) (int, error) {
		calls.Add(1)
		return 7, nil
	}, saga.WithHeartbeatTimeout(time.Second), saga.WithStartToCloseTimeout(time.Minute), saga.WithRetryPolicy(heartbeatRetry))
	wf := saga.NewWorkflow("slow-report-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
	})
	js := jsOf(t, e)
	// The outcome's append fails as in an outage until the heartbeat
	// timer has fired and been handled (the node retries it in-process,
	// letting go of the saga between tries).
	var outageOver atomic.Bool
	hooks := &worker.Hooks{BeforeAppend: func(ctx context.Context, sagaID string, c *stream.Commit) error {
		if outageOver.Load() || len(findAttrs[*stream.ActivityTaskCompletedAttrs](c.Events)) == 0 {
			return nil
		}
		if handledTimers(ctx, js, 2) {
			outageOver.Store(true)
			return nil
		}
		return fmt.Errorf("%w: simulated outage", stream.ErrUnavailable)
	}}
	e.node(worker.Options{AckWait: 20 * time.Second, Hooks: hooks}, wf, job)
	out, err := run(e, wf, "slow-report-1", 0)
	if err != nil || out != 7 {
		t.Fatalf("got %d, %v", out, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("the activity ran %d times", n)
	}
}

// handledTimers reports whether the timers consumer has handled at least
// n messages (a timer's creation is one, its firing another).
func handledTimers(ctx context.Context, js jetstream.JetStream, n uint64) bool {
	c, err := js.Consumer(ctx, "KV_"+stream.Config{}.Defaults().TimersBucket(), "saga-timers")
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.AckFloor.Consumer >= n && info.NumAckPending == 0
}
