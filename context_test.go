package saga_test

import (
	"errors"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// localRun runs a workflow definition the way a node does, on a replay
// machine and without NATS: it feeds inputs and commits the decisions.
type localRun struct {
	t       *testing.T
	wf      replay.WorkflowFunc
	m       *replay.Machine
	history []stream.Event
}

func newLocalRun(t *testing.T, w *saga.Workflow[string, string]) *localRun {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(w); err != nil {
		t.Fatal(err)
	}
	rw, _ := reg.Workflow(w.Name())
	r := &localRun{t: t, wf: rw.Func, m: replay.New(replay.Config{SagaID: "s", WorkflowType: rw.Name, Workflow: rw.Func})}
	t.Cleanup(r.m.Close)
	return r
}

// input feeds one input event and returns the decision it led to.
func (r *localRun) input(typ stream.EventType, attrs any) []stream.Event {
	r.t.Helper()
	e := stream.Event{ID: r.m.NextEventID(), SagaID: "s", Type: typ, Time: time.Unix(int64(r.m.NextEventID()), 0), Attrs: attrs}
	if err := r.m.Feed(r.t.Context(), e); err != nil {
		r.t.Fatalf("feed %s: %v", typ, err)
	}
	props := r.m.Propose(r.m.NextEventID(), e.Time)
	if err := r.m.Feed(r.t.Context(), props...); err != nil {
		r.t.Fatalf("feed the decision: %v", err)
	}
	r.history = append(append(r.history, e), props...)
	return props
}

func (r *localRun) start(in string) []stream.Event {
	return r.input(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{Input: mustPayload(r.t, in)})
}

func (r *localRun) complete(scheduledID uint64, result string) []stream.Event {
	return r.input(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: scheduledID, Result: mustPayload(r.t, result)})
}

// replays checks that the recorded history replays on a new machine with
// nothing left to decide.
func (r *localRun) replays() {
	r.t.Helper()
	m := replay.New(replay.Config{SagaID: "s", Workflow: r.wf})
	defer m.Close()
	if err := m.Feed(r.t.Context(), r.history...); err != nil || m.Pending() != 0 {
		r.t.Fatalf("replay: %v, pending %d", err, m.Pending())
	}
}

func mustPayload(t *testing.T, v any) stream.Payload {
	t.Helper()
	p, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func scheduled(events []stream.Event) []string {
	var names []string
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok {
			names = append(names, a.ActivityType)
		}
	}
	return names
}

// What workflow code sees of a canceled context: Err, Done, the futures
// started in it, activities started after, a thread waiting on Done, and
// compensation in a disconnected context.
func TestWorkflowContextCancellation(t *testing.T) {
	reserve := saga.NewActivity[string, string]("reserve", nil)
	charge := saga.NewActivity[string, string]("charge", nil)
	refund := saga.NewActivity[string, string]("refund", nil)
	var (
		errBefore, errAfter, parentErr, cleanupErr error
		readyBefore, readyAfter, futureReady       bool
		getErr, chargeErr                          error
		woke                                       bool
	)
	wf := saga.NewWorkflow("cancel", 1, func(ctx saga.Context, in string) (string, error) {
		child, cancel := saga.WithCancel(ctx)
		child.Go(func(c saga.Context) {
			c.Await(c.Done().Ready) // the thread runs in child's scope
			woke = true
		})
		reserved := saga.ExecuteActivity(child, reserve, in)
		errBefore, readyBefore = child.Err(), child.Done().Ready()

		cancel()
		errAfter, readyAfter, parentErr = child.Err(), child.Done().Ready(), ctx.Err()
		futureReady = reserved.Ready()
		_, getErr = reserved.Get(child)
		_, chargeErr = saga.ExecuteActivity(child, charge, in).Get(child)

		cleanup := saga.NewDisconnectedContext(child)
		cleanupErr = cleanup.Err()
		out, err := saga.ExecuteActivity(cleanup, refund, in).Get(cleanup)
		if !woke {
			return "", errors.New("the thread waiting on Done did not wake")
		}
		return out, err
	})
	r := newLocalRun(t, wf)
	props := r.start("order-1")
	if got := scheduled(props); len(got) != 2 || got[0] != "reserve" || got[1] != "refund" {
		t.Fatalf("scheduled %v, want [reserve refund]: nothing in a canceled context", got)
	}

	if errBefore != nil || readyBefore {
		t.Fatalf("before cancel: Err %v, Done ready %v", errBefore, readyBefore)
	}
	wantKind(t, errAfter, saga.KindCancelled, "Err after cancel")
	if !errors.Is(errAfter, saga.ErrCanceled) || !readyAfter {
		t.Fatalf("after cancel: Err %v, Done ready %v", errAfter, readyAfter)
	}
	if parentErr != nil || cleanupErr != nil {
		t.Fatalf("cancellation reached the parent (%v) or a disconnected context (%v)", parentErr, cleanupErr)
	}
	if !futureReady {
		t.Fatal("the future of an activity in a canceled context is not ready")
	}
	for what, err := range map[string]error{"Get in the canceled context": getErr, "ExecuteActivity in the canceled context": chargeErr} {
		wantKind(t, err, saga.KindCancelled, what)
		if !errors.Is(err, saga.ErrCanceled) {
			t.Fatalf("%s: %v does not match ErrCanceled", what, err)
		}
	}

	props = r.complete(2, "refunded")
	if len(props) != 1 || props[0].Type != stream.WorkflowExecutionCompleted {
		t.Fatalf("proposed %v", props)
	}
	var out string
	if err := stream.Unmarshal(props[0].Attrs.(*stream.WorkflowExecutionCompletedAttrs).Output, &out); err != nil || out != "refunded" {
		t.Fatalf("output %q, %v", out, err)
	}
	r.replays()
}

// Get returns early when the waiter's context is canceled, even if the
// activity's own context is not; the result still reaches a waiter whose
// context is live.
func TestGetInACanceledContextStopsWaiting(t *testing.T) {
	ship := saga.NewActivity[string, string]("ship", nil)
	var waitErr error
	wf := saga.NewWorkflow("wait", 1, func(ctx saga.Context, in string) (string, error) {
		shipped := saga.ExecuteActivity(ctx, ship, in)
		impatient, cancel := saga.WithCancel(ctx)
		ctx.Go(func(ctx saga.Context) { cancel() })
		_, waitErr = shipped.Get(impatient)
		return shipped.Get(ctx)
	})
	r := newLocalRun(t, wf)
	if got := scheduled(r.start("parcel")); len(got) != 1 {
		t.Fatalf("scheduled %v", got)
	}
	if !errors.Is(waitErr, saga.ErrCanceled) {
		t.Fatalf("Get in a context canceled while waiting: %v", waitErr)
	}
	props := r.complete(1, "shipped")
	if len(props) != 1 || props[0].Type != stream.WorkflowExecutionCompleted {
		t.Fatalf("proposed %v", props)
	}
	r.replays()
}
