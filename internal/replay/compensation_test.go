package replay_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// bookTrip runs steps a, b, c, registering undo-a and undo-b after the
// first two succeed; c's failure fails the workflow.
func bookTrip(opts replay.CompensationOptions) replay.WorkflowFunc {
	return func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		env.SetCompensationOptions(opts)
		root := env.RootScope()
		for _, step := range []string{"a", "b", "c"} {
			if _, f, canceled := env.ScheduleActivity(root, step, nil, stream.ActivityOptions{}).Get(root); f != nil || canceled {
				if canceled {
					f = &stream.Failure{Kind: "Cancelled", Message: "canceled"}
				}
				return nil, f
			}
			if step != "c" {
				env.AddCompensation(stream.CompensationRegistration{Step: step, ActivityType: "undo-" + step})
			}
		}
		return nil, nil
	}
}

func fail(d *driver, id uint64) []stream.Event {
	return d.input(stream.ActivityTaskFailed, &stream.ActivityTaskFailedAttrs{ScheduledEventID: id, Failure: &stream.Failure{Kind: "ActivityExecution", Message: "no"}})
}

func compensated(d *driver, id uint64, ok bool) []stream.Event {
	step := d.history[id].Attrs.(*stream.CompensationStepScheduledAttrs).Step
	if ok {
		return d.input(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: id, Step: step})
	}
	return d.input(stream.CompensationStepFailed, &stream.CompensationStepFailedAttrs{ScheduledEventID: id, Step: step,
		Failure: &stream.Failure{Kind: "ActivityExecution", Message: "undo failed"}})
}

func steps(events []stream.Event) []string {
	var out []string
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.CompensationStepScheduledAttrs); ok {
			out = append(out, a.Step)
		}
	}
	return out
}

// replayAll feeds a whole history to a fresh machine, which must agree
// with it and have nothing more to decide.
func replayAll(t *testing.T, wf replay.WorkflowFunc, history []stream.Event) {
	t.Helper()
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: wf})
	defer m.Close()
	if err := m.Feed(t.Context(), history...); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if m.Pending() != 0 {
		t.Fatalf("replay proposes %d more commands", m.Pending())
	}
}

func TestCompensationRunsLIFOOneAtATime(t *testing.T) {
	wf := bookTrip(replay.CompensationOptions{})
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	if types(props) != "MarkerRecorded ActivityTaskScheduled" {
		t.Fatalf("after a: %s", types(props))
	}
	props = d.complete(props[1].ID, "B")
	markerB := props[0].ID
	props = fail(d, props[1].ID)
	if types(props) != "CompensationStepScheduled" || steps(props)[0] != "b" {
		t.Fatalf("after c failed: %s %v", types(props), steps(props))
	}
	if a := props[0].Attrs.(*stream.CompensationStepScheduledAttrs); a.RegisteredEventID != markerB || a.ActivityType != "undo-b" {
		t.Fatalf("undo-b attrs: %+v", a)
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != "CompensationStepScheduled" || steps(props)[0] != "a" {
		t.Fatalf("after undo-b: %s %v", types(props), steps(props))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionFailed) {
		t.Fatalf("after undo-a: %s", types(props))
	}
	o := props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs).Compensation
	if o == nil || o.Status != stream.CompensationCompleted || o.Completed != 2 {
		t.Fatalf("outcome %+v", o)
	}
	replayAll(t, wf, d.history)
}

func TestCompensationStopsAtAFailureAndNamesWhatWasNotRun(t *testing.T) {
	d := newDriver(t, bookTrip(replay.CompensationOptions{}))
	d.start()
	props := d.complete(1, "A")
	props = d.complete(props[1].ID, "B")
	props = fail(d, props[1].ID)
	props = compensated(d, props[0].ID, false)
	if types(props) != string(stream.WorkflowExecutionFailed) {
		t.Fatalf("after undo-b failed: %s", types(props))
	}
	o := props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs).Compensation
	if o.Status != stream.CompensationFailed || !slices.Equal(o.FailedSteps, []string{"b"}) || !slices.Equal(o.NotRun, []string{"a"}) || o.Failure == nil {
		t.Fatalf("outcome %+v", o)
	}
}

