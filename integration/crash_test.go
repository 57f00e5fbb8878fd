package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// activitiesOnly drops the workflow from an order service's definitions:
// a node that only runs activities, as a separate service would.
func activitiesOnly(svc *order.Service) []saga.Definition {
	defs := svc.Definitions()
	return defs[1:]
}

// schedules reports whether a commit schedules the given activity.
func schedules(c *stream.Commit, activity string) bool {
	for _, e := range c.Events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.ActivityType == activity {
			return true
		}
	}
	return false
}

// completes reports whether a commit records the result of an activity.
func completes(c *stream.Commit, scheduledID uint64) bool {
	for _, e := range c.Events {
		if a, ok := e.Attrs.(*stream.ActivityTaskCompletedAttrs); ok && a.ScheduledEventID == scheduledID {
			return true
		}
	}
	return false
}

// assertCompletedOnce checks a saga as assertCompleted does, and that
// each of its activities ran once: svc served this saga alone.
func assertCompletedOnce(t *testing.T, ctx context.Context, cl *saga.Client, id string, svc *order.Service) {
	t.Helper()
	assertCompleted(t, ctx, cl, id)
	for _, step := range []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder} {
		if n := svc.Calls(step); n != 1 {
			t.Fatalf("%s ran %d times, want 1", step, n)
		}
	}
}

// assertCompleted waits for an order saga to complete and checks its
// history: contiguous ids, each step scheduled once, and one result for
// each scheduled activity.
func assertCompleted(t *testing.T, ctx context.Context, cl *saga.Client, id string) {
	t.Helper()
	d, err := cl.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCompleted {
		t.Fatalf("saga %s ended %s: %+v", id, d.Status, d.Error)
	}
	events, err := cl.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	scheduled := map[string]int{}
	results := map[uint64]int{}
	for i, e := range events {
		if e.ID != uint64(i) {
			t.Fatalf("saga %s: event %d has id %d", id, i, e.ID)
		}
		switch a := e.Attrs.(type) {
		case *stream.ActivityTaskScheduledAttrs:
			scheduled[a.ActivityType]++
			results[e.ID] += 0 // a scheduled activity without a result counts too
		case *stream.ActivityTaskCompletedAttrs:
			results[a.ScheduledEventID]++
		}
	}
	for _, step := range []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder} {
		if scheduled[step] != 1 {
			t.Fatalf("saga %s: %s scheduled %d times: %v", id, step, scheduled[step], eventTypes(events))
		}
	}
	for scheduledID, n := range results {
		if n != 1 {
			t.Fatalf("saga %s: activity %d has %d results", id, scheduledID, n)
		}
	}
}

// Acceptance 2: a node killed after an activity's result was recorded and
// before the next decision loses nothing. A second node finishes the saga
// and no completed activity runs again.
func TestNodeKilledBetweenResultAndDecision(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	// Activities run on their own node, so results are recorded without
	// the decision that follows them.
	c.node(worker.Options{NodeName: "activities"}, activitiesOnly(svc)...)

	reached := make(chan struct{})
	var once sync.Once
	doomed := c.node(worker.Options{NodeName: "doomed", Hooks: &worker.Hooks{
		BeforeAppend: func(ctx context.Context, _ string, commit *stream.Commit) error {
			if schedules(commit, order.StepProcessPayment) {
				once.Do(func() { close(reached) })
				<-ctx.Done() // frozen until killed: the decision never lands
				return ctx.Err()
			}
			return nil
		},
	}}, order.Workflow)

	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := cl.Start(ctx, "order", orderInput("o-2"), saga.StartOptions{ID: "crash-1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the doomed node never got to the decision after reserve-inventory")
	}
	doomed.kill(t)

	events, err := cl.History(ctx, "crash-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []stream.EventType{stream.WorkflowExecutionStarted, stream.ActivityTaskScheduled, stream.ActivityTaskStarted, stream.ActivityTaskCompleted}
	if got := eventTypes(events); !slices.Equal(got, want) {
		t.Fatalf("history at the crash\n got %v\nwant %v", got, want)
	}

	c.node(worker.Options{NodeName: "survivor"}, order.Workflow)
	assertCompletedOnce(t, ctx, cl, "crash-1", svc)
}

// A node killed after it appended an activity's result and the next
// decision, but before it acknowledged the message it ran the activity
// for: the message comes back, and the activity is not run again. With
// tasks, that message is the activity's task; run eagerly, it is the
// commit that scheduled the activity, whose redelivery finds the
// activity closed and queues nothing.
func TestNodeKilledBeforeAckingActivityTask(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) { testNodeKilledBeforeAcking(t, eager) })
	}
}

