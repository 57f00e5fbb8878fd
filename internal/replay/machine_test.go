package replay_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func payload(t testing.TB, v any) stream.Payload {
	t.Helper()
	b, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func str(t *testing.T, p stream.Payload) string {
	t.Helper()
	var s string
	if err := stream.Unmarshal(p, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// sequential schedules the named activities one after another and returns
// their results joined.
func sequential(names ...string) replay.WorkflowFunc {
	return func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		var out []string
		for _, n := range names {
			v, f, _ := env.ScheduleActivity(env.RootScope(), n, nil, stream.ActivityOptions{}).Get(env.RootScope())
			if f != nil {
				return nil, f
			}
			var s string
			_ = stream.Unmarshal(v, &s)
			out = append(out, s)
		}
		b, _ := stream.Marshal(strings.Join(out, ","))
		return b, nil
	}
}

// driver plays the worker: it feeds inputs, takes the proposed decision
// and feeds it back, recording the resulting history.
type driver struct {
	t       testing.TB
	m       *replay.Machine
	history []stream.Event
}

func newDriver(t testing.TB, wf replay.WorkflowFunc) *driver {
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: wf})
	t.Cleanup(m.Close)
	return &driver{t: t, m: m}
}

// input feeds one input event and commits whatever the code decides.
func (d *driver) input(typ stream.EventType, attrs any) []stream.Event {
	d.t.Helper()
	ctx := d.t.Context()
	e := stream.Event{ID: d.m.NextEventID(), SagaID: "s", Type: typ, Time: t0.Add(time.Duration(d.m.NextEventID()) * time.Second), Attrs: attrs}
	if err := d.m.Feed(ctx, e); err != nil {
		d.t.Fatalf("feed %s: %v", typ, err)
	}
	d.history = append(d.history, e)
	props := d.m.Propose(d.m.NextEventID(), e.Time)
	if err := d.m.Feed(ctx, props...); err != nil {
		d.t.Fatalf("feed proposals: %v", err)
	}
	d.history = append(d.history, props...)
	return props
}

func (d *driver) start() []stream.Event {
	return d.input(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w"})
}

func (d *driver) complete(scheduledID uint64, result string) []stream.Event {
	return d.input(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: scheduledID, Result: payload(d.t, result)})
}

func types(events []stream.Event) string {
	var s []string
	for _, e := range events {
		s = append(s, string(e.Type))
	}
	return strings.Join(s, " ")
}

func TestLiveRunRecordsOneDecisionPerInput(t *testing.T) {
	ctx := t.Context()
	d := newDriver(t, sequential("a", "b"))
	props := d.start()
	if types(props) != "ActivityTaskScheduled" || props[0].ID != 1 {
		t.Fatalf("after start: %v", props)
	}
	props = d.complete(1, "A")
	if types(props) != "ActivityTaskScheduled" || props[0].Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType != "b" {
		t.Fatalf("after a: %v", props)
	}
	props = d.complete(3, "B")
	if types(props) != "WorkflowExecutionCompleted" || !d.m.Finished() {
		t.Fatalf("after b: %v", props)
	}
	if got := str(t, props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output); got != "A,B" {
		t.Fatalf("output %q", got)
	}

	// The same code replays the recorded history with nothing new to do.
	m := replay.New(replay.Config{SagaID: "s", Workflow: sequential("a", "b")})
	defer m.Close()
	if err := m.Feed(ctx, d.history...); err != nil {
		t.Fatal(err)
	}
	if m.Pending() != 0 || !m.Finished() {
		t.Fatalf("replay: pending %d finished %v", m.Pending(), m.Finished())
	}
}

func TestReplayStopsHalfwayAndContinuesLive(t *testing.T) {
	ctx := t.Context()
	d := newDriver(t, sequential("a", "b"))
	d.start()
	d.complete(1, "A")
	// A fresh machine fed the history so far plus a new result decides the
	// same next step as the original would have.
	m := replay.New(replay.Config{SagaID: "s", Workflow: sequential("a", "b")})
	defer m.Close()
	if err := m.Feed(ctx, d.history...); err != nil {
		t.Fatal(err)
	}
	if m.Pending() != 0 {
		t.Fatalf("pending %d after replaying a decided history", m.Pending())
	}
	res := stream.Event{ID: m.NextEventID(), Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 3, Result: payload(t, "B")}}
	if err := m.Feed(ctx, res); err != nil {
		t.Fatal(err)
	}
	props := m.Propose(m.NextEventID(), t0)
	if types(props) != "WorkflowExecutionCompleted" {
		t.Fatalf("proposed %v", props)
	}
}