func TestParallelCompensationSchedulesAllAtOnceInLIFOOrder(t *testing.T) {
	wf := bookTrip(replay.CompensationOptions{Parallel: true})
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	props = d.complete(props[1].ID, "B")
	props = fail(d, props[1].ID)
	if !slices.Equal(steps(props), []string{"b", "a"}) {
		t.Fatalf("parallel: %s %v", types(props), steps(props))
	}
	a := props[1].ID
	if p := compensated(d, a, true); len(p) != 0 {
		t.Fatalf("decided before every step ended: %s", types(p))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionFailed) {
		t.Fatalf("end: %s", types(props))
	}
	replayAll(t, wf, d.history)
}

func TestCancelRequestCompensatesAndEndsCanceled(t *testing.T) {
	wf := bookTrip(replay.CompensationOptions{})
	d := newDriver(t, wf)
	d.start()
	b := d.complete(1, "A")[1].ID
	props := d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "customer"})
	if !slices.Equal(steps(props), []string{"a"}) {
		t.Fatalf("after cancel: %s %v", types(props), steps(props))
	}
	// b's result arrives late: it changes nothing.
	if p := d.complete(b, "B"); len(p) != 0 {
		t.Fatalf("late result decided: %s", types(p))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionCanceled) {
		t.Fatalf("end: %s", types(props))
	}
	if a := props[0].Attrs.(*stream.WorkflowExecutionCanceledAttrs); a.Reason != "customer" || a.Compensation.Status != stream.CompensationCompleted {
		t.Fatalf("canceled attrs %+v", a)
	}
	replayAll(t, wf, d.history)
}

func TestRunTimeoutEndsTheSagaWithoutWaitingForTheCode(t *testing.T) {
	// The code waits in a disconnected scope, which the timeout's
	// cancellation does not reach: the saga ends all the same.
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		if _, f, _ := env.ScheduleActivity(root, "a", nil, stream.ActivityOptions{}).Get(root); f != nil {
			return nil, f
		}
		env.AddCompensation(stream.CompensationRegistration{Step: "a", ActivityType: "undo-a"})
		detached := env.NewDisconnectedScope()
		env.ScheduleActivity(detached, "slow", nil, stream.ActivityOptions{}).Get(detached)
		return nil, nil
	}
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	if s := props[1].Attrs.(*stream.ActivityTaskScheduledAttrs); !s.Detached {
		t.Fatalf("activity of a disconnected scope not marked detached: %+v", s)
	}
	props = d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRunTimeout})
	if !slices.Equal(steps(props), []string{"a"}) {
		t.Fatalf("after timeout: %s", types(props))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionTimedOut) {
		t.Fatalf("end: %s", types(props))
	}
	replayAll(t, wf, d.history)
}

func TestChangedCompensationIsNonDeterminism(t *testing.T) {
	d := newDriver(t, bookTrip(replay.CompensationOptions{}))
	d.start()
	d.complete(1, "A")
	other := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		env.ScheduleActivity(root, "a", nil, stream.ActivityOptions{}).Get(root)
		env.AddCompensation(stream.CompensationRegistration{Step: "a", ActivityType: "refund"})
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: other})
	defer m.Close()
	var nde *replay.NonDeterminismError
	if err := m.Feed(t.Context(), d.history...); !errors.As(err, &nde) {
		t.Fatalf("want non-determinism, got %v", err)
	}
}

