package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func logger() *slog.Logger { return natstest.Logger() }

type env struct {
	t   *testing.T
	srv *natstest.Server
	cl  *saga.Client
	ctx context.Context
}

func newEnv(t *testing.T) *env { return newEnvOn(t, natstest.Start(t)) }

// newEnvOn is newEnv on a server of the caller's.
func newEnvOn(t *testing.T, srv *natstest.Server) *env {
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return &env{t: t, srv: srv, cl: cl, ctx: ctx}
}

func (e *env) node(opts worker.Options, defs ...saga.Definition) *worker.Node {
	e.t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		e.t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = logger()
	}
	if opts.AckWait == 0 {
		opts.AckWait = 2 * time.Second
	}
	if opts.DeadlockTimeout == 0 {
		// A loaded race-enabled run can stall a step for a second.
		opts.DeadlockTimeout = 5 * time.Second
	}
	n, err := worker.New(e.srv.Conn(), reg, opts)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := n.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

// run starts wf with in and waits for its end.
func run[In, Out any](e *env, wf *saga.Workflow[In, Out], id string, in In) (Out, error) {
	e.t.Helper()
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, in, saga.StartOptions{ID: id})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Get(e.ctx)
}

func (e *env) history(id string) []stream.Event {
	e.t.Helper()
	events, err := e.cl.History(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return events
}

func findAttrs[T any](events []stream.Event) []T {
	var out []T
	for _, ev := range events {
		if a, ok := ev.Attrs.(T); ok {
			out = append(out, a)
		}
	}
	return out
}

var fastRetry = saga.RetryPolicy{InitialInterval: 20 * time.Millisecond, BackoffCoefficient: 2, MaximumInterval: 100 * time.Millisecond, MaximumAttempts: 4}

func TestRetriesUntilSuccess(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	flaky := saga.NewActivity("flaky", func(ctx context.Context, n int) (string, error) {
		info, _ := saga.GetActivityInfo(ctx)
		if c := calls.Add(1); c < 3 {
			return "", fmt.Errorf("transient failure %d", c)
		}
		return fmt.Sprintf("ok on attempt %d", info.Attempt), nil
	}, saga.WithRetryPolicy(fastRetry))
	wf := saga.NewWorkflow("retrying", 1, func(ctx saga.Context, n int) (string, error) {
		return saga.ExecuteActivity(ctx, flaky, n).Get(ctx)
	})
	node := e.node(worker.Options{}, wf, flaky)
	out, err := run(e, wf, "retry-1", 1)
	if err != nil || out != "ok on attempt 3" {
		t.Fatalf("got %q, %v", out, err)
	}
	started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("retry-1"))
	if len(started) != 1 || started[0].Attempt != 3 {
		t.Fatalf("started events %+v: want one, for attempt 3", started)
	}
	if got := node.Stats().ActivityRetries; got != 2 {
		t.Fatalf("%d retries counted, want 2", got)
	}
}

func TestRetriesExhaustedFailTheActivity(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	broken := saga.NewActivity("broken", func(ctx context.Context, _ int) (int, error) {
		calls.Add(1)
		return 0, (&saga.Error{Kind: saga.KindActivityExecution, Message: "backend down"}).WithContext("backend", "inventory")
	}, saga.WithRetryPolicy(fastRetry))
	wf := saga.NewWorkflow("exhausting", 1, func(ctx saga.Context, _ int) (int, error) {
		_, err := saga.ExecuteActivity(ctx, broken, 1).Get(ctx)
		var se *saga.Error
		if !errors.As(err, &se) || !errors.Is(err, saga.KindActivityExecution) {
			return 0, fmt.Errorf("unexpected error shape: %v", err)
		}
		cause, ok := se.Cause.(*saga.Error)
		if !ok || cause.Message != "backend down" || cause.Context["backend"] != "inventory" || se.Context["attempts"] != "4" {
			return 0, fmt.Errorf("cause lost on the way through history: %+v / %+v", se, se.Cause)
		}
		return 0, err
	})
	e.node(worker.Options{}, wf, broken)
	_, err := run(e, wf, "exhaust-1", 1)
	if !errors.Is(err, saga.KindActivityExecution) || !strings.Contains(err.Error(), "failed after 4 attempts: backend down") {
		t.Fatalf("got %v", err)
	}
	if calls.Load() != 4 {
		t.Fatalf("%d attempts, want 4", calls.Load())
	}
	failed := findAttrs[*stream.ActivityTaskFailedAttrs](e.history("exhaust-1"))
	if len(failed) != 1 || failed[0].Attempts != 4 {
		t.Fatalf("failed events %+v", failed)
	}
}