func TestNonDeterminismNamesEventHistoryAndCode(t *testing.T) {
	ctx := t.Context()
	d := newDriver(t, sequential("reserve-inventory", "process-payment"))
	d.start()
	d.complete(1, "r")

	changed := replay.New(replay.Config{SagaID: "s", Workflow: sequential("process-payment", "reserve-inventory")})
	defer changed.Close()
	err := changed.Feed(ctx, d.history...)
	var nde *replay.NonDeterminismError
	if !errors.As(err, &nde) {
		t.Fatalf("got %v, want NonDeterminismError", err)
	}
	want := "event 1: history has ActivityTaskScheduled reserve-inventory, code asked for ActivityTaskScheduled process-payment"
	if nde.Error() != want {
		t.Fatalf("message\n got: %s\nwant: %s", nde.Error(), want)
	}
	// The machine stays failed.
	if err := changed.Feed(ctx); !errors.As(err, &nde) {
		t.Fatalf("second feed: %v", err)
	}
}

func TestNonDeterminismWhenCodeIssuesNothing(t *testing.T) {
	ctx := t.Context()
	d := newDriver(t, sequential("a"))
	d.start()
	waits := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.Await(func() bool { return false })
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: waits})
	defer m.Close()
	err := m.Feed(ctx, d.history...)
	if err == nil || err.Error() != "event 1: history has ActivityTaskScheduled a, code asked for nothing (the workflow is waiting)" {
		t.Fatalf("got %v", err)
	}
	// Code that returns early where history has more.
	returns := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) { return nil, nil }
	m2 := replay.New(replay.Config{SagaID: "s", Workflow: returns})
	defer m2.Close()
	err = m2.Feed(ctx, d.history...)
	if err == nil || err.Error() != "event 1: history has ActivityTaskScheduled a, code asked for WorkflowExecutionCompleted" {
		t.Fatalf("got %v", err)
	}
}

func TestActivityFailureReachesCode(t *testing.T) {
	d := newDriver(t, sequential("a", "b"))
	d.start()
	props := d.input(stream.ActivityTaskFailed, &stream.ActivityTaskFailedAttrs{ScheduledEventID: 1, Attempts: 3,
		Failure: &stream.Failure{Kind: "ActivityExecution", Message: "card declined"}})
	if types(props) != "WorkflowExecutionFailed" {
		t.Fatalf("proposed %v", props)
	}
	if f := props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs).Failure; f.Message != "card declined" {
		t.Fatalf("failure %+v", f)
	}
}

func TestSideEffectRunsOnceAndReplaysRecordedValue(t *testing.T) {
	ctx := t.Context()
	calls := 0
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		v, _ := env.SideEffect(func() (stream.Payload, *stream.Failure) {
			calls++
			b, _ := stream.Marshal(fmt.Sprintf("random-%d", calls))
			return b, nil
		})
		if _, f, _ := env.ScheduleActivity(env.RootScope(), "a", v, stream.ActivityOptions{}).Get(env.RootScope()); f != nil {
			return nil, f
		}
		return v, nil
	}
	d := newDriver(t, wf)
	props := d.start()
	if types(props) != "MarkerRecorded ActivityTaskScheduled" {
		t.Fatalf("proposed %v", types(props))
	}
	d.complete(2, "ok")
	if calls != 1 {
		t.Fatalf("side effect ran %d times live", calls)
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	if err := m.Feed(ctx, d.history...); err != nil {
		t.Fatal(err)
	}
	if calls != 1 {
		t.Fatalf("side effect ran again on replay (%d calls)", calls)
	}
	last := d.history[len(d.history)-1].Attrs.(*stream.WorkflowExecutionCompletedAttrs)
	if got := str(t, last.Output); got != "random-1" {
		t.Fatalf("output %q", got)
	}
}

