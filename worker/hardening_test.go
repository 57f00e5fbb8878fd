package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func jsOf(t *testing.T, e *env) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(e.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// A message redelivered after the duplicate window can publish its effects
// again once the window forgot the first ones, so a consumer's AckWait
// must stay under half of it: a node refuses its own option, and refuses
// to run on a shared consumer an operator set that high.
func TestAckWaitMustStayUnderHalfTheDuplicateWindow(t *testing.T) {
	e := newEnv(t)
	_, err := worker.New(e.srv.Conn(), saga.NewRegistry(), worker.Options{AckWait: 61 * time.Second})
	if !errors.Is(err, saga.KindConfiguration) || !strings.Contains(err.Error(), "duplicate window") {
		t.Fatalf("AckWait of 61s against a 2m window: %v", err)
	}

	step := saga.NewActivity("step", func(context.Context, int) (int, error) { return 1, nil })
	first := e.node(worker.Options{}, step)
	if err := first.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	js := jsOf(t, e)
	cfg := stream.Config{}.Defaults()
	cons, err := js.Consumer(e.ctx, cfg.TaskStream(), stream.ActivityTaskConsumer("step"))
	if err != nil {
		t.Fatal(err)
	}
	edited := cons.CachedInfo().Config
	edited.AckWait = 70 * time.Second
	if _, err := js.UpdateConsumer(e.ctx, cfg.TaskStream(), edited); err != nil {
		t.Fatal(err)
	}
	reg := saga.NewRegistry()
	reg.MustRegister(step)
	n, err := worker.New(e.srv.Conn(), reg, worker.Options{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	err = n.Start(e.ctx)
	if !errors.Is(err, saga.KindConfiguration) || !strings.Contains(err.Error(), "AckWait 1m10s") {
		t.Fatalf("start on a consumer with AckWait 70s: %v", err)
	}
}

// A retry backoff of a second or more waits on a durable timer, not on the
// task consumer: before, the failed task was naked with the delay and
// stayed pending on the consumer for the whole backoff, so that tasks in
// backoff filled MaxAckPending and stalled new tasks of their type.
func TestRetryBackoffWaitsOnATimer(t *testing.T) {
	bothActivityPaths(t, testRetryBackoffWaitsOnATimer)
}

// bothActivityPaths runs a test with activities run eagerly by the node
// dispatching their scheduling commit, and through tasks.
func bothActivityPaths(t *testing.T, test func(t *testing.T, opts worker.Options)) {
	t.Run("eager", func(t *testing.T) { test(t, worker.Options{}) })
	t.Run("tasks", func(t *testing.T) { test(t, worker.Options{DisableEagerActivities: true}) })
}

func testRetryBackoffWaitsOnATimer(t *testing.T, opts worker.Options) {
	e := newEnv(t)
	failed := make(chan struct{})
	var calls atomic.Int32
	flaky := saga.NewActivity("slow-retry", func(ctx context.Context, _ int) (int, error) {
		info, _ := saga.GetActivityInfo(ctx)
		if calls.Add(1) == 1 {
			defer close(failed)
			return 0, errors.New("try again later")
		}
		return info.Attempt, nil
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 2 * time.Second, MaximumAttempts: 3}))
	wf := saga.NewWorkflow("slow-retry-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, flaky, 0).Get(ctx)
	})
	e.node(opts, wf, flaky)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "slow-retry-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-failed
	js := jsOf(t, e)
	cfg := stream.Config{}.Defaults()
	cons, err := js.Consumer(e.ctx, cfg.TaskStream(), stream.ActivityTaskConsumer("slow-retry"))
	if err != nil {
		t.Fatal(err)
	}
	// Well within the 2s backoff: nothing pending or queued on the task
	// consumer, one entry in the timers bucket.
	natstest.WaitFor(t, 1500*time.Millisecond, "the failed task to leave the consumer", func() bool {
		info, err := cons.Info(e.ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
	// The attempt ran eagerly on the node that dispatched its scheduling
	// commit: that commit is not held for the backoff either.
	dispatch, err := js.Consumer(e.ctx, cfg.HistoryStream(0), stream.DispatcherConsumer)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	natstest.WaitFor(t, 1500*time.Millisecond, "the retry timer, and no commit held", func() bool {
		var ok bool
		keys, ok = armedTimers(e, js)
		info, err := dispatch.Info(e.ctx)
		return ok && len(keys) == 1 && err == nil && info.NumAckPending == 0
	})
	if !strings.HasPrefix(keys[0], "retry.slow-retry-1.1.2.") {
		t.Fatalf("timers during the backoff: %v", keys)
	}
	if out, err := r.Get(e.ctx); err != nil || out != 2 {
		t.Fatalf("got %d, %v", out, err)
	}
	started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("slow-retry-1"))
	if len(started) != 1 || started[0].Attempt != 2 || calls.Load() != 2 {
		t.Fatalf("started %+v after %d calls", started, calls.Load())
	}
}

// An activity that no node starts in time fails with a timeout instead of
// leaving its saga waiting forever, and a node that comes later does not
// run it.
func TestScheduleToStartTimeout(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	lonely := saga.NewActivity("lonely", func(context.Context, int) (int, error) {
		calls.Add(1)
		return 1, nil
	}, saga.WithScheduleToStartTimeout(time.Second))
	wf := saga.NewWorkflow("waits-for-lonely", 1, func(ctx saga.Context, _ int) (string, error) {
		_, err := saga.ExecuteActivity(ctx, lonely, 0).Get(ctx)
		if !errors.Is(err, saga.KindTimeout) {
			return "", err
		}
		return err.Error(), nil
	})
	e.node(worker.Options{}, wf) // nobody runs "lonely"
	out, err := run(e, wf, "lonely-1", 0)
	if err != nil || !strings.Contains(out, "did not start within its schedule-to-start timeout of 1s") {
		t.Fatalf("got %q, %v", out, err)
	}
	// The task still waits in its queue; a node that now runs the type
	// finds the activity closed and drops it without running it.
	late := e.node(worker.Options{NodeName: "late"}, lonely)
	js := jsOf(t, e)
	cfg := stream.Config{}.Defaults()
	natstest.WaitFor(t, 10*time.Second, "the late node to take the task", func() bool {
		s, err := js.Stream(e.ctx, cfg.TaskStream())
		return err == nil && s.CachedInfo().State.Msgs == 0
	})
	if calls.Load() != 0 || late.Stats().ActivitiesRun != 0 {
		t.Fatalf("the timed-out activity ran %d times", calls.Load())
	}
}

// A saga whose task was lost (here deleted by hand) waits until woken:
// wake queues the open activities' tasks again. Before, nothing derived a
// dropped task again.
func TestWakeQueuesLostTasksAgain(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	step := saga.NewActivity("lost-step", func(context.Context, int) (int, error) { return int(calls.Add(1)), nil })
	wf := saga.NewWorkflow("loses-a-task", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, step, 0).Get(ctx)
	})
	decider := e.node(worker.Options{NodeName: "decider"}, wf)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "lost-1"})
	if err != nil {
		t.Fatal(err)
	}
	js := jsOf(t, e)
	cfg := stream.Config{}.Defaults()
	tasks, err := js.Stream(e.ctx, cfg.TaskStream())
	if err != nil {
		t.Fatal(err)
	}
	subject := cfg.TaskSubject("lost-step", "lost-1", 1)
	var queued *jetstream.RawStreamMsg
	natstest.WaitFor(t, 5*time.Second, "the task to be queued", func() bool {
		queued, err = tasks.GetLastMsgForSubject(e.ctx, subject)
		return err == nil
	})
	if err := tasks.DeleteMsg(e.ctx, queued.Sequence); err != nil {
		t.Fatal(err)
	}
	e.node(worker.Options{NodeName: "runner"}, step)
	if err := decider.Wake(e.ctx, "lost-1"); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Get(e.ctx); err != nil || out != 1 {
		t.Fatalf("got %d, %v", out, err)
	}
}

