package replay_test

import (
	"testing"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

func TestScopeCancellationReachesDescendantsOnly(t *testing.T) {
	type observed struct{ root, parent, child, grandchild, sibling, disconnected, bornCanceled, childAlone bool }
	var got observed
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		parent := env.NewScope(root)
		child := env.NewScope(parent)
		grandchild := env.NewScope(child)
		sibling := env.NewScope(root)
		disconnected := env.NewDisconnectedScope()

		// A child's own cancellation does not reach up.
		lone := env.NewScope(env.NewScope(root))
		lone.Cancel()
		got.childAlone = lone.Canceled() && !root.Canceled()

		parent.Cancel()
		parent.Cancel() // a second cancel does nothing
		got.root, got.parent, got.child, got.grandchild = root.Canceled(), parent.Canceled(), child.Canceled(), grandchild.Canceled()
		got.sibling, got.disconnected = sibling.Canceled(), disconnected.Canceled()
		got.bornCanceled = env.NewScope(parent).Canceled()
		return nil, nil
	}
	d := newDriver(t, wf)
	d.start()
	want := observed{parent: true, child: true, grandchild: true, bornCanceled: true, childAlone: true}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

// A waiter whose scope is canceled stops waiting at once; the activity,
// started in a disconnected scope, still delivers its result to a waiter
// in that scope, on every replay alike.
func TestGetReturnsWhenTheWaitersScopeIsCanceled(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		root := env.RootScope()
		waiter := env.NewScope(root)
		cleanup := env.NewDisconnectedScope()
		refund := env.ScheduleActivity(cleanup, "refund", nil, stream.ActivityOptions{})
		env.Go(func(env *replay.Env) {
			env.ScheduleActivity(root, "trigger", nil, stream.ActivityOptions{}).Get(root)
			root.Cancel() // reaches waiter, not cleanup
		})
		_, _, canceled := refund.Get(waiter)
		if !canceled {
			return nil, &stream.Failure{Message: "the canceled waiter got a result"}
		}
		if refund.Ready() {
			return nil, &stream.Failure{Message: "a disconnected activity's future was canceled"}
		}
		v, f, canceled := refund.Get(cleanup)
		if f != nil || canceled {
			return nil, &stream.Failure{Message: "the cleanup waiter did not get the result"}
		}
		return v, nil
	}
	d := newDriver(t, wf)
	if props := d.start(); types(props) != "ActivityTaskScheduled ActivityTaskScheduled" {
		t.Fatalf("proposed %v", types(props))
	}
	if props := d.complete(2, "triggered"); len(props) != 0 {
		t.Fatalf("proposed %v before the refund's result", types(props))
	}
	props := d.complete(1, "refunded")
	if types(props) != "WorkflowExecutionCompleted" {
		t.Fatalf("proposed %v", props)
	}
	if got := str(t, props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output); got != "refunded" {
		t.Fatalf("output %q", got)
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	if err := m.Feed(t.Context(), d.history...); err != nil || m.Pending() != 0 || !m.Finished() {
		t.Fatalf("replay: %v, pending %d", err, m.Pending())
	}
}

// An activity in a canceled scope is never scheduled: its future is
// canceled at once, and replay issues nothing for it either.
func TestScheduleInACanceledScopeIssuesNothing(t *testing.T) {
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		s := env.NewScope(env.RootScope())
		s.Cancel()
		f := env.ScheduleActivity(s, "never", nil, stream.ActivityOptions{})
		if !f.Ready() {
			return nil, &stream.Failure{Message: "the future of an unscheduled activity is not ready"}
		}
		if _, _, canceled := f.Get(env.RootScope()); !canceled {
			return nil, &stream.Failure{Message: "the future of an unscheduled activity is not canceled"}
		}
		env.ScheduleActivity(env.RootScope(), "after", nil, stream.ActivityOptions{}).Get(env.RootScope())
		return nil, nil
	}
	d := newDriver(t, wf)
	props := d.start()
	if types(props) != "ActivityTaskScheduled" || props[0].Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType != "after" {
		t.Fatalf("proposed %v", props)
	}
	if props := d.complete(1, "ok"); types(props) != "WorkflowExecutionCompleted" {
		t.Fatalf("proposed %v", props)
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	if err := m.Feed(t.Context(), d.history...); err != nil || m.Pending() != 0 || !m.Finished() {
		t.Fatalf("replay: %v, pending %d", err, m.Pending())
	}
}
