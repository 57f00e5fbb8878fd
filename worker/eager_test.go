package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
	"github.com/jetsaga/saga/worker"
)

// taskStreamWrites is how many messages were ever stored in the task
// stream.
func taskStreamWrites(t *testing.T, e *env) uint64 {
	t.Helper()
	s, err := jsOf(t, e).Stream(e.ctx, stream.Config{}.Defaults().TaskStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// A node that runs both the workflow and its activities runs every
// activity, compensations included, on the node that dispatched the
// commit scheduling it: no task is ever written, and the sagas end as
// they do with tasks, compensating in reverse order.
func TestEagerActivitiesWriteNoTasks(t *testing.T) {
	e := newEnv(t)
	svc := order.NewService()
	n := e.node(worker.Options{}, svc.Definitions()...)
	for i := range 4 {
		id := fmt.Sprintf("eager-%d", i)
		out, err := run(e, order.Workflow, id, order.Input{OrderID: id, Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3})
		if err != nil || out.TrackingNumber == "" {
			t.Fatalf("%s: %+v, %v", id, out, err)
		}
	}
	_, err := run(e, order.Workflow, "eager-fail", order.Input{OrderID: "eager-fail", Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3, FailStep: order.StepShipOrder})
	if err == nil {
		t.Fatal("the failing order completed")
	}
	var undone []string
	for _, a := range findAttrs[*stream.CompensationStepCompletedAttrs](e.history("eager-fail")) {
		undone = append(undone, a.Step)
	}
	if want := []string{order.StepProcessPayment, order.StepReserveInventory}; fmt.Sprint(undone) != fmt.Sprint(want) {
		t.Fatalf("compensations %v, want %v", undone, want)
	}
	st := n.Stats()
	// 4 orders of 3 steps, and one of 3 steps and 2 undos.
	if st.ActivitiesRun != 17 || st.ActivitiesEager != 17 || st.TasksPublished != 0 {
		t.Fatalf("stats %+v, want 17 activities run, all eagerly, no task", st)
	}
	if w := taskStreamWrites(t, e); w != 0 {
		t.Fatalf("%d messages written to the task stream, want none", w)
	}
}

// With eager activities off, the same saga goes through tasks.
func TestEagerActivitiesCanBeDisabled(t *testing.T) {
	e := newEnv(t)
	n := e.node(worker.Options{DisableEagerActivities: true}, order.NewService().Definitions()...)
	if _, err := run(e, order.Workflow, "tasks-1", order.Input{OrderID: "tasks-1", Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3}); err != nil {
		t.Fatal(err)
	}
	if st := n.Stats(); st.ActivitiesEager != 0 || st.TasksPublished != 3 {
		t.Fatalf("stats %+v, want 3 tasks and no eager run", st)
	}
	if w := taskStreamWrites(t, e); w != 3 {
		t.Fatalf("%d task messages, want 3", w)
	}
}

// An eager attempt that fails is retried after its backoff, a short one
// by the commit's redelivery and a long one by a durable timer; the
// history records the attempt that succeeded, counted from the eager one.
func TestEagerAttemptRetries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		initial time.Duration
	}{{"short backoff", 50 * time.Millisecond}, {"timer backoff", time.Second}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var calls atomic.Int32
			job := saga.NewActivity("flaky-eager", func(ctx context.Context, _ int) (int, error) {
				info, _ := saga.GetActivityInfo(ctx)
				if calls.Add(1) < 3 {
					return 0, fmt.Errorf("attempt %d fails", info.Attempt)
				}
				return info.Attempt, nil
			}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: tc.initial, BackoffCoefficient: 1, MaximumAttempts: 5}))
			wf := saga.NewWorkflow("flaky-eager-wf", 1, func(ctx saga.Context, _ int) (int, error) {
				return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
			})
			n := e.node(worker.Options{}, wf, job)
			out, err := run(e, wf, "flaky-1", 0)
			if err != nil || out != 3 {
				t.Fatalf("got %d, %v; want attempt 3's result", out, err)
			}
			started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("flaky-1"))
			if len(started) != 1 || started[0].Attempt != 3 {
				t.Fatalf("recorded %+v, want attempt 3", started)
			}
			if st := n.Stats(); st.ActivitiesEager != 1 || st.ActivitiesRun != 3 {
				t.Fatalf("stats %+v, want the first attempt eager and 3 in all", st)
			}
		})
	}
}

