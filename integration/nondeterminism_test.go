package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// reorderedOrder is the order workflow after a careless change: it takes
// payment before reserving inventory, without GetVersion.
var reorderedOrder = saga.NewWorkflow("order", 1, func(ctx saga.Context, in order.Input) (order.Output, error) {
	pay, err := saga.ExecuteActivity(ctx, order.ProcessPayment, order.PaymentInput{OrderID: in.OrderID, Amount: in.Amount}).Get(ctx)
	if err != nil {
		return order.Output{}, err
	}
	res, err := saga.ExecuteActivity(ctx, order.ReserveInventory, order.ReserveInput{OrderID: in.OrderID, Items: in.Items}).Get(ctx)
	if err != nil {
		return order.Output{}, err
	}
	return order.Output{OrderID: in.OrderID, ReservationID: res.ReservationID, PaymentID: pay.PaymentID}, nil
})

// Acceptance 5: code that issues a different command than its history is
// caught on replay with a message naming the event, the history and the
// code; the saga is blocked, not failed, and other sagas keep running.
// Deploying the original code again and waking the saga resumes it.
func TestChangedCodeBlocksSagaOnReplay(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)

	// Version one of the code schedules reserve-inventory; no activity
	// worker runs yet, so the saga waits there.
	v1 := c.node(worker.Options{NodeName: "v1"}, order.Workflow)
	if _, err := cl.Start(ctx, "order", orderInput("o-8"), saga.StartOptions{ID: "nd-1"}); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "reserve-inventory to be scheduled", func() bool {
		d, err := cl.Describe(ctx, "nd-1")
		return err == nil && len(d.PendingActivities) == 1
	})
	if err := v1.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// The changed code arrives with the activity workers. The result of
	// reserve-inventory makes it replay the history, and it disagrees.
	svc := order.NewService()
	defs := append(activitiesOnly(svc), reorderedOrder)
	v2 := c.node(worker.Options{NodeName: "v2"}, defs...)

	d, err := cl.Wait(ctx, "nd-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusBlocked {
		t.Fatalf("status %s, want blocked: %+v", d.Status, d)
	}
	want := "event 1: history has ActivityTaskScheduled reserve-inventory, code asked for ActivityTaskScheduled process-payment"
	if d.Blocked == nil || d.Blocked.Message != want || d.Blocked.Reason != "nondeterminism" || d.Blocked.AtEventID != 1 || d.Blocked.Node != "v2" {
		t.Fatalf("blocked %+v\nwant message %q", d.Blocked, want)
	}
	if d.Error == nil || d.Error.Kind != saga.KindReplay || d.Error.Message != want {
		t.Fatalf("error %+v", d.Error)
	}
	// The activity's result was recorded anyway: nothing is lost.
	events, err := cl.History(ctx, "nd-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := eventTypes(events); len(got) != 5 || got[3] != "ActivityTaskCompleted" || got[4] != "WorkflowExecutionBlocked" {
		t.Fatalf("history %v", got)
	}

	// New sagas run under the new code meanwhile.
	run, err := saga.StartWorkflow(ctx, cl, reorderedOrder, orderInput("o-9"), saga.StartOptions{ID: "nd-2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.Get(ctx); err != nil {
		t.Fatalf("a saga started under the new code: %v", err)
	}

	// Roll back: the changed code goes away, the original returns, and
	// waking the saga resumes it from its history.
	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	svc2 := order.NewService()
	fixed := c.node(worker.Options{NodeName: "fixed"}, svc2.Definitions()...)
	if err := fixed.Wake(ctx, "nd-1"); err != nil {
		t.Fatal(err)
	}
	d, err = cl.Wait(ctx, "nd-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("after wake: %v %+v", err, d)
	}
	if svc.Calls(order.StepReserveInventory)+svc2.Calls(order.StepReserveInventory) != 2 || svc2.Calls(order.StepReserveInventory) != 0 {
		t.Fatalf("reserve-inventory ran again for the woken saga")
	}
}

// A saga blocked by a bug and woken after the fix shows as running again
// even when the fixed code has nothing new to decide yet (it waits for an
// activity still open), and goes on when that activity reports.
func TestWokenSagaRunsAgainBeforeItsNextDecision(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)
	first := saga.NewActivity("first", func(_ context.Context, n int) (int, error) { return n, nil })
	second := saga.NewActivity("second", func(_ context.Context, n int) (int, error) { return n * 10, nil })
	pair := func(buggy bool) *saga.Workflow[int, int] {
		return saga.NewWorkflow("pair", 1, func(ctx saga.Context, n int) (int, error) {
			fa := saga.ExecuteActivity(ctx, first, n)
			fb := saga.ExecuteActivity(ctx, second, n)
			a, err := fa.Get(ctx)
			if err != nil {
				return 0, err
			}
			if buggy {
				panic("bug after the first result")
			}
			b, err := fb.Get(ctx)
			return a + b, err
		})
	}
	// The buggy code, and only the first activity: the second stays open.
	buggy := c.node(worker.Options{NodeName: "buggy"}, pair(true), first)
	if _, err := cl.Start(ctx, "pair", 4, saga.StartOptions{ID: "pair-1"}); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Wait(ctx, "pair-1")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != "panic" {
		t.Fatalf("%v %+v", err, d)
	}
	if err := buggy.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	fixed := c.node(worker.Options{NodeName: "fixed"}, pair(false), first)
	if err := fixed.Wake(ctx, "pair-1"); err != nil {
		t.Fatal(err)
	}
	if d, err = cl.Describe(ctx, "pair-1"); err != nil || d.Status != saga.StatusRunning || d.Blocked != nil {
		t.Fatalf("after wake: %v %+v", err, d)
	}
	events, err := cl.History(ctx, "pair-1")
	if err != nil {
		t.Fatal(err)
	}
	if last := events[len(events)-1]; last.Type != stream.WorkflowExecutionUnblocked {
		t.Fatalf("last event %s, want WorkflowExecutionUnblocked", last.Type)
	}
	// The second activity arrives; the saga completes.
	c.node(worker.Options{NodeName: "seconds"}, second)
	if d, err = cl.Wait(ctx, "pair-1"); err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("%v %+v", err, d)
	}
	var out int
	if err := stream.Unmarshal(d.Output, &out); err != nil || out != 44 {
		t.Fatalf("output %d %v", out, err)
	}
}