// A task that refers to an event its saga's history does not hold (no
// engine derived it) is set aside within seconds, with the reason:
// before, it was redelivered for minutes and then dropped without a
// trace. Three deliveries must read the same, so that one reading from a
// lagging server is not taken for a verdict.
func TestForeignTaskIsSetAsideAtOnce(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	step := saga.NewActivity("guarded", func(context.Context, int) (int, error) { calls.Add(1); return 1, nil })
	e.node(worker.Options{}, step)
	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if _, err := st.PublishTask(e.ctx, stream.ActivityTask{SagaID: "ghost", ScheduledEventID: 5, ActivityType: "guarded", Attempt: 1}); err != nil {
		t.Fatal(err)
	}
	var dead []stream.DeadLetter
	natstest.WaitFor(t, 10*time.Second, "the task in the dead-letter stream", func() bool {
		dead, err = st.DeadLetters(e.ctx, 0)
		return err == nil && len(dead) == 1
	})
	if dl := dead[0]; !strings.Contains(dl.Reason, "history") || dl.Deliveries != 3 || dl.Subject != st.Config().TaskSubject("guarded", "ghost", 5) {
		t.Fatalf("dead letter %+v", dl)
	}
	if calls.Load() != 0 {
		t.Fatalf("the foreign task ran %d times", calls.Load())
	}
}