// A node that stops while running an activity eagerly leaves the commit
// unacked; another node takes it over after AckWait and runs the next
// attempt from a task: the activity runs at least once, and its attempts
// are counted from the one that was cut off.
func TestEagerAttemptOfAStoppedNodeRunsAgain(t *testing.T) {
	e := newEnv(t)
	firstStarted := make(chan struct{})
	var calls atomic.Int32
	job := saga.NewActivity("cut-off", func(ctx context.Context, _ int) (int, error) {
		info, _ := saga.GetActivityInfo(ctx)
		if calls.Add(1) == 1 {
			close(firstStarted)
			<-ctx.Done() // until its node stops
			return 0, ctx.Err()
		}
		return info.Attempt, nil
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 50 * time.Millisecond, MaximumAttempts: 5}))
	wf := saga.NewWorkflow("cut-off-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
	})
	first := e.node(worker.Options{NodeName: "first"}, wf, job)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "cut-1"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-firstStarted:
	case <-e.ctx.Done():
		t.Fatal("the first attempt never started")
	}
	if st := first.Stats(); st.ActivitiesEager != 1 {
		t.Fatalf("first node stats %+v, want the attempt run eagerly", st)
	}
	stopCtx, cancel := context.WithCancel(e.ctx)
	cancel() // no drain: as if it died
	_ = first.Stop(stopCtx)
	second := e.node(worker.Options{NodeName: "second"}, wf, job)
	out, err := r.Get(e.ctx)
	if err != nil || out != 2 {
		t.Fatalf("got %d, %v; want attempt 2's result", out, err)
	}
	started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("cut-1"))
	if len(started) != 1 || started[0].Attempt != 2 || started[0].Node != "second" {
		t.Fatalf("recorded %+v, want attempt 2 on the second node", started)
	}
	if st := second.Stats(); st.TasksPublished != 1 {
		t.Fatalf("second node stats %+v, want the attempt queued as a task", st)
	}
}