// A machine that ran a side effect live and then learns that another
// writer recorded a different value must not carry on with its own value.
func TestSideEffectValueRecordedElsewhereMakesMachineStale(t *testing.T) {
	ctx := t.Context()
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		v, _ := env.SideEffect(func() (stream.Payload, *stream.Failure) { b, _ := stream.Marshal("mine"); return b, nil })
		return v, nil
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	start := stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}}
	if err := m.Feed(ctx, start); err != nil {
		t.Fatal(err)
	}
	theirs := stream.Event{ID: 1, Type: stream.MarkerRecorded, Time: t0, Attrs: &stream.MarkerRecordedAttrs{Name: stream.MarkerSideEffect, Data: payload(t, "theirs")}}
	if err := m.Feed(ctx, theirs); !errors.Is(err, replay.ErrStale) {
		t.Fatalf("got %v, want ErrStale", err)
	}
}

func TestGetVersion(t *testing.T) {
	ctx := t.Context()
	v1 := sequential("a", "b")
	v2 := func(env *replay.Env, in stream.Payload) (stream.Payload, *stream.Failure) {
		first := "a"
		if env.GetVersion("use-c", replay.DefaultVersion, 1) == 1 {
			first = "c"
		}
		if _, f, _ := env.ScheduleActivity(env.RootScope(), first, nil, stream.ActivityOptions{}).Get(env.RootScope()); f != nil {
			return nil, f
		}
		_, f, _ := env.ScheduleActivity(env.RootScope(), "b", nil, stream.ActivityOptions{}).Get(env.RootScope())
		return nil, f
	}
	// A history written by v1 replays under v2 on the old branch.
	old := newDriver(t, v1)
	old.start()
	m := replay.New(replay.Config{SagaID: "s", Workflow: v2})
	defer m.Close()
	if err := m.Feed(ctx, old.history...); err != nil {
		t.Fatalf("v2 on a v1 history: %v", err)
	}
	// A new saga under v2 records the version and takes the new branch.
	d := newDriver(t, v2)
	props := d.start()
	if types(props) != "MarkerRecorded ActivityTaskScheduled" || props[1].Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType != "c" {
		t.Fatalf("proposed %v", props)
	}
	// And replays on it.
	m2 := replay.New(replay.Config{SagaID: "s", Workflow: v2})
	defer m2.Close()
	if err := m2.Feed(ctx, d.history...); err != nil || m2.Pending() != 0 {
		t.Fatalf("replay of v2 history: %v pending %d", err, m2.Pending())
	}
	// Code that dropped support for version 1 refuses the history.
	v3 := func(env *replay.Env, in stream.Payload) (stream.Payload, *stream.Failure) {
		env.GetVersion("use-c", 2, 2)
		return nil, nil
	}
	m3 := replay.New(replay.Config{SagaID: "s", Workflow: v3})
	defer m3.Close()
	var nde *replay.NonDeterminismError
	if err := m3.Feed(ctx, d.history...); !errors.As(err, &nde) {
		t.Fatalf("got %v", err)
	}
}

