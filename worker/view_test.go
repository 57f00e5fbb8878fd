package worker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
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

// memoryStep is the activity of memoryWorkflow.
var memoryStep = saga.NewActivity("memory-step", func(_ context.Context, i int) (int, error) { return i, nil })

// memoryWorkflow runs n activities one after another, then waits for a
// signal or an hour: a saga parked after 1 + 3n events (plus its timer).
var memoryWorkflow = saga.NewWorkflow("memory", 1, func(ctx saga.Context, n int) (int, error) {
	for i := range n {
		if _, err := saga.ExecuteActivity(ctx, memoryStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
	wake := saga.GetSignalChannel[struct{}](ctx, "wake")
	timeout := saga.NewTimer(ctx, time.Hour)
	err := saga.Select(ctx, wake.OnSignal(func(struct{}, error) {}), saga.OnReady(timeout, func() {}))
	return n, err
})

// parkedView takes a view of memoryWorkflow through steps activities as a
// node does: each commit encoded and decoded (the view's events do not
// share their attributes with the machine's commands), the machine kept
// in step. It returns the view parked, machine live.
func parkedView(tb testing.TB, cfg replay.Config, id string, steps int) *sagaView {
	tb.Helper()
	ctx := context.Background()
	now := time.Now()
	v := &sagaView{id: id}
	input, err := stream.Marshal(steps)
	if err != nil {
		tb.Fatal(err)
	}
	seq := uint64(0)
	// decoded is c as a node receives it from the stream.
	decoded := func(c *stream.Commit) *stream.Commit {
		for i := range c.Events {
			c.Events[i].SagaID, c.Events[i].Time, c.Events[i].Category = id, now, stream.CategoryOf(c.Events[i].Type)
		}
		data, err := c.Encode()
		if err != nil {
			tb.Fatal(err)
		}
		d, err := stream.DecodeCommit(data)
		if err != nil {
			tb.Fatal(err)
		}
		return d
	}
	seq++
	start := decoded(&stream.Commit{SagaID: id, WorkflowType: cfg.WorkflowType, Events: []stream.Event{{Type: stream.WorkflowExecutionStarted,
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: cfg.WorkflowType, Version: 1, Input: input}}}})
	if err := v.load(ctx, []stream.StoredCommit{{Seq: seq, Commit: start}}); err != nil {
		tb.Fatal(err)
	}
	if err := v.buildMachine(ctx, cfg); err != nil {
		tb.Fatal(err)
	}
	var inputs []stream.Event
	for {
		next := v.state.NextEventID
		for i := range inputs {
			inputs[i].ID = next + uint64(i)
		}
		if err := v.feedSpeculative(ctx, inputs); err != nil {
			tb.Fatal(err)
		}
		proposal := v.machine.Propose(next+uint64(len(inputs)), now)
		seq++
		c := decoded(&stream.Commit{SagaID: id, WorkflowType: cfg.WorkflowType, Decided: true, Events: append(inputs, proposal...)})
		if err := v.committed(ctx, c, seq, len(inputs)); err != nil {
			tb.Fatal(err)
		}
		if err := v.check(); err != nil {
			tb.Fatal(err)
		}
		last := c.Events[len(c.Events)-1]
		if last.Type != stream.ActivityTaskScheduled {
			return v // parked on the signal and the timer
		}
		result, err := stream.Marshal(0)
		if err != nil {
			tb.Fatal(err)
		}
		inputs = []stream.Event{
			{Type: stream.ActivityTaskStarted, Attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: last.ID, Attempt: 1}},
			{Type: stream.ActivityTaskCompleted, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: last.ID, Result: result}},
		}
	}
}

// memoryInUse is the Go heap and the goroutine stacks in use after a
// collection.
func memoryInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// BenchmarkViewMemory measures what a cached saga costs, as the cache's
// estimate (eventOverhead, machineOverhead, machineEventOverhead) counts
// it: many views of a saga parked after a number of activities, with their
// machines live, then released, then dropped:
//
//	go test ./worker -run '^$' -bench ViewMemory -benchtime 1x
//
// view-B is a view's memory without its machine, per saga, and
// view-B/event that over its events (no value is larger than a few bytes
// here); machine-B and machine-B/event the same of a machine; the
// estimated- figures are what the cache counts for them. b.N is ignored.
func BenchmarkViewMemory(b *testing.B) {
	reg := saga.NewRegistry()
	reg.MustRegister(memoryWorkflow, memoryStep)
	rw, _ := reg.Workflow("memory")
	for _, steps := range []int{0, 3, 10, 33, 100, 333, 1000, 3333} {
		b.Run(fmt.Sprintf("events=%d", 2+3*steps), func(b *testing.B) {
			sagas := max(20_000/(1+3*steps), 20)
			cfg := replay.Config{WorkflowType: rw.Name, Workflow: rw.Func, DeadlockTimeout: time.Minute}
			goroutines := runtime.NumGoroutine()
			before := memoryInUse()
			views := make([]*sagaView, sagas)
			for i := range views {
				cfg.SagaID = fmt.Sprintf("m-%d", i)
				views[i] = parkedView(b, cfg, cfg.SagaID, steps)
			}
			live := memoryInUse()
			perSaga := runtime.NumGoroutine() - goroutines
			estimatedLive := views[0].size()
			for _, v := range views {
				v.dropMachine()
			}
			released := memoryInUse()
			if n := runtime.NumGoroutine() - goroutines; n != 0 {
				b.Fatalf("%d goroutines after every machine was released, want 0", n)
			}
			events := len(views[0].events)
			estimatedView := views[0].size()
			for _, v := range views {
				v.reset()
			}
			views = nil
			b.ReportMetric(float64(released-before)/float64(sagas*events), "view-B/event")
			b.ReportMetric(float64(released-before)/float64(sagas), "view-B")
			b.ReportMetric(float64(live-released)/float64(sagas), "machine-B")
			b.ReportMetric(float64(live-released)/float64(sagas*events), "machine-B/event")
			b.ReportMetric(float64(perSaga)/float64(sagas), "goroutines/machine")
			b.ReportMetric(float64(estimatedView), "estimated-view-B")
			b.ReportMetric(float64(estimatedLive-estimatedView), "estimated-machine-B")
		})
	}
}