// Results of a fan-out racing on one saga from two nodes do not each cost
// a replay: before, every append lost after feeding a result to the
// workflow re-read and replayed the whole history, so a fan-out paid a
// replay per lost race, quadratic in its width.
func TestFanOutResultsDoNotReplayPerLostRace(t *testing.T) {
	e := newEnv(t)
	const width = 80
	release := make(chan struct{})
	var arrived atomic.Int32
	leaf := saga.NewActivity("leaf", func(ctx context.Context, i int) (int, error) {
		arrived.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return i, nil
	})
	wf := saga.NewWorkflow("fan-out", 1, func(ctx saga.Context, _ int) (int, error) {
		futures := make([]*saga.Future[int], width)
		for i := range futures {
			futures[i] = saga.ExecuteActivity(ctx, leaf, i)
		}
		sum := 0
		for _, f := range futures {
			v, err := f.Get(ctx)
			if err != nil {
				return 0, err
			}
			sum += v
		}
		return sum, nil
	})
	a := e.node(worker.Options{NodeName: "a"}, wf, leaf)
	b := e.node(worker.Options{NodeName: "b"}, wf, leaf)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "fan-1"})
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "every leaf to start", func() bool { return arrived.Load() == width })
	close(release) // every result at once, from both nodes
	if out, err := r.Get(e.ctx); err != nil || out != width*(width-1)/2 {
		t.Fatalf("got %d, %v", out, err)
	}
	sa, sb := a.Stats(), b.Stats()
	t.Logf("conflicts %d, replays %d, history reads %d", sa.Conflicts+sb.Conflicts, sa.Replays+sb.Replays, sa.HistoryReads+sb.HistoryReads)
	// One machine per node to begin with, and a rebuild per node after
	// the first race it lost in a burst (allow two bursts): not one per
	// race.
	if replays := sa.Replays + sb.Replays; replays > 6 {
		t.Fatalf("%d replays for %d racing results (%d conflicts)", replays, width, sa.Conflicts+sb.Conflicts)
	}
}

// armedTimers lists the keys of the timers armed now; ok false when the
// bucket cannot be read yet.
func armedTimers(e *env, js jetstream.JetStream) (keys []string, ok bool) {
	timers, err := js.KeyValue(e.ctx, stream.Config{}.Defaults().TimersBucket())
	if err != nil {
		return nil, false
	}
	keys, err = timers.Keys(e.ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, true
	}
	return keys, err == nil
}

// waitTimersSettled waits until no timer is armed any more and the timers
// consumer has been handed every marker.
func waitTimersSettled(t *testing.T, e *env, js jetstream.JetStream) {
	t.Helper()
	timersStream := "KV_" + stream.Config{}.Defaults().TimersBucket()
	natstest.WaitFor(t, 15*time.Second, "every timer to fire and reach the timers consumer", func() bool {
		if keys, ok := armedTimers(e, js); !ok || len(keys) > 0 {
			return false
		}
		s, err := js.Stream(e.ctx, timersStream)
		if err != nil {
			return false
		}
		c, err := js.Consumer(e.ctx, timersStream, "saga-timers")
		if err != nil {
			return false
		}
		info, err := c.Info(e.ctx)
		return err == nil && info.Delivered.Stream >= s.CachedInfo().State.LastSeq
	})
}

// A wake while an activity waits out a retry backoff queues the next
// attempt, not the one that already ran: the first attempt ran without a
// record (its first delivery), so the record is written when its retry
// goes to a timer. Before, the wake queued attempt 1 again, and with the
// timer's attempt 2 the activity ran three times under MaximumAttempts 2.
func TestWakeDuringRetryBackoffDoesNotRerunAnAttempt(t *testing.T) {
	bothActivityPaths(t, testWakeDuringRetryBackoffDoesNotRerunAnAttempt)
}

func testWakeDuringRetryBackoffDoesNotRerunAnAttempt(t *testing.T, opts worker.Options) {
	e := newEnv(t)
	var calls atomic.Int32
	failed := make(chan struct{}, 4)
	flaky := saga.NewActivity("backoff-wake", func(context.Context, int) (int, error) {
		calls.Add(1)
		failed <- struct{}{}
		return 0, errors.New("down")
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 2 * time.Second, MaximumAttempts: 2}))
	wf := saga.NewWorkflow("backoff-wake-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, flaky, 0).Get(ctx)
	})
	n := e.node(opts, wf, flaky)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "backoff-wake-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-failed
	js := jsOf(t, e)
	natstest.WaitFor(t, 5*time.Second, "the retry to wait on its timer", func() bool {
		keys, ok := armedTimers(e, js)
		return ok && len(keys) == 1
	})
	if err := n.Wake(e.ctx, "backoff-wake-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(e.ctx); !errors.Is(err, saga.KindActivityExecution) {
		t.Fatalf("got %v, want the activity's failure", err)
	}
	waitTimersSettled(t, e, js)
	if got := calls.Load(); got != 2 {
		t.Fatalf("the activity ran %d times under MaximumAttempts 2", got)
	}
}