// A rolling deploy: code that added a step behind GetVersion writes
// histories that older code, and code that changed otherwise, replay.
func TestHistoryFromNewerCode(t *testing.T) {
	ctx := t.Context()
	v1 := sequential("reserve", "charge")
	v2 := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		env.ScheduleActivity(root, "reserve", nil, stream.ActivityOptions{}).Get(root)
		if env.GetVersion("add-step", replay.DefaultVersion, 1) == 1 {
			env.ScheduleActivity(root, "notify", nil, stream.ActivityOptions{}).Get(root)
		}
		_, f, _ := env.ScheduleActivity(root, "charge", nil, stream.ActivityOptions{}).Get(root)
		return nil, f
	}
	newer := newDriver(t, v2)
	newer.start()
	if props := newer.complete(1, "r"); types(props) != "MarkerRecorded ActivityTaskScheduled" {
		t.Fatalf("v2 proposed %v", types(props))
	}

	// Old code on the newer history: not a bug in the code.
	old := replay.New(replay.Config{SagaID: "s", Workflow: v1})
	defer old.Close()
	err := old.Feed(ctx, newer.history...)
	var nde *replay.NonDeterminismError
	if !errors.Is(err, replay.ErrNewerHistory) || !errors.As(err, &nde) || nde.UnknownChangeID != "add-step" {
		t.Fatalf("old code on a newer history: %v", err)
	}
	want := "event 3: history has MarkerRecorded version add-step, code asked for ActivityTaskScheduled charge; the history was written by newer code, with change add-step"
	if err.Error() != want {
		t.Fatalf("message\n got: %s\nwant: %s", err, want)
	}

	// New code on an older history takes the old branch and goes on.
	older := newDriver(t, v1)
	older.start()
	older.complete(1, "r")
	m := replay.New(replay.Config{SagaID: "s", Workflow: v2})
	defer m.Close()
	if err := m.Feed(ctx, older.history...); err != nil || m.Pending() != 0 {
		t.Fatalf("v2 on a v1 history: %v, pending %d", err, m.Pending())
	}
	if err := m.Feed(ctx, stream.Event{ID: m.NextEventID(), Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 3}}); err != nil {
		t.Fatal(err)
	}
	if props := m.Propose(m.NextEventID(), t0); types(props) != "WorkflowExecutionCompleted" {
		t.Fatalf("v2 on a v1 history proposed %v", types(props))
	}

	// Code that dropped an activity is plainly non-deterministic.
	dropped := replay.New(replay.Config{SagaID: "s", Workflow: sequential("charge")})
	defer dropped.Close()
	err = dropped.Feed(ctx, older.history...)
	if !errors.As(err, &nde) || errors.Is(err, replay.ErrNewerHistory) || nde.UnknownChangeID != "" {
		t.Fatalf("code without an activity: %v", err)
	}
}

func TestPanicInWorkflowCode(t *testing.T) {
	ctx := t.Context()
	m := replay.New(replay.Config{SagaID: "s", Workflow: func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		panic("boom in workflow code")
	}})
	defer m.Close()
	err := m.Feed(ctx, stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}})
	var pe *replay.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom in workflow code" || !strings.Contains(pe.Stack, "machine_test.go") {
		t.Fatalf("got %v", err)
	}
}

func TestDeadlockIsDetected(t *testing.T) {
	ctx := t.Context()
	block := make(chan struct{})
	m := replay.New(replay.Config{SagaID: "s", DeadlockTimeout: 50 * time.Millisecond, Workflow: func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		<-block // a native channel: forbidden in workflow code
		env.ScheduleActivity(env.RootScope(), "a", nil, stream.ActivityOptions{})
		return nil, nil
	}})
	err := m.Feed(ctx, stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}})
	if !errors.Is(err, replay.ErrDeadlock) {
		t.Fatalf("got %v", err)
	}
	close(block) // the code wakes up after the machine gave up on it
	m.Close()
}

// Code that overran the deadlock timeout and then wakes up keeps calling
// into the engine while the driver goes on with the machine: the race
// detector checks that the two share nothing.
func TestOverrunCoroutineDoesNotRaceTheDriver(t *testing.T) {
	ctx := t.Context()
	block, woke, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	m := replay.New(replay.Config{SagaID: "s", DeadlockTimeout: 20 * time.Millisecond, Workflow: func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		defer close(done)
		<-block
		close(woke)
		env.Go(func(env *replay.Env) { env.ScheduleActivity(env.RootScope(), "b", nil, stream.ActivityOptions{}) })
		f := env.ScheduleActivity(env.RootScope(), "a", nil, stream.ActivityOptions{})
		env.Await(func() bool { return f.Ready() })
		_, _, _ = f.Get(env.RootScope())
		return nil, nil
	}})
	err := m.Feed(ctx, stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}})
	if !errors.Is(err, replay.ErrDeadlock) {
		t.Fatalf("got %v", err)
	}
	close(block)
	<-woke
	for range 100 {
		if !errors.Is(m.Err(), replay.ErrDeadlock) || m.Pending() != 0 || m.Finished() || len(m.Propose(1, t0)) != 0 {
			t.Fatal("an abandoned machine must keep answering with the deadlock")
		}
		if err := m.Feed(ctx, stream.Event{ID: 1, Type: stream.ActivityTaskScheduled, Time: t0, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "a"}}); !errors.Is(err, replay.ErrDeadlock) {
			t.Fatalf("feed after the deadlock: %v", err)
		}
	}
	m.Close()
	<-done // the code unwinds at its next blocking call once the machine is closed
}