// Code that compensates by itself, then goes on: the stack is empty
// afterwards, and the saga's end reports the outcome. Discarded
// registrations are reported as not run.
func TestExplicitCompensateAndDiscard(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		env.ScheduleActivity(root, "a", nil, stream.ActivityOptions{}).Get(root)
		env.AddCompensation(stream.CompensationRegistration{Step: "a", ActivityType: "undo-a"})
		if o := env.Compensate(); o == nil || o.Status != stream.CompensationCompleted || env.PendingCompensations() != 0 {
			return nil, &stream.Failure{Kind: "test", Message: "explicit compensation did not complete"}
		}
		env.ScheduleActivity(root, "b", nil, stream.ActivityOptions{}).Get(root)
		env.AddCompensation(stream.CompensationRegistration{Step: "b", ActivityType: "undo-b"})
		env.DiscardCompensations()
		return nil, &stream.Failure{Kind: "test", Message: "gave up"}
	}
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	if !slices.Equal(steps(props), []string{"a"}) {
		t.Fatalf("explicit compensation: %s", types(props))
	}
	props = compensated(d, props[len(props)-1].ID, true)
	if types(props) != "ActivityTaskScheduled" {
		t.Fatalf("after compensating: %s", types(props))
	}
	props = d.complete(props[0].ID, "B")
	if types(props) != "MarkerRecorded WorkflowExecutionFailed" {
		t.Fatalf("end: %s", types(props))
	}
	o := props[1].Attrs.(*stream.WorkflowExecutionFailedAttrs).Compensation
	if o.Status != stream.CompensationSkipped || o.Completed != 1 || !slices.Equal(o.NotRun, []string{"b"}) {
		t.Fatalf("outcome %+v", o)
	}
	replayAll(t, wf, d.history)
}

// A run timeout while the code compensates by itself: the saga's end
// waits for that compensation, which goes on one step at a time, and
// reports every step.
func TestRunTimeoutDuringExplicitCompensationWaitsForIt(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		for _, step := range []string{"a", "b"} {
			env.ScheduleActivity(root, step, nil, stream.ActivityOptions{}).Get(root)
			env.AddCompensation(stream.CompensationRegistration{Step: step, ActivityType: "undo-" + step})
		}
		env.Compensate()
		return nil, &stream.Failure{Kind: "test", Message: "gave up"}
	}
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	props = d.complete(props[1].ID, "B")
	undoB := props[len(props)-1]
	if steps([]stream.Event{undoB}) == nil {
		t.Fatalf("explicit compensation did not start: %s", types(props))
	}
	if p := d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRunTimeout}); len(p) != 0 {
		t.Fatalf("the timeout did not wait for the compensation under way: %s", types(p))
	}
	props = compensated(d, undoB.ID, true)
	if !slices.Equal(steps(props), []string{"a"}) {
		t.Fatalf("after undo-b: %s", types(props))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionTimedOut) {
		t.Fatalf("end: %s", types(props))
	}
	if o := props[0].Attrs.(*stream.WorkflowExecutionTimedOutAttrs).Compensation; o.Status != stream.CompensationCompleted || o.Completed != 2 {
		t.Fatalf("outcome %+v", o)
	}
	replayAll(t, wf, d.history)
}

// A step whose undo failed in an earlier Compensate does not stop a later
// compensation of other steps; the saga's outcome reports both.
func TestEachCompensateDecidesItsOwnStop(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		env.ScheduleActivity(root, "a", nil, stream.ActivityOptions{}).Get(root)
		env.AddCompensation(stream.CompensationRegistration{Step: "a", ActivityType: "undo-a"})
		if o := env.Compensate(); o.Status != stream.CompensationFailed {
			return nil, &stream.Failure{Kind: "test", Message: "undo-a should have failed"}
		}
		env.ScheduleActivity(root, "b", nil, stream.ActivityOptions{}).Get(root)
		env.AddCompensation(stream.CompensationRegistration{Step: "b", ActivityType: "undo-b"})
		return nil, &stream.Failure{Kind: "test", Message: "gave up"}
	}
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	props = compensated(d, props[len(props)-1].ID, false)
	props = d.complete(props[0].ID, "B")
	if !slices.Equal(steps(props), []string{"b"}) {
		t.Fatalf("automatic compensation after a failed explicit one: %s", types(props))
	}
	props = compensated(d, props[len(props)-1].ID, true)
	o := props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs).Compensation
	if o.Status != stream.CompensationFailed || o.Completed != 1 || !slices.Equal(o.FailedSteps, []string{"a"}) {
		t.Fatalf("outcome %+v", o)
	}
}

