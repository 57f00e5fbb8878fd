package replay_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// counter runs activity "step", takes one "tick" signal, then continues as
// new with its input plus one, until the input reaches stop.
func counter(t testing.TB, stop int) replay.WorkflowFunc {
	return func(env *replay.Env, input stream.Payload) (stream.Payload, *stream.Failure) {
		var n int
		if err := stream.Unmarshal(input, &n); err != nil {
			t.Errorf("input: %v", err)
		}
		if _, f, _ := env.ScheduleActivity(env.RootScope(), "step", nil, stream.ActivityOptions{}).Get(env.RootScope()); f != nil {
			return nil, f
		}
		if n < stop {
			env.ReceiveSignal(env.RootScope(), "tick")
			env.ContinueAsNew(payload(t, n+1))
			return nil, nil
		}
		return payload(t, n), nil
	}
}

// nextRun is the start of the run after the one whose proposals props end
// with WorkflowExecutionContinuedAsNew, as the worker builds it.
func nextRun(t *testing.T, m *replay.Machine, props []stream.Event, run uint32, prevStart uint64) stream.Event {
	t.Helper()
	end := props[len(props)-1]
	if end.Type != stream.WorkflowExecutionContinuedAsNew || end.Attrs.(*stream.WorkflowExecutionContinuedAsNewAttrs).NextRun != run {
		t.Fatalf("proposals %s, want them to end with %s of run %d", types(props), stream.WorkflowExecutionContinuedAsNew, run)
	}
	next := m.NextRun()
	if next == nil {
		t.Fatal("no next run")
	}
	return stream.Event{ID: end.ID + 1, SagaID: "s", Type: stream.WorkflowExecutionStarted, Time: end.Time, Attrs: &stream.WorkflowExecutionStartedAttrs{
		WorkflowType: "w", Input: next.Input, Continued: &stream.RunContinuation{Run: run, PreviousEventID: end.ID, PreviousStartEventID: prevStart,
			Signals: next.Signals, CancelRequested: next.CancelRequested}}}
}

func TestContinueAsNewEndsTheRunAndTheNextStartsFromItsStart(t *testing.T) {
	ctx := t.Context()
	d := newDriver(t, counter(t, 2))
	d.input(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w", Input: payload(t, 1)})
	d.complete(1, "")
	// Two signals in one batch: the code takes the first and continues;
	// the second, recorded in this run, is passed on untaken.
	tick := func(id uint64) stream.Event {
		return stream.Event{ID: id, SagaID: "s", Type: stream.SignalReceived, Time: t0, Attrs: &stream.SignalReceivedAttrs{Name: "tick", Input: payload(t, id)}}
	}
	batch := []stream.Event{tick(d.m.NextEventID()), tick(d.m.NextEventID() + 1)}
	if err := d.m.Feed(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	props := d.m.Propose(d.m.NextEventID(), t0)
	start := nextRun(t, d.m, props, 2, 0)
	carried := start.Attrs.(*stream.WorkflowExecutionStartedAttrs).Continued.Signals
	if len(carried) != 1 || carried[0].EventID != batch[1].ID || carried[0].Name != "tick" {
		t.Fatalf("carried %+v, want the signal of event %d", carried, batch[1].ID)
	}
	if err := d.m.Feed(ctx, props...); err != nil {
		t.Fatal(err)
	}
	// The ended run's machine takes no event of the next run.
	if err := d.m.Feed(ctx, start); !errors.Is(err, replay.ErrCorruptHistory) {
		t.Fatalf("next run's start fed to the ended run: %v", err)
	}
	run1 := append(append(d.history, batch...), props...)

	// The next run is replayed from its own start, with ids that go on
	// from the run before; its code receives the passed-on signal at once.
	m := replay.New(replay.Config{SagaID: "s", Workflow: counter(t, 2)})
	defer m.Close()
	if err := m.Feed(ctx, start); err != nil {
		t.Fatal(err)
	}
	props = m.Propose(m.NextEventID(), t0)
	if types(props) != "ActivityTaskScheduled" || props[0].ID != start.ID+1 {
		t.Fatalf("run 2 first decision %v", props)
	}
	if err := m.Feed(ctx, props...); err != nil {
		t.Fatal(err)
	}
	done := stream.Event{ID: m.NextEventID(), SagaID: "s", Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: props[0].ID}}
	if err := m.Feed(ctx, done); err != nil {
		t.Fatal(err)
	}
	props = m.Propose(m.NextEventID(), t0)
	if types(props) != "WorkflowExecutionCompleted" || str2int(t, props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output) != 2 {
		t.Fatalf("run 2 end %v", types(props))
	}

	// The first run replays as recorded: the same code ends it the same way.
	again := replay.New(replay.Config{SagaID: "s", Workflow: counter(t, 2)})
	defer again.Close()
	if err := again.Feed(ctx, run1...); err != nil || again.Pending() != 0 || !again.Finished() {
		t.Fatalf("replay of run 1: %v, pending %d", err, again.Pending())
	}
	// Code that completes where the history continued is non-deterministic.
	changed := replay.New(replay.Config{SagaID: "s", Workflow: counter(t, 1)})
	defer changed.Close()
	var nde *replay.NonDeterminismError
	if err := changed.Feed(ctx, run1...); !errors.As(err, &nde) || !strings.Contains(err.Error(), "WorkflowExecutionContinuedAsNew") {
		t.Fatalf("completion where the history continued: %v", err)
	}
}

func str2int(t *testing.T, p stream.Payload) int {
	t.Helper()
	var n int
	if err := stream.Unmarshal(p, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A run that would leave an activity without its result, or a
// compensation registered, does not continue: the saga fails, saying why.
func TestContinueAsNewRefusedWithWorkLeftOpen(t *testing.T) {
	openActivity := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.ScheduleActivity(env.RootScope(), "slow", nil, stream.ActivityOptions{})
		env.ContinueAsNew(nil)
		return nil, nil
	}
	d := newDriver(t, openActivity)
	props := d.start()
	if types(props) != "ActivityTaskScheduled WorkflowExecutionFailed" {
		t.Fatalf("proposed %s", types(props))
	}
	f := props[1].Attrs.(*stream.WorkflowExecutionFailedAttrs).Failure
	if f.Kind != "Validation" || !strings.Contains(f.Message, "1 activities have no result yet") {
		t.Fatalf("failure %+v", f)
	}
	if d.m.NextRun() != nil {
		t.Fatal("a refused continuation has a next run")
	}

	registered := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		if _, f, _ := env.ScheduleActivity(env.RootScope(), "book", nil, stream.ActivityOptions{}).Get(env.RootScope()); f != nil {
			return nil, f
		}
		env.AddCompensation(stream.CompensationRegistration{Step: "book", ActivityType: "unbook"})
		env.ContinueAsNew(nil)
		return nil, nil
	}
	d = newDriver(t, registered)
	d.start()
	props = d.complete(1, "")
	// The failure compensates what was registered, as any failure does.
	if types(props) != "MarkerRecorded CompensationStepScheduled" {
		t.Fatalf("proposed %s", types(props))
	}
	props = d.input(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: props[1].ID, Step: "book"})
	if types(props) != "WorkflowExecutionFailed" || !strings.Contains(props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs).Failure.Message, "1 compensations are registered") {
		t.Fatalf("proposed %s", types(props))
	}

	// Discarded, they no longer hold the run back; open timers are canceled.
	discarded := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.AddCompensation(stream.CompensationRegistration{Step: "book", ActivityType: "unbook"})
		env.DiscardCompensations()
		env.NewTimer(env.RootScope(), 3600e9)
		env.ContinueAsNew(nil)
		return nil, nil
	}
	d = newDriver(t, discarded)
	if props = d.start(); types(props) != "MarkerRecorded TimerCreated TimerCanceled WorkflowExecutionContinuedAsNew" {
		t.Fatalf("proposed %s", types(props))
	}
}