func TestCoroutinesInterleaveDeterministically(t *testing.T) {
	ctx := t.Context()
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		var order []string
		done := 0
		for _, n := range []string{"x", "y"} {
			env.Go(func(env *replay.Env) {
				v, _, _ := env.ScheduleActivity(env.RootScope(), n, nil, stream.ActivityOptions{}).Get(env.RootScope())
				var s string
				_ = stream.Unmarshal(v, &s)
				order = append(order, s)
				done++
			})
		}
		env.Await(func() bool { return done == 2 })
		b, _ := stream.Marshal(strings.Join(order, ","))
		return b, nil
	}
	d := newDriver(t, wf)
	props := d.start()
	if types(props) != "ActivityTaskScheduled ActivityTaskScheduled" {
		t.Fatalf("proposed %v", types(props))
	}
	d.complete(2, "Y") // y finishes first
	props = d.complete(1, "X")
	if got := str(t, props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output); got != "Y,X" {
		t.Fatalf("output %q", got)
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	if err := m.Feed(ctx, d.history...); err != nil || m.Pending() != 0 {
		t.Fatalf("replay: %v, pending %d", err, m.Pending())
	}
}

// Inputs that arrive together are applied one at a time, so the code's
// decisions do not depend on how the writers batched them.
func TestBatchedInputsDecideLikeSingleOnes(t *testing.T) {
	ctx := t.Context()
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		fa := env.ScheduleActivity(env.RootScope(), "a", nil, stream.ActivityOptions{})
		fb := env.ScheduleActivity(env.RootScope(), "b", nil, stream.ActivityOptions{})
		fa.Get(env.RootScope())
		env.ScheduleActivity(env.RootScope(), "after-a", nil, stream.ActivityOptions{})
		fb.Get(env.RootScope())
		env.ScheduleActivity(env.RootScope(), "after-b", nil, stream.ActivityOptions{})
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	start := stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}}
	if err := m.Feed(ctx, start); err != nil {
		t.Fatal(err)
	}
	first := m.Propose(1, t0)
	if err := m.Feed(ctx, first...); err != nil {
		t.Fatal(err)
	}
	both := []stream.Event{
		{ID: 3, Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 2}},
		{ID: 4, Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1}},
	}
	if err := m.Feed(ctx, both...); err != nil {
		t.Fatal(err)
	}
	props := m.Propose(5, t0)
	if types(props) != "ActivityTaskScheduled ActivityTaskScheduled WorkflowExecutionCompleted" {
		t.Fatalf("proposed %v", types(props))
	}
	// The recorded history replays cleanly.
	history := append(append(append([]stream.Event{start}, first...), both...), props...)
	again := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer again.Close()
	if err := again.Feed(ctx, history...); err != nil || again.Pending() != 0 || !again.Finished() {
		t.Fatalf("replay: %v pending %d", err, again.Pending())
	}
}

func TestCorruptHistories(t *testing.T) {
	ctx := t.Context()
	m := replay.New(replay.Config{SagaID: "s", Workflow: sequential("a")})
	defer m.Close()
	err := m.Feed(ctx,
		stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}},
		stream.Event{ID: 1, Type: stream.ActivityTaskScheduled, Time: t0, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "a"}},
		stream.Event{ID: 2, Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 0}},
	)
	if !errors.Is(err, replay.ErrCorruptHistory) {
		t.Fatalf("result for a non-activity: %v", err)
	}
	m2 := replay.New(replay.Config{SagaID: "s", Workflow: sequential("a")})
	defer m2.Close()
	if err := m2.Feed(ctx, stream.Event{ID: 5, Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{}}); !errors.Is(err, replay.ErrCorruptHistory) {
		t.Fatalf("gap: %v", err)
	}
}

