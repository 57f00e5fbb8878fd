package replay

import (
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/stream"
)

// lifecycles lists the machine's commands with their states, in the order
// the code issued them.
func lifecycles(m *Machine) string {
	var s []string
	for _, c := range m.issued {
		s = append(s, c.describe()+": "+c.lifecycle().state.String())
	}
	return strings.Join(s, "; ")
}

// The lifecycle of each kind of command, live and on replay: a canceled
// scope's activity is cancel-requested, still proposed and committed, and
// done when its result arrives; markers and the completion are done once
// committed. A fresh machine fed any prefix of the history that the live
// machine recorded reaches the same commands in the same states.
func TestCommandLifecycle(t *testing.T) {
	var droppedCanceled, droppedStillCanceled bool
	wf := func(env *Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		child := env.NewScope(root)
		kept := env.ScheduleActivity(root, "kept", nil, stream.ActivityOptions{})
		dropped := env.ScheduleActivity(child, "dropped", nil, stream.ActivityOptions{})
		child.Cancel()
		_, _, droppedCanceled = dropped.Get(child)
		kept.Get(root)
		// The dropped activity's result came first; its future stays
		// canceled.
		_, _, droppedStillCanceled = dropped.Get(root)
		env.SideEffect(func() (stream.Payload, *stream.Failure) { return stream.Payload("x"), nil })
		return nil, nil
	}
	live := New(Config{SagaID: "s", Workflow: wf})
	defer live.Close()
	ctx := t.Context()

	var history []stream.Event
	var states []string // of the live machine, after each step
	var ends []int      // len(history) after each step
	step := func(typ stream.EventType, attrs any) {
		t.Helper()
		in := stream.Event{ID: live.NextEventID(), Type: typ, Time: time.Unix(int64(live.NextEventID()), 0), Attrs: attrs}
		if err := live.Feed(ctx, in); err != nil {
			t.Fatal(err)
		}
		props := live.Propose(live.NextEventID(), in.Time)
		if err := live.Feed(ctx, props...); err != nil {
			t.Fatal(err)
		}
		history = append(append(history, in), props...)
		states = append(states, lifecycles(live))
		ends = append(ends, len(history))
	}

	in := stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{}}
	if err := live.Feed(ctx, in); err != nil {
		t.Fatal(err)
	}
	history = append(history, in)
	if got, want := lifecycles(live), "ActivityTaskScheduled kept: pending; ActivityTaskScheduled dropped: cancelRequested"; got != want {
		t.Fatalf("before the proposal:\n got %s\nwant %s", got, want)
	}
	props := live.Propose(1, in.Time)
	if len(props) != 2 || props[1].Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType != "dropped" {
		t.Fatalf("a cancel-requested command is still proposed: %v", props)
	}
	if err := live.Feed(ctx, props...); err != nil {
		t.Fatal(err)
	}
	history = append(history, props...)
	states = append(states, lifecycles(live))
	ends = append(ends, len(history))
	if got, want := states[0], "ActivityTaskScheduled kept: committed; ActivityTaskScheduled dropped: cancelRequested"; got != want {
		t.Fatalf("after the proposal:\n got %s\nwant %s", got, want)
	}
	if !droppedCanceled {
		t.Fatal("Get in the canceled scope did not report the cancellation")
	}

	step(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 2})
	if got, want := states[1], "ActivityTaskScheduled kept: committed; ActivityTaskScheduled dropped: done"; got != want {
		t.Fatalf("after the dropped activity's result:\n got %s\nwant %s", got, want)
	}
	step(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1})
	want := "ActivityTaskScheduled kept: done; ActivityTaskScheduled dropped: done; MarkerRecorded side_effect: done; WorkflowExecutionCompleted: done"
	if got := states[2]; got != want {
		t.Fatalf("at the end:\n got %s\nwant %s", got, want)
	}
	if !droppedStillCanceled {
		t.Fatal("a result arriving after the cancellation reached the code")
	}

	for i, end := range ends {
		m := New(Config{SagaID: "s", Workflow: wf})
		if err := m.Feed(ctx, history[:end]...); err != nil {
			t.Fatalf("replay of %d events: %v", end, err)
		}
		if got := lifecycles(m); got != states[i] || m.Pending() != 0 {
			t.Fatalf("replay of %d events, pending %d:\n got %s\nwant %s", end, m.Pending(), got, states[i])
		}
		m.Close()
	}
}
