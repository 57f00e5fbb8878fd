package integration

import (
	"slices"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// Acceptance 1: the order saga completes, and its history holds the
// expected events in order with contiguous ids.
func TestOrderSagaCompletes(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	c.node(worker.Options{}, svc.Definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 20*time.Second)

	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("o-1"), saga.StartOptions{ID: "order-1"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := run.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := order.Output{OrderID: "o-1", ReservationID: "res-o-1", PaymentID: "pay-o-1", TrackingNumber: "trk-o-1"}
	if out != want {
		t.Fatalf("output %+v, want %+v", out, want)
	}

	events, err := cl.History(ctx, "order-1")
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := []stream.EventType{
		stream.WorkflowExecutionStarted,
		stream.ActivityTaskScheduled, stream.ActivityTaskStarted, stream.ActivityTaskCompleted,
		stream.MarkerRecorded, // the undo of reserve-inventory, registered
		stream.ActivityTaskScheduled, stream.ActivityTaskStarted, stream.ActivityTaskCompleted,
		stream.MarkerRecorded, // the undo of process-payment
		stream.ActivityTaskScheduled, stream.ActivityTaskStarted, stream.ActivityTaskCompleted,
		stream.WorkflowExecutionCompleted,
	}
	if got := eventTypes(events); !slices.Equal(got, wantTypes) {
		t.Fatalf("history\n got %v\nwant %v", got, wantTypes)
	}
	for i, e := range events {
		if e.ID != uint64(i) || e.SagaID != "order-1" {
			t.Fatalf("event %d has id %d saga %q", i, e.ID, e.SagaID)
		}
	}
	var activities []string
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok {
			activities = append(activities, a.ActivityType)
		}
	}
	if !slices.Equal(activities, []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder}) {
		t.Fatalf("activities in order %v", activities)
	}
	for _, step := range activities {
		if n := svc.Calls(step); n != 1 {
			t.Fatalf("%s ran %d times", step, n)
		}
	}
	// What one saga costs in JetStream: five commits on its history subject
	// (the start, the first decision, and each activity's result merged
	// with the decision that follows it) and no task: the node that
	// dispatches the start runs the workflow, so it decides at once rather
	// than through a workflow task, and the node that dispatches each
	// scheduling commit runs the activity itself (eager activities).
	st := c.store()
	commits, err := st.Read(ctx, "order-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != 5 {
		t.Fatalf("%d commits, want 5", len(commits))
	}
	tasks, err := st.JetStream().Stream(ctx, st.Config().TaskStream())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := tasks.Info(ctx); err != nil || info.State.LastSeq != 0 {
		t.Fatalf("task stream %+v, %v: want no task ever written", info.State, err)
	}

	d, err := cl.Describe(ctx, "order-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCompleted || d.Type != "order" || d.Version != 1 || d.Events != uint64(len(wantTypes)) || d.ClosedAt == nil {
		t.Fatalf("describe %+v", d)
	}
}