// A cancellation requested before the code continues ends the saga
// canceled; one recorded after the code decided reaches the next run.
func TestContinueAsNewAndCancellation(t *testing.T) {
	ctx := t.Context()
	waits := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.ReceiveSignal(env.NewDisconnectedScope(), "go")
		env.ContinueAsNew(nil)
		return nil, nil
	}
	d := newDriver(t, waits)
	d.start()
	d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest})
	if props := d.input(stream.SignalReceived, &stream.SignalReceivedAttrs{Name: "go"}); types(props) != "WorkflowExecutionCanceled" {
		t.Fatalf("canceled before: %s", types(props))
	}

	d = newDriver(t, waits)
	d.start()
	batch := []stream.Event{
		{ID: 1, SagaID: "s", Type: stream.SignalReceived, Time: t0, Attrs: &stream.SignalReceivedAttrs{Name: "go"}},
		{ID: 2, SagaID: "s", Type: stream.WorkflowExecutionCancelRequested, Time: t0, Attrs: &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "late"}},
	}
	if err := d.m.Feed(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	props := d.m.Propose(3, t0)
	start := nextRun(t, d.m, props, 2, 0)
	if c := start.Attrs.(*stream.WorkflowExecutionStartedAttrs).Continued.CancelRequested; c == nil || c.Reason != "late" {
		t.Fatalf("cancellation passed on: %+v", c)
	}
	// The next run starts canceled: its code, waiting in a scope the
	// cancellation reaches, ends canceled at once.
	m := replay.New(replay.Config{SagaID: "s", Workflow: func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		if _, canceled := env.ReceiveSignal(env.RootScope(), "go"); canceled {
			return nil, &stream.Failure{Kind: "Cancelled", Message: "canceled"}
		}
		return nil, nil
	}})
	defer m.Close()
	if err := m.Feed(ctx, start); err != nil {
		t.Fatal(err)
	}
	if props := m.Propose(m.NextEventID(), t0); types(props) != "WorkflowExecutionCanceled" {
		t.Fatalf("next run: %s", types(props))
	}
}