func TestNonRetryableErrorsFailAtOnce(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	policy := fastRetry
	policy.NonRetryableErrorKinds = []string{string(saga.KindValidation)}
	validating := saga.NewActivity("validating", func(ctx context.Context, n int) (int, error) {
		calls.Add(1)
		if n < 0 {
			return 0, saga.NewError(saga.KindValidation, "negative amount")
		}
		return 0, saga.Permanent(errors.New("card declined"))
	}, saga.WithRetryPolicy(policy))
	wf := saga.NewWorkflow("validating-wf", 1, func(ctx saga.Context, n int) (int, error) {
		return saga.ExecuteActivity(ctx, validating, n).Get(ctx)
	})
	e.node(worker.Options{}, wf, validating)
	if _, err := run(e, wf, "nr-1", -1); err == nil || !strings.Contains(err.Error(), "negative amount") {
		t.Fatalf("got %v", err)
	}
	if _, err := run(e, wf, "nr-2", 1); err == nil || !strings.Contains(err.Error(), "card declined") {
		t.Fatalf("got %v", err)
	}
	if calls.Load() != 2 {
		t.Fatalf("%d calls, want 2 (no retries)", calls.Load())
	}
}

func TestActivityTimeoutIsRecordedAsTimedOut(t *testing.T) {
	e := newEnv(t)
	slow := saga.NewActivity("slow", func(ctx context.Context, _ int) (int, error) {
		<-ctx.Done()
		return 0, ctx.Err()
	}, saga.WithStartToCloseTimeout(50*time.Millisecond), saga.WithRetryPolicy(saga.RetryPolicy{MaximumAttempts: 2, InitialInterval: 10 * time.Millisecond}))
	wf := saga.NewWorkflow("timing-out", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, slow, 1).Get(ctx)
	})
	e.node(worker.Options{}, wf, slow)
	_, err := run(e, wf, "to-1", 1)
	if !errors.Is(err, saga.KindTimeout) || !strings.Contains(err.Error(), "timed out after 50ms") {
		t.Fatalf("got %v", err)
	}
	timedOut := findAttrs[*stream.ActivityTaskTimedOutAttrs](e.history("to-1"))
	if len(timedOut) != 1 || timedOut[0].Attempts != 2 {
		t.Fatalf("timed out events %+v", timedOut)
	}
}

func TestActivityPanicIsAnError(t *testing.T) {
	e := newEnv(t)
	panicky := saga.NewActivity("panicky", func(ctx context.Context, _ int) (int, error) {
		panic("activity bug")
	}, saga.WithRetryPolicy(saga.RetryPolicy{MaximumAttempts: 1}))
	wf := saga.NewWorkflow("panicky-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, panicky, 1).Get(ctx)
	})
	e.node(worker.Options{}, wf, panicky)
	_, err := run(e, wf, "panic-1", 1)
	var se *saga.Error
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "activity panicked: activity bug") {
		t.Fatalf("got %v", err)
	}
}

func TestParallelActivitiesAndDeterministicHelpers(t *testing.T) {
	e := newEnv(t)
	double := saga.NewActivity("double", func(ctx context.Context, n int) (int, error) { return 2 * n, nil })
	var sideEffects atomic.Int32
	wf := saga.NewWorkflow("fan-out", 1, func(ctx saga.Context, n int) (string, error) {
		token, err := saga.SideEffect(ctx, func() (string, error) {
			sideEffects.Add(1)
			return fmt.Sprintf("token-%d", time.Now().UnixNano()), nil
		})
		if err != nil {
			return "", err
		}
		var futures []*saga.Future[int]
		for i := range n {
			futures = append(futures, saga.ExecuteActivity(ctx, double, i))
		}
		sum := 0
		for _, f := range futures {
			v, err := f.Get(ctx)
			if err != nil {
				return "", err
			}
			sum += v
		}
		var fromThread int
		done := false
		ctx.Go(func(ctx saga.Context) {
			fromThread, _ = saga.ExecuteActivity(ctx, double, 100).Get(ctx)
			done = true
		})
		ctx.Await(func() bool { return done })
		v := ctx.GetVersion("add-thread-result", saga.DefaultVersion, 1)
		if v == 1 {
			sum += fromThread
		}
		return fmt.Sprintf("%s sum=%d", token[:6], sum), nil
	})
	// A cache of one saga forces replays from history mid-flight.
	node := e.node(worker.Options{CacheSize: 1}, wf, double)
	other := e.node(worker.Options{CacheSize: 1}, wf, double)
	var wg sync.WaitGroup
	results := make([]string, 6)
	errs := make([]error, 6)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = run(e, wf, fmt.Sprintf("fan-%d", i), 5) })
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || results[i] != "token- sum=220" {
			t.Fatalf("saga %d: %q %v", i, results[i], errs[i])
		}
	}
	if sideEffects.Load() != 6 {
		t.Fatalf("side effect ran %d times for 6 sagas", sideEffects.Load())
	}
	if node.Stats().Replays+other.Stats().Replays == 0 {
		t.Fatal("no saga was replayed from history; the test did not exercise replay")
	}
	markers := findAttrs[*stream.MarkerRecordedAttrs](e.history("fan-0"))
	if len(markers) != 2 || markers[0].Name != stream.MarkerSideEffect || markers[1].ChangeID != "add-thread-result" {
		t.Fatalf("markers %+v", markers)
	}
}

