package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/clock"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// The view keeps the folded state, the events and the replayed machine in
// step through every move a node makes: load, decide, commit, lose a race,
// catch up, meet a foreign commit, reset. It replaces two folds kept in
// step by hand.
func TestViewKeepsStateEventsAndMachineTogether(t *testing.T) {
	ctx := context.Background()
	step := saga.NewActivity("step", func(context.Context, int) (int, error) { return 1, nil })
	wf := saga.NewWorkflow("two-steps", 1, func(ctx saga.Context, _ int) (int, error) {
		a, err := saga.ExecuteActivity(ctx, step, 1).Get(ctx)
		if err != nil {
			return 0, err
		}
		b, err := saga.ExecuteActivity(ctx, step, 2).Get(ctx)
		return a + b, err
	})
	reg := saga.NewRegistry()
	reg.MustRegister(wf, step)
	rw, _ := reg.Workflow("two-steps")
	cfg := replay.Config{SagaID: "v1", WorkflowType: rw.Name, Workflow: rw.Func, DeadlockTimeout: 5 * time.Second}

	v := &sagaView{id: "v1"}
	check := func(when string) {
		t.Helper()
		if err := v.check(); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	check("empty")
	now := time.Now()
	commit := func(events ...stream.Event) *stream.Commit {
		for i := range events {
			events[i].SagaID, events[i].Time, events[i].Category = "v1", now, stream.CategoryOf(events[i].Type)
		}
		return &stream.Commit{SagaID: "v1", WorkflowType: "two-steps", Events: events}
	}
	result := func(first, scheduled uint64) []stream.Event {
		return []stream.Event{
			{ID: first, Type: stream.ActivityTaskStarted, Attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: scheduled, Attempt: 1}},
			{ID: first + 1, Type: stream.ActivityTaskCompleted, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: scheduled, Result: stream.Payload{0x01}}},
		}
	}

	// A saga met at its start.
	start := commit(stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "two-steps", Version: 1}})
	if err := v.load(ctx, []stream.StoredCommit{{Seq: 1, Commit: start}}); err != nil {
		t.Fatal(err)
	}
	check("loaded")
	if err := v.buildMachine(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	check("machine built")

	// The first decision, appended.
	if err := v.feedSpeculative(ctx, nil); err != nil {
		t.Fatal(err)
	}
	decision := v.machine.Propose(1, now)
	if len(decision) != 1 || decision[0].Type != stream.ActivityTaskScheduled {
		t.Fatalf("first decision %v", decision)
	}
	if err := v.committed(ctx, commit(decision...), 2, 0); err != nil {
		t.Fatal(err)
	}
	check("first decision committed")

	// A result fed with the next decision, and the append lost to another
	// writer: the machine saw an input that did not land, so it goes.
	if err := v.feedSpeculative(ctx, result(2, 1)); err != nil {
		t.Fatal(err)
	}
	check("result fed speculatively")
	if got := v.machine.Propose(4, now); len(got) != 1 {
		t.Fatalf("second decision %v", got)
	}
	v.abandon()
	if v.machine != nil {
		t.Fatal("a machine that saw inputs that did not land survived")
	}
	check("race lost")

	// The other writer's commit, caught up; the machine is rebuilt from the
	// events the view holds, without a read.
	if err := v.apply(ctx, []stream.StoredCommit{{Seq: 3, Commit: commit(result(2, 1)...)}}); err != nil {
		t.Fatal(err)
	}
	check("caught up")
	if err := v.buildMachine(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	check("rebuilt from memory")
	if got := v.machine.Propose(4, now); len(got) != 1 || got[0].Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType != "step" {
		t.Fatalf("decision after the rebuild %v", got)
	}
	if err := v.committed(ctx, commit(v.machine.Propose(4, now)...), 4, 0); err != nil {
		t.Fatal(err)
	}
	check("second decision committed")

	// A commit that does not continue the history, even after one that
	// does, leaves a view that knows nothing rather than half of it.
	err := v.apply(ctx, []stream.StoredCommit{{Seq: 5, Commit: commit(result(5, 4)...)}, {Seq: 9, Commit: commit(result(9, 4)...)}})
	var ce *stream.CodecError
	if !errors.As(err, &ce) || ce.Seq != 9 || v.known() {
		t.Fatalf("foreign commit: %v, view known %v", err, v.known())
	}
	check("foreign commit refused")

	if err := v.load(ctx, []stream.StoredCommit{{Seq: 1, Commit: start}}); err != nil {
		t.Fatal(err)
	}
	v.reset()
	check("reset")
	if v.known() {
		t.Fatal("a reset view still knows the saga")
	}
}

// A commit that starts a new run replaces the view's events and machine
// with the new run's, whether the view held the run before or meets the
// saga at that commit; the machine replays the run from its start.
func TestViewFollowsTheLatestRun(t *testing.T) {
	ctx := context.Background()
	wf := saga.NewWorkflow("again", 1, func(ctx saga.Context, n int) (int, error) {
		if n < 2 {
			return 0, saga.ContinueAsNew(ctx, n+1)
		}
		return n, nil
	})
	reg := saga.NewRegistry()
	reg.MustRegister(wf)
	rw, _ := reg.Workflow("again")
	cfg := replay.Config{SagaID: "v2", WorkflowType: rw.Name, Workflow: rw.Func, DeadlockTimeout: 5 * time.Second}
	n := &Node{reg: reg, clock: clock.Real}

	v := &sagaView{id: "v2"}
	check := func(when string) {
		t.Helper()
		if err := v.check(); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	input, _ := stream.Marshal(1)
	start := &stream.Commit{SagaID: "v2", WorkflowType: "again", Events: []stream.Event{{ID: 0, SagaID: "v2", Type: stream.WorkflowExecutionStarted,
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "again", Version: 1, Input: input}}}}
	if err := v.load(ctx, []stream.StoredCommit{{Seq: 1, Commit: start}}); err != nil {
		t.Fatal(err)
	}
	if err := v.buildMachine(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// The code continues as new: the decision, with the next run's start.
	events := v.machine.Propose(1, time.Now())
	next, err := n.nextRunStart(v.state, events, v.machine.NextRun())
	if err != nil {
		t.Fatal(err)
	}
	boundary := v.state.NewCommit(append(events, next), false)
	if boundary.Run != (stream.RunPosition{Run: 2, StartEventID: 2}) {
		t.Fatalf("run position %+v", boundary.Run)
	}
	if _, err := boundary.Encode(); err != nil {
		t.Fatal(err)
	}
	if err := v.committed(ctx, boundary, 2, 0); err != nil {
		t.Fatal(err)
	}
	check("next run started")
	if v.machine != nil || len(v.events) != 1 || v.events[0].ID != 2 || v.state.Run != 2 || v.state.RunStartSeq != 2 {
		t.Fatalf("after the boundary: machine %v, events %v, state run %d from seq %d", v.machine != nil, v.events, v.state.Run, v.state.RunStartSeq)
	}
	if err := v.buildMachine(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	check("run 2 replayed")
	if got := v.machine.Propose(3, time.Now()); len(got) != 1 || got[0].Type != stream.WorkflowExecutionCompleted {
		t.Fatalf("run 2 decides %v", got)
	}
	// A view that meets the saga at the boundary holds the same.
	fresh := &sagaView{id: "v2"}
	if err := fresh.load(ctx, []stream.StoredCommit{{Seq: 2, Commit: boundary}}); err != nil {
		t.Fatal(err)
	}
	if err := fresh.check(); err != nil || fresh.state.RunStartEventID != 2 || len(fresh.events) != 1 {
		t.Fatalf("met at the boundary: %v, %+v", err, fresh.events)
	}
	v.reset()
}
