package worker_test

import (
	"context"
	"fmt"
	"strings"
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
