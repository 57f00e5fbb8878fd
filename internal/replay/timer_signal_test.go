package replay_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

func fire(d *driver, createdID uint64) []stream.Event {
	return d.input(stream.TimerFired, &stream.TimerFiredAttrs{StartedEventID: createdID})
}

func signal(d *driver, name string, v any, inboxSeq uint64) []stream.Event {
	return d.input(stream.SignalReceived, &stream.SignalReceivedAttrs{Name: name, Input: payload(d.t, v), InboxSeq: inboxSeq})
}

// waitForSignalOrTimer waits for signal "go" or a 1-hour timer, whichever
// comes first, and says which, with the signal's value.
func waitForSignalOrTimer(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
	root := env.RootScope()
	timer := env.NewTimer(root, 90*time.Minute+time.Millisecond)
	env.Await(func() bool { return timer.Ready() || env.SignalPending("go") })
	out := "timer"
	if v, ok := env.TakeSignal("go"); ok {
		var s string
		_ = stream.Unmarshal(v, &s)
		out = "signal " + s
	}
	b, _ := stream.Marshal(out)
	return b, nil
}

func TestTimerIsACommandRoundedUpToWholeSeconds(t *testing.T) {
	d := newDriver(t, waitForSignalOrTimer)
	props := d.start()
	if types(props) != "TimerCreated" {
		t.Fatalf("start: %s", types(props))
	}
	if a := props[0].Attrs.(*stream.TimerCreatedAttrs); a.Duration != 90*time.Minute+time.Second {
		t.Fatalf("duration %s", a.Duration)
	}
	props = fire(d, props[0].ID)
	if types(props) != "WorkflowExecutionCompleted" || str(t, props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output) != "timer" {
		t.Fatalf("after fire: %s", types(props))
	}
	replayAll(t, waitForSignalOrTimer, d.history)
}

func TestSignalBeforeTheCodeAsksWaitsInOrder(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		env.NewTimer(root, time.Second).Get(root)
		var got []string
		for range 3 {
			v, _ := env.ReceiveSignal(root, "item")
			var s string
			_ = stream.Unmarshal(v, &s)
			got = append(got, s)
		}
		b, _ := stream.Marshal(got)
		return b, nil
	}
	d := newDriver(t, wf)
	timer := d.start()[0].ID
	for i, s := range []string{"a", "b"} {
		if p := signal(d, "item", s, uint64(i+1)); len(p) != 0 {
			t.Fatalf("decided while sleeping: %s", types(p))
		}
	}
	fire(d, timer)
	props := signal(d, "item", "c", 3)
	var got []string
	if err := stream.Unmarshal(props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output, &got); err != nil || !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("got %v %v", got, err)
	}
	replayAll(t, wf, d.history)
}

// A signal wins the race; the timer nobody waits for any more is canceled
// as the saga ends, so that its durable timer goes too.
func TestSignalWinsTheRaceAndTheLosingTimerIsCanceledAtTheEnd(t *testing.T) {
	d := newDriver(t, waitForSignalOrTimer)
	timer := d.start()[0].ID
	props := signal(d, "go", "now", 1)
	if types(props) != "TimerCanceled WorkflowExecutionCompleted" || str(t, props[1].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output) != "signal now" {
		t.Fatalf("after signal: %s", types(props))
	}
	if a := props[0].Attrs.(*stream.TimerCanceledAttrs); a.StartedEventID != timer {
		t.Fatalf("canceled %d, want %d", a.StartedEventID, timer)
	}
	replayAll(t, waitForSignalOrTimer, d.history)
}

// The saga's cancellation reaches a timer: it stops waiting at once and
// records TimerCanceled, so that the durable timer is deleted.
func TestCancellationCancelsOpenTimers(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		if _, _, canceled := env.NewTimer(root, time.Hour).Get(root); canceled {
			return nil, &stream.Failure{Kind: "Cancelled", Message: "canceled"}
		}
		return nil, nil
	}
	d := newDriver(t, wf)
	timer := d.start()[0].ID
	props := d.input(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest})
	if types(props) != "TimerCanceled WorkflowExecutionCanceled" {
		t.Fatalf("after cancel: %s", types(props))
	}
	if a := props[0].Attrs.(*stream.TimerCanceledAttrs); a.StartedEventID != timer {
		t.Fatalf("canceled %d, want %d", a.StartedEventID, timer)
	}
	replayAll(t, wf, d.history)
}