// With every activity slot busy, a scheduled activity goes to the task
// stream rather than waiting for this node.
func TestEagerRunsOnlyOnFreeSlots(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	var running atomic.Int32
	job := saga.NewActivity("slot-hog", func(ctx context.Context, _ int) (int, error) {
		running.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return 1, nil
	})
	wf := saga.NewWorkflow("slot-hog-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
	})
	n := e.node(worker.Options{ActivityConcurrency: 1}, wf, job)
	var runs []*saga.Run[int]
	for i := range 2 {
		r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: fmt.Sprintf("hog-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	natstest.WaitFor(t, 10*time.Second, "one activity running and the other queued", func() bool {
		st := n.Stats()
		return running.Load() == 1 && st.TasksPublished == 1
	})
	close(release)
	for _, r := range runs {
		if _, err := r.Get(e.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := n.Stats(); st.ActivitiesEager != 1 || st.ActivitiesRun != 2 {
		t.Fatalf("stats %+v, want one eager run and one from a task", st)
	}
}

// An activity run eagerly has its span in the saga's trace, under the
// saga's root.
func TestEagerActivitySpans(t *testing.T) {
	e := newEnv(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithIDGenerator(telemetry.IDGenerator{}))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	n := e.node(worker.Options{TracerProvider: tp}, order.NewService().Definitions()...)
	const id = "eager-traced"
	if _, err := run(e, order.Workflow, id, order.Input{OrderID: id, Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3}); err != nil {
		t.Fatal(err)
	}
	if st := n.Stats(); st.ActivitiesEager != 3 {
		t.Fatalf("stats %+v, want 3 eager runs", st)
	}
	root := telemetry.SagaSpanContext("saga", id)
	// An attempt's span ends once its outcome is recorded: the last one
	// just after the saga ended.
	activitySpans := func() int {
		k := 0
		for _, s := range exp.GetSpans() {
			if strings.HasPrefix(s.Name, "activity ") {
				k++
			}
		}
		return k
	}
	natstest.WaitFor(t, 10*time.Second, "the three activity spans", func() bool { return activitySpans() >= 3 })
	var activities []string
	for _, s := range exp.GetSpans() {
		if !strings.HasPrefix(s.Name, "activity ") {
			continue
		}
		activities = append(activities, s.Name)
		if s.SpanContext.TraceID() != root.TraceID() || s.Parent.SpanID() != root.SpanID() {
			t.Errorf("span %q in trace %s under %s, want the saga's root", s.Name, s.SpanContext.TraceID(), s.Parent.SpanID())
		}
	}
	if len(activities) != 3 {
		t.Fatalf("activity spans %v, want 3", activities)
	}
}

// Activities scheduled in one commit and run eagerly settle on their own:
// a short retry is not held back by a sibling still running, and a long
// one waits out its backoff on its timer, whatever the siblings do.
func TestEagerRetriesDoNotWaitForSiblings(t *testing.T) {
	e := newEnv(t)
	var aStarts []time.Time
	var mu sync.Mutex
	bRetried := make(chan struct{})
	var bCalls atomic.Int32
	short := saga.RetryPolicy{InitialInterval: 100 * time.Millisecond, BackoffCoefficient: 1, MaximumAttempts: 3}
	long := saga.RetryPolicy{InitialInterval: 2 * time.Second, BackoffCoefficient: 1, MaximumAttempts: 3}
	a := saga.NewActivity("sibling-a", func(ctx context.Context, _ int) (int, error) {
		mu.Lock()
		aStarts = append(aStarts, time.Now())
		n := len(aStarts)
		mu.Unlock()
		if n == 1 {
			return 0, errors.New("a fails once")
		}
		return 1, nil
	}, saga.WithRetryPolicy(long))
	b := saga.NewActivity("sibling-b", func(ctx context.Context, _ int) (int, error) {
		if bCalls.Add(1) == 1 {
			return 0, errors.New("b fails once")
		}
		close(bRetried)
		return 2, nil
	}, saga.WithRetryPolicy(short))
	c := saga.NewActivity("sibling-c", func(ctx context.Context, _ int) (int, error) {
		select { // runs until b's retry started: a b held back by c never does
		case <-bRetried:
			return 3, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	wf := saga.NewWorkflow("siblings", 1, func(ctx saga.Context, _ int) (int, error) {
		fa := saga.ExecuteActivity(ctx, a, 0)
		fb := saga.ExecuteActivity(ctx, b, 0)
		fc := saga.ExecuteActivity(ctx, c, 0)
		sum := 0
		for _, f := range []*saga.Future[int]{fa, fb, fc} {
			v, err := f.Get(ctx)
			if err != nil {
				return 0, err
			}
			sum += v
		}
		return sum, nil
	})
	n := e.node(worker.Options{}, wf, a, b, c)
	out, err := run(e, wf, "siblings-1", 0)
	if err != nil || out != 6 {
		t.Fatalf("got %d, %v", out, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(aStarts) != 2 || aStarts[1].Sub(aStarts[0]) < long.InitialInterval {
		t.Fatalf("a's attempts started at %v: want 2, the second after its %s backoff", aStarts, long.InitialInterval)
	}
	if st := n.Stats(); st.ActivitiesEager != 3 {
		t.Fatalf("stats %+v, want the three first attempts eager", st)
	}
}

// A wake while an activity runs eagerly and heartbeats (its heartbeats
// wrote its attempt record) queues nothing: the commit that scheduled it
// still holds it, and a task queued then would run it a second time.
func TestWakeDuringAnEagerRunDoesNotRunItAgain(t *testing.T) {
	e := newEnv(t)
	release := make(chan struct{})
	started := make(chan struct{})
	var calls atomic.Int32
	job := saga.NewActivity("beating", func(ctx context.Context, _ int) (int, error) {
		if calls.Add(1) == 1 {
			close(started)
		}
		for {
			if err := saga.Heartbeat(ctx, "working"); err != nil {
				return 0, err
			}
			select {
			case <-release:
				info, _ := saga.GetActivityInfo(ctx)
				return info.Attempt, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	wf := saga.NewWorkflow("beating-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, job, 0).Get(ctx)
	})
	n := e.node(worker.Options{}, wf, job)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 0, saga.StartOptions{ID: "beating-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	// Its heartbeats record the attempt, naming the commit it runs on.
	kv, err := jsOf(t, e).KeyValue(e.ctx, stream.Config{}.Defaults().ActivitiesBucket())
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the attempt's record", func() bool {
		keys, err := kv.ListKeys(e.ctx)
		if err != nil {
			return false
		}
		for range keys.Keys() {
			return true
		}
		return false
	})
	if err := n.Wake(e.ctx, "beating-1"); err != nil {
		t.Fatal(err)
	}
	close(release)
	if out, err := r.Get(e.ctx); err != nil || out != 1 {
		t.Fatalf("got %d, %v; want attempt 1's result", out, err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("the activity ran %d times", got)
	}
	if st := n.Stats(); st.TasksPublished != 0 {
		t.Fatalf("stats %+v: the wake queued a task", st)
	}
}