// A retry timer that fires while a leftover task (for an attempt that
// already ran) sits on the activity's subject does not take the leftover
// for the retry: it fires again once the leftover is gone. Before, it was
// acked, the leftover was then dropped unrun, and the saga waited forever.
func TestRetryTimerIsNotSwallowedByALeftoverTask(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	failed := make(chan struct{}, 4)
	flaky := saga.NewActivity("leftover", func(context.Context, int) (int, error) {
		if calls.Add(1) < 3 {
			failed <- struct{}{}
			return 0, errors.New("down")
		}
		return 7, nil
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 1, MaximumAttempts: 5}))
	wf := saga.NewWorkflow("leftover-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, flaky, 0).Get(ctx)
	})
	e.node(worker.Options{NodeName: "decider"}, wf)
	runner := e.node(worker.Options{NodeName: "runner"}, flaky)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "leftover-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-failed
	<-failed // attempt 2 failed; its retry (attempt 3) waits on a timer
	if err := runner.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	// A leftover for attempt 1, as a late dispatch or a wake could queue.
	if _, err := st.PublishTask(e.ctx, stream.ActivityTask{SagaID: "leftover-1", ScheduledEventID: 1, ActivityType: "leftover", Attempt: 1, Rederived: true}); err != nil {
		t.Fatal(err)
	}
	// The timer fires while the leftover is there and no node runs the type.
	waitTimersSettled(t, e, jsOf(t, e))
	e.node(worker.Options{NodeName: "runner-again"}, flaky)
	if out, err := r.Get(e.ctx); err != nil || out != 7 {
		t.Fatalf("got %d, %v", out, err)
	}
	if started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("leftover-1")); len(started) != 1 || started[0].Attempt != 3 {
		t.Fatalf("started %+v", started)
	}
}

// A node asking for a longer timer marker TTL than the existing bucket
// keeps follows the bucket: before, it started but could arm no timer, and
// a saga with a schedule-to-start timeout never got its tasks.
func TestTimersFollowTheBucketInForce(t *testing.T) {
	e := newEnv(t)
	first := e.node(worker.Options{NodeName: "first", TimerMarkerTTL: time.Hour})
	if err := first.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	timed := saga.NewActivity("timed", func(context.Context, int) (int, error) { return 1, nil }, saga.WithScheduleToStartTimeout(30*time.Second))
	other := saga.NewActivity("untimed", func(context.Context, int) (int, error) { return 2, nil })
	wf := saga.NewWorkflow("two-kinds", 1, func(ctx saga.Context, _ int) (int, error) {
		a, b := saga.ExecuteActivity(ctx, timed, 0), saga.ExecuteActivity(ctx, other, 0)
		x, err := a.Get(ctx)
		if err != nil {
			return 0, err
		}
		y, err := b.Get(ctx)
		return x + y, err
	})
	e.node(worker.Options{NodeName: "second"}, wf, timed, other) // default: 24h
	if out, err := run(e, wf, "two-kinds-1", 0); err != nil || out != 3 {
		t.Fatalf("got %d, %v", out, err)
	}
	// The schedule-to-start timeout was armed (it is due in 30 s).
	if keys, ok := armedTimers(e, jsOf(t, e)); !ok || len(keys) != 1 || !strings.HasPrefix(keys[0], "s2s.two-kinds-1.") {
		t.Fatalf("timers: %v (read: %v)", keys, ok)
	}
}

// A result that the server refuses for good (here: an append refused as
// too large) is recorded as the activity's non-retryable failure, not
// retried forever.
func TestResultTheServerRefusesIsRecordedAsAFailure(t *testing.T) {
	e := newEnv(t)
	var refused atomic.Int32
	hooks := &worker.Hooks{BeforeAppend: func(_ context.Context, _ string, c *stream.Commit) error {
		for _, ev := range c.Events {
			if ev.Type == stream.ActivityTaskCompleted && refused.Add(1) == 1 {
				return fmt.Errorf("%w: the server refused the commit", stream.ErrTooLarge)
			}
		}
		return nil
	}}
	step := saga.NewActivity("refused-result", func(context.Context, int) (int, error) { return 1, nil })
	wf := saga.NewWorkflow("refused-result-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, step, 0).Get(ctx)
	})
	e.node(worker.Options{Hooks: hooks}, wf, step)
	_, err := run(e, wf, "refused-1", 0)
	if !errors.Is(err, saga.KindValidation) || !strings.Contains(err.Error(), "could not be recorded") {
		t.Fatalf("got %v", err)
	}
	failed := findAttrs[*stream.ActivityTaskFailedAttrs](e.history("refused-1"))
	if len(failed) != 1 || !failed[0].Failure.NonRetryable {
		t.Fatalf("failed events %+v", failed)
	}
}