// Two compensations never run at once: code that compensates while the
// run timeout's compensation is under way waits for it, and the saga ends
// only once every registered step is undone.
func TestCompensationsDoNotOverlap(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		for _, step := range []string{"a", "b"} {
			env.ScheduleActivity(root, step, nil, stream.ActivityOptions{}).Get(root)
			env.AddCompensation(stream.CompensationRegistration{Step: step, ActivityType: "undo-" + step})
		}
		detached := env.NewDisconnectedScope()
		env.ScheduleActivity(detached, "slow", nil, stream.ActivityOptions{}).Get(detached)
		env.Compensate()
		return nil, &stream.Failure{Kind: "test", Message: "gave up"}
	}
	d := newDriver(t, wf)
	d.start()
	props := d.complete(1, "A")
	props = d.complete(props[1].ID, "B")
	slow := props[len(props)-1].ID
	props = d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRunTimeout})
	if !slices.Equal(steps(props), []string{"b"}) {
		t.Fatalf("after the timeout: %s", types(props))
	}
	undoB := props[0].ID
	if p := d.complete(slow, "S"); len(p) != 0 {
		t.Fatalf("a second compensation started while undo-b runs: %s %v", types(p), steps(p))
	}
	props = compensated(d, undoB, true)
	if !slices.Equal(steps(props), []string{"a"}) {
		t.Fatalf("after undo-b: %s", types(props))
	}
	props = compensated(d, props[0].ID, true)
	if types(props) != string(stream.WorkflowExecutionTimedOut) {
		t.Fatalf("end: %s", types(props))
	}
	if o := props[0].Attrs.(*stream.WorkflowExecutionTimedOutAttrs).Compensation; o.Completed != 2 || o.Status != stream.CompensationCompleted {
		t.Fatalf("outcome %+v", o)
	}
	replayAll(t, wf, d.history)
}

// A cancellation fed with the start, before any decision: the code
// schedules step a, then sees the cancellation in the same decision. a is
// proposed (replay must meet it where the code issued it) but marked
// canceled, so that the engine never runs it; the saga ends canceled.
func TestCancelInTheFirstDecisionMarksTheStepItSchedulesCanceled(t *testing.T) {
	wf := bookTrip(replay.CompensationOptions{})
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: wf})
	defer m.Close()
	inputs := []stream.Event{
		{ID: 0, SagaID: "s", Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w"}},
		{ID: 1, SagaID: "s", Type: stream.WorkflowExecutionCancelRequested, Time: t0, Attrs: &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest}},
	}
	if err := m.Feed(t.Context(), inputs...); err != nil {
		t.Fatal(err)
	}
	props := m.Propose(m.NextEventID(), t0)
	if types(props) != string(stream.ActivityTaskScheduled)+" "+string(stream.WorkflowExecutionCanceled) {
		t.Fatalf("decision: %s", types(props))
	}
	if a := props[0].Attrs.(*stream.ActivityTaskScheduledAttrs); !a.Canceled {
		t.Fatalf("step a is not marked canceled: %+v", a)
	}
	if err := m.Feed(t.Context(), props...); err != nil {
		t.Fatal(err)
	}
	replayAll(t, wf, append(inputs, props...))
	// Without the cancellation, a step is proposed as any other.
	plain := newDriver(t, wf)
	if a := plain.start()[0].Attrs.(*stream.ActivityTaskScheduledAttrs); a.Canceled {
		t.Fatal("a step scheduled without a cancellation is marked canceled")
	}
}