// A condition of workflow code runs on the workflow's coroutine: a panic
// in it is a workflow panic, not a crash of the engine.
func TestPanickingAwaitConditionIsAWorkflowPanic(t *testing.T) {
	ctx := t.Context()
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		var state *struct{ ready bool }
		env.ScheduleActivity(env.RootScope(), "a", nil, stream.ActivityOptions{})
		env.Await(func() bool { return state.ready }) // nil dereference
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	err := m.Feed(ctx, stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}})
	var pe *replay.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a PanicError", err)
	}
}

// Workflow code waiting on its own condition is re-checked after every
// input and proceeds once the condition holds.
func TestAwaitOnWorkflowStateAcrossInputs(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		results := 0
		for _, n := range []string{"a", "b"} {
			env.Go(func(env *replay.Env) {
				env.ScheduleActivity(env.RootScope(), n, nil, stream.ActivityOptions{}).Get(env.RootScope())
				results++
			})
		}
		env.Await(func() bool { return results == 2 })
		b, _ := stream.Marshal(results)
		return b, nil
	}
	d := newDriver(t, wf)
	if props := d.start(); types(props) != "ActivityTaskScheduled ActivityTaskScheduled" {
		t.Fatalf("proposed %v", types(props))
	}
	if props := d.complete(1, "x"); len(props) != 0 {
		t.Fatalf("proposed %v after one result", types(props))
	}
	if props := d.complete(2, "y"); types(props) != "WorkflowExecutionCompleted" {
		t.Fatalf("proposed %v after both results", types(props))
	}
}

// finishedHistory records a finished saga of n sequential activities
// (2n+2 events) and returns its workflow and history.
func finishedHistory(b *testing.B, n int) (replay.WorkflowFunc, []stream.Event) {
	b.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("step-%d", i)
	}
	wf := sequential(names...)
	d := newDriver(b, wf)
	d.start()
	for i := range names {
		d.complete(uint64(1+2*i), "ok")
	}
	if !d.m.Finished() {
		b.Fatal("history did not finish")
	}
	return wf, d.history
}

func benchmarkReplay(b *testing.B, wf replay.WorkflowFunc, history []stream.Event) {
	b.ReportAllocs()
	for b.Loop() {
		m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
		if err := m.Feed(b.Context(), history...); err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
	b.ReportMetric(float64(len(history)), "events/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(history)), "ns/event")
}

// BenchmarkReplay measures a cold load: replaying a finished saga of 30
// sequential activities (62 events) into a new machine.
func BenchmarkReplay(b *testing.B) {
	wf, history := finishedHistory(b, 30)
	benchmarkReplay(b, wf, history)
}

// BenchmarkReplayLength shows that replay is linear in the history's
// length: ns/event stays flat from 100 to 10,000 activities.
func BenchmarkReplayLength(b *testing.B) {
	for _, n := range []int{100, 1_000, 10_000} {
		b.Run(fmt.Sprintf("activities=%d", n), func(b *testing.B) {
			wf, history := finishedHistory(b, n)
			benchmarkReplay(b, wf, history)
		})
	}
}

// recordingHandler keeps the messages logged through it.
type recordingHandler struct {
	mu       sync.Mutex
	messages []string
}

func (h *recordingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.messages = append(h.messages, r.Message)
	return nil
}
func (h *recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordingHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordingHandler) logged() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.messages)
}

// A machine closed while its code waits (a node releasing the machine of
// a parked saga) unwinds the code's coroutines silently: what their
// deferred calls log is dropped, since the workflow did not end.
func TestCloseUnwindsWithoutLogging(t *testing.T) {
	h := &recordingHandler{}
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.Logger().Info("started")
		defer env.Logger().Info("deferred")
		env.ScheduleActivity(env.RootScope(), "a", nil, stream.ActivityOptions{}).Get(env.RootScope())
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: wf, Logger: slog.New(h)})
	start := stream.Event{ID: 0, SagaID: "s", Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w"}}
	if err := m.Feed(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	if got := h.logged(); !slices.Equal(got, []string{"started"}) {
		t.Fatalf("logged %q before the close, want the live line", got)
	}
	m.Close()
	if got := h.logged(); !slices.Equal(got, []string{"started"}) {
		t.Fatalf("logged %q after the close, want nothing more", got)
	}
}