func TestWorkflowPanicAndDeadlockBlockTheSaga(t *testing.T) {
	e := newEnv(t)
	panics := saga.NewWorkflow("panics", 1, func(ctx saga.Context, _ int) (int, error) {
		panic("bug in workflow code")
	})
	gate := make(chan struct{})
	defer close(gate)
	deadlocks := saga.NewWorkflow("deadlocks", 1, func(ctx saga.Context, _ int) (int, error) {
		<-gate // a native channel in workflow code
		return 0, nil
	})
	e.node(worker.Options{DeadlockTimeout: 100 * time.Millisecond}, panics, deadlocks)
	for id, reason := range map[string]string{"p-1": stream.BlockedPanic, "d-1": stream.BlockedDeadlock} {
		wf := "panics"
		if reason == stream.BlockedDeadlock {
			wf = "deadlocks"
		}
		if _, err := e.cl.Start(e.ctx, wf, 0, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
		d, err := e.cl.Wait(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Status != saga.StatusBlocked || d.Blocked.Reason != reason {
			t.Fatalf("%s: %s %+v", id, d.Status, d.Blocked)
		}
	}
	d, _ := e.cl.Describe(e.ctx, "p-1")
	if !strings.Contains(d.Blocked.Message, "bug in workflow code") || !strings.Contains(d.Blocked.Message, "node_test.go") {
		t.Fatalf("panic message without value or stack: %s", d.Blocked.Message)
	}
}

func TestDecisionTooLargeBlocksTheSaga(t *testing.T) {
	e := newEnv(t)
	echo := saga.NewActivity("echo", func(ctx context.Context, s string) (int, error) { return len(s), nil })
	wf := saga.NewWorkflow("too-wide", 1, func(ctx saga.Context, _ int) (int, error) {
		big := strings.Repeat("z", 200<<10) // under the payload limit...
		var fs []*saga.Future[int]
		for range 8 { // ...but eight of them do not fit in one message
			fs = append(fs, saga.ExecuteActivity(ctx, echo, big))
		}
		for _, f := range fs {
			if _, err := f.Get(ctx); err != nil {
				return 0, err
			}
		}
		return 0, nil
	})
	oversized := saga.NewWorkflow("oversized-input", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, echo, strings.Repeat("z", 300<<10)).Get(ctx)
	})
	e.node(worker.Options{}, wf, oversized, echo)
	if _, err := e.cl.Start(e.ctx, "too-wide", 0, saga.StartOptions{ID: "wide-1"}); err != nil {
		t.Fatal(err)
	}
	d, err := e.cl.Wait(e.ctx, "wide-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedCommitTooLarge {
		t.Fatalf("%s %+v", d.Status, d.Blocked)
	}
	// A single payload over the limit is an error the workflow sees.
	_, err = run(e, oversized, "big-1", 0)
	if !errors.Is(err, stream.ErrTooLarge) && !strings.Contains(fmt.Sprint(err), "payload limit") {
		t.Fatalf("got %v", err)
	}
}