func testNodeKilledBeforeAcking(t *testing.T, eager bool) {
	c := newCluster(t)
	svc := order.NewService()
	reached := make(chan struct{})
	var once sync.Once
	// The doomed node runs only the workflow and reserve-inventory: the
	// commit it is killed after already schedules the payment, which it
	// must not get to run in the moment before the kill.
	doomed := c.node(worker.Options{NodeName: "doomed", DisableEagerActivities: !eager, Hooks: &worker.Hooks{
		AfterAppend: func(ctx context.Context, _ string, commit *stream.Commit) {
			if completes(commit, 1) { // reserve-inventory's result
				once.Do(func() { close(reached) })
				<-ctx.Done()
			}
		},
	}}, svc.Definitions()[:2]...)

	// Every task of reserve-inventory, as the server receives it.
	reserveTasks := make(chan struct{}, 16)
	sub, err := c.srv.Conn().Subscribe(c.store().Config().ActivityTaskFilter(order.StepReserveInventory), func(*nats.Msg) { reserveTasks <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := cl.Start(ctx, "order", orderInput("o-3"), saga.StartOptions{ID: "crash-2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("the doomed node never recorded reserve-inventory")
	}
	doomed.kill(t)

	survivor := c.node(worker.Options{NodeName: "survivor", DisableEagerActivities: !eager}, svc.Definitions()...)
	assertCompletedOnce(t, ctx, cl, "crash-2", svc)
	st := c.store()
	tasks, err := st.JetStream().Stream(ctx, st.Config().TaskStream())
	if err != nil {
		t.Fatal(err)
	}
	if eager {
		// The scheduling commit came back (the dispatcher acks it once
		// done), found reserve-inventory closed and queued no task.
		natstest.WaitFor(t, 20*time.Second, "the dispatcher to ack every commit", func() bool {
			ok, err := st.Dispatched(ctx, "crash-2", lastSeqOf(t, ctx, st, "crash-2"))
			return err == nil && ok
		})
		if err := c.srv.Conn().Flush(); err != nil {
			t.Fatal(err)
		}
		if n := len(reserveTasks); n != 0 {
			t.Fatalf("%d reserve-inventory tasks queued, want none", n)
		}
	} else {
		// The unacknowledged reserve-inventory task comes back after
		// AckWait and is acknowledged without running the activity again.
		natstest.WaitFor(t, 20*time.Second, "the task queue to empty", func() bool {
			info, err := tasks.Info(ctx)
			return err == nil && info.State.Msgs == 0
		})
	}
	if svc.Calls(order.StepReserveInventory) != 1 || survivor.Stats().ActivitiesRun != 2 {
		t.Fatalf("reserve-inventory ran %d times, survivor ran %d activities; want 1 and 2 (payment and shipping)",
			svc.Calls(order.StepReserveInventory), survivor.Stats().ActivitiesRun)
	}
}

// lastSeqOf is the stream sequence of the saga's last commit.
func lastSeqOf(t *testing.T, ctx context.Context, st *stream.Store, id string) uint64 {
	t.Helper()
	seq, err := st.LastSeqOnLeader(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// A node killed while an activity runs: the attempt never reported, so
// another node runs the activity again (at least once) and finishes.
func TestNodeKilledDuringActivity(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	reached := make(chan struct{})
	var once sync.Once
	svc.Hook = func(ctx context.Context, step, _ string) error {
		if step == order.StepProcessPayment {
			first := false
			once.Do(func() { first = true; close(reached) })
			if first {
				<-ctx.Done()
				return ctx.Err()
			}
		}
		return nil
	}
	doomed := c.node(worker.Options{NodeName: "doomed"}, svc.Definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := cl.Start(ctx, "order", orderInput("o-4"), saga.StartOptions{ID: "crash-3"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reached:
	case <-ctx.Done():
		t.Fatal("payment never started")
	}
	doomed.kill(t)
	c.node(worker.Options{NodeName: "survivor"}, svc.Definitions()...)
	d, err := cl.Wait(ctx, "crash-3")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga: %v %+v", err, d)
	}
	if svc.Calls(order.StepReserveInventory) != 1 || svc.Calls(order.StepProcessPayment) != 2 || svc.Calls(order.StepShipOrder) != 1 {
		t.Fatalf("calls: reserve %d payment %d ship %d", svc.Calls(order.StepReserveInventory), svc.Calls(order.StepProcessPayment), svc.Calls(order.StepShipOrder))
	}
	events, err := cl.History(ctx, "crash-3")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskStartedAttrs); ok && a.ScheduledEventID == 4 && (a.Attempt != 2 || a.Node != "survivor") {
			t.Fatalf("payment recorded as attempt %d on %s, want attempt 2 on survivor", a.Attempt, a.Node)
		}
	}
}