// A timer canceled in the same decision that created it names the id it
// is proposed at.
func TestTimerCanceledInTheDecisionThatCreatedIt(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		s := env.NewScope(env.RootScope())
		env.NewTimer(s, time.Hour)
		s.Cancel()
		root := env.RootScope()
		env.NewTimer(root, time.Second).Get(root)
		return nil, nil
	}
	d := newDriver(t, wf)
	props := d.start()
	if types(props) != "TimerCreated TimerCanceled TimerCreated" {
		t.Fatalf("start: %s", types(props))
	}
	if a := props[1].Attrs.(*stream.TimerCanceledAttrs); a.StartedEventID != props[0].ID {
		t.Fatalf("canceled %d, want %d", a.StartedEventID, props[0].ID)
	}
	fire(d, props[2].ID)
	replayAll(t, wf, d.history)
}

func TestQueryReadsStateAndChangesNothing(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		phase := "sleeping"
		env.SetQueryHandler("phase", func(stream.Payload) (stream.Payload, error) {
			b, _ := stream.Marshal(phase)
			return b, nil
		})
		env.SetQueryHandler("bad", func(stream.Payload) (stream.Payload, error) {
			env.NewTimer(env.RootScope(), time.Second) // a decision: refused
			return nil, nil
		})
		root := env.RootScope()
		env.NewTimer(root, time.Second).Get(root)
		phase = "awake"
		env.ReceiveSignal(root, "never")
		return nil, nil
	}
	d := newDriver(t, wf)
	timer := d.start()[0].ID
	query := func(name string) (string, error) {
		out, err := d.m.Query(name, nil)
		if err != nil {
			return "", err
		}
		return str(t, out), nil
	}
	if got, err := query("phase"); err != nil || got != "sleeping" {
		t.Fatalf("phase %q %v", got, err)
	}
	fire(d, timer)
	if got, err := query("phase"); err != nil || got != "awake" {
		t.Fatalf("phase %q %v", got, err)
	}
	if _, err := query("nope"); !errors.Is(err, replay.ErrUnknownQuery) {
		t.Fatalf("unknown query: %v", err)
	}
	before := d.m.Pending()
	if _, err := query("bad"); !errors.Is(err, replay.ErrQueryChangesState) {
		t.Fatalf("query that decides: %v", err)
	}
	if d.m.Pending() != before || d.m.Err() != nil {
		t.Fatalf("the query changed the machine: pending %d, err %v", d.m.Pending(), d.m.Err())
	}
}

// A query handler that cancels a scope, waits, or never returns changes
// nothing: the first two fail the query, the last fails it after the
// deadlock timeout and leaves the machine for the driver to drop.
func TestQueryHandlersCannotChangeOrHoldTheSaga(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		s := env.NewScope(env.RootScope())
		timer := env.NewTimer(s, time.Hour)
		env.SetQueryHandler("cancel", func(stream.Payload) (stream.Payload, error) { s.Cancel(); return nil, nil })
		env.SetQueryHandler("wait", func(stream.Payload) (stream.Payload, error) { timer.Get(s); return nil, nil })
		env.SetQueryHandler("hang", func(stream.Payload) (stream.Payload, error) { <-release; return nil, nil })
		env.ReceiveSignal(env.RootScope(), "never")
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", WorkflowType: "w", Workflow: wf, DeadlockTimeout: 200 * time.Millisecond})
	defer m.Close()
	start := stream.Event{ID: 0, SagaID: "s", Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w"}}
	if err := m.Feed(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	pending := m.Pending()
	for _, name := range []string{"cancel", "wait"} {
		if _, err := m.Query(name, nil); !errors.Is(err, replay.ErrQueryChangesState) {
			t.Fatalf("query %s: %v", name, err)
		}
		if m.Pending() != pending || m.Err() != nil {
			t.Fatalf("query %s changed the machine: pending %d, err %v", name, m.Pending(), m.Err())
		}
	}
	if _, err := m.Query("hang", nil); !errors.Is(err, replay.ErrDeadlock) {
		t.Fatalf("query hang: %v", err)
	}
	if m.Err() == nil {
		t.Fatal("a machine whose query overran is still usable")
	}
}