// Stop drains: an activity in progress finishes and is recorded before
// Stop returns. StopAndCancel does not wait for it.
func TestStopDrainsWorkInProgress(t *testing.T) {
	e := newEnv(t)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	slow := saga.NewActivity("slow-but-finishing", func(ctx context.Context, _ int) (int, error) {
		entered <- struct{}{}
		select {
		case <-release:
			return 7, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	wf := saga.NewWorkflow("draining", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, slow, 0).Get(ctx)
	})
	n := e.node(worker.Options{}, wf, slow)
	if _, err := e.cl.Start(e.ctx, "draining", 0, saga.StartOptions{ID: "drain-1"}); err != nil {
		t.Fatal(err)
	}
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- n.Stop(e.ctx) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while an activity was still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	d, err := e.cl.Describe(e.ctx, "drain-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.PendingActivities) != 0 || d.Events < 4 {
		t.Fatalf("activity result not recorded before Stop returned: %+v", d)
	}
	// Stopping again is harmless.
	if err := n.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(e.ctx); err == nil {
		t.Fatal("a stopped node started again")
	}
}

// Nodes start and stop many times over one stream set without losing or
// leaking anything, and sagas keep completing across them.
func TestStartStopRepeatedly(t *testing.T) {
	e := newEnv(t)
	step := saga.NewActivity("step", func(ctx context.Context, n int) (int, error) { return n + 1, nil })
	wf := saga.NewWorkflow("steps", 1, func(ctx saga.Context, n int) (int, error) {
		for range 3 {
			var err error
			if n, err = saga.ExecuteActivity(ctx, step, n).Get(ctx); err != nil {
				return 0, err
			}
		}
		return n, nil
	})
	for i := range 10 {
		reg := saga.NewRegistry()
		reg.MustRegister(wf, step)
		n, err := worker.New(e.srv.Conn(), reg, worker.Options{Logger: logger(), AckWait: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(e.ctx); err != nil {
			t.Fatal(err)
		}
		out, err := run(e, wf, fmt.Sprintf("ss-%d", i), i)
		if err != nil || out != i+3 {
			t.Fatalf("round %d: %d %v", i, out, err)
		}
		if i%2 == 0 {
			err = n.Stop(e.ctx)
		} else {
			err = n.StopAndCancel(e.ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestWakeValidatesAndReportsMissingSagas(t *testing.T) {
	e := newEnv(t)
	n := e.node(worker.Options{})
	if err := n.Wake(e.ctx, "bad.id"); !errors.Is(err, saga.ErrInvalidID) {
		t.Fatalf("got %v", err)
	}
	if err := n.Wake(e.ctx, "missing"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("waking a saga that does not exist: %v", err)
	}
}

func TestOptionsAreValidated(t *testing.T) {
	srv := natstest.Start(t)
	for _, opts := range []worker.Options{
		{Stream: stream.Config{Prefix: "bad.prefix"}},
		{AckWait: time.Millisecond},
		{WorkflowConcurrency: -1},
	} {
		if _, err := worker.New(srv.Conn(), saga.NewRegistry(), opts); !errors.Is(err, saga.KindConfiguration) {
			t.Errorf("%+v: got %v", opts, err)
		}
	}
}

// An activity that ignores its context is abandoned once its timeout (and
// a grace period) passes: the attempt times out instead of holding the
// task and a slot forever.
func TestActivityIgnoringItsContextIsAbandoned(t *testing.T) {
	e := newEnv(t)
	finished := make(chan struct{})
	release := make(chan struct{})
	stubborn := saga.NewActivity("stubborn", func(ctx context.Context, _ int) (int, error) {
		defer close(finished)
		<-release // ignores ctx on purpose
		return 1, nil
	}, saga.WithStartToCloseTimeout(50*time.Millisecond), saga.WithRetryPolicy(saga.RetryPolicy{MaximumAttempts: 1}))
	wf := saga.NewWorkflow("stubborn-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, stubborn, 0).Get(ctx)
	})
	e.node(worker.Options{}, wf, stubborn)
	// The activity never returns until released: the saga must end first.
	_, err := run(e, wf, "stubborn-1", 0)
	if !errors.Is(err, saga.KindTimeout) {
		t.Fatalf("got %v, want a timeout", err)
	}
	close(release)
	<-finished // let the abandoned goroutine end before the leak check
}

func TestInvalidActivityNameFailsTheCallNotTheSaga(t *testing.T) {
	e := newEnv(t)
	bad := saga.NewActivity[int, int]("bad.name", nil)
	wf := saga.NewWorkflow("calls-bad-name", 1, func(ctx saga.Context, _ int) (string, error) {
		_, err := saga.ExecuteActivity(ctx, bad, 1).Get(ctx)
		if !errors.Is(err, saga.ErrInvalidID) {
			return "", fmt.Errorf("unexpected: %v", err)
		}
		return "refused: " + err.Error(), nil
	})
	e.node(worker.Options{}, wf)
	out, err := run(e, wf, "bad-name-1", 0)
	if err != nil || !strings.Contains(out, `activity type "bad.name"`) {
		t.Fatalf("got %q, %v", out, err)
	}
	if n := len(findAttrs[*stream.ActivityTaskScheduledAttrs](e.history("bad-name-1"))); n != 0 {
		t.Fatalf("%d activities scheduled", n)
	}
}

// A node busy with long activities does not hold tasks it has not started:
// another node picks them up, and every activity runs exactly once.
func TestBusyNodeDoesNotHoardTasks(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	runs := map[string]int{}
	slow := saga.NewActivity("slow-job", func(ctx context.Context, id string) (string, error) {
		mu.Lock()
		runs[id]++
		mu.Unlock()
		select {
		case <-time.After(2500 * time.Millisecond): // longer than AckWait: kept alive by heartbeats
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return id, nil
	})
	wf := saga.NewWorkflow("slow-wf", 1, func(ctx saga.Context, id string) (string, error) {
		return saga.ExecuteActivity(ctx, slow, id).Get(ctx)
	})
	// Heartbeats every AckWait/3 leave a stall of over a second before a
	// redelivery would run a job twice.
	opts := worker.Options{ActivityConcurrency: 1, AckWait: 2 * time.Second}
	a := e.node(opts, wf, slow)
	b := e.node(opts, wf, slow)
	const sagas = 4
	var wg sync.WaitGroup
	for i := range sagas {
		wg.Go(func() {
			id := fmt.Sprintf("job-%d", i)
			if out, err := run(e, wf, id, id); err != nil || out != id {
				t.Errorf("%s: %q %v", id, out, err)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for id, n := range runs {
		if n != 1 {
			t.Errorf("%s ran %d times", id, n)
		}
	}
	if a.Stats().ActivitiesRun == 0 || b.Stats().ActivitiesRun == 0 {
		t.Errorf("one node did all the work: %d and %d", a.Stats().ActivitiesRun, b.Stats().ActivitiesRun)
	}
}

// Idle activity types do not hold the slots a busy type needs: waiting for
// a task takes no slot.
func TestIdleActivityTypesDoNotStarveBusyOnes(t *testing.T) {
	e := newEnv(t)
	busy := saga.NewActivity("busy", func(_ context.Context, n int) (int, error) { return n + 1, nil })
	var defs []saga.Definition
	for i := range 3 {
		defs = append(defs, saga.NewActivity(fmt.Sprintf("idle-%d", i), func(_ context.Context, n int) (int, error) { return n, nil }))
	}
	wf := saga.NewWorkflow("five-steps", 1, func(ctx saga.Context, n int) (int, error) {
		for range 5 {
			var err error
			if n, err = saga.ExecuteActivity(ctx, busy, n).Get(ctx); err != nil {
				return 0, err
			}
		}
		return n, nil
	})
	e.node(worker.Options{ActivityConcurrency: 1, WorkflowConcurrency: 1}, append(defs, wf, busy)...)
	// Starved, each step would wait out a long poll (5 s): 25 s in all.
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	r, err := saga.StartWorkflow(ctx, e.cl, wf, 0, saga.StartOptions{ID: "five-1"})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r.Get(ctx); err != nil || out != 5 {
		t.Fatalf("got %d, %v", out, err)
	}
}

// An error of any size is recorded, cut to bounds, instead of making its
// commit too large to store.
func TestHugeActivityErrorsAreCutToBounds(t *testing.T) {
	e := newEnv(t)
	loud := saga.NewActivity("loud", func(_ context.Context, _ int) (int, error) {
		return 0, saga.Permanent(errors.New(strings.Repeat("x", 2<<20)))
	})
	wf := saga.NewWorkflow("loud-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, loud, 0).Get(ctx)
	})
	e.node(worker.Options{}, wf, loud)
	_, err := run(e, wf, "loud-1", 0)
	if err == nil || !strings.Contains(err.Error(), "bytes cut") || len(err.Error()) > 64<<10 {
		t.Fatalf("got an error of %d bytes: %.200s", len(fmt.Sprint(err)), err)
	}
}
