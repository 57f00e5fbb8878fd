package worker_test

import (
	"errors"
	"strconv"
	"testing"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// commitsOf reads a saga's history commit by commit.
func commitsOf(t *testing.T, e *env, id string) []stream.StoredCommit {
	t.Helper()
	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	commits, err := st.Read(e.ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	return commits
}

// A saga started through the client of a node that runs its workflow is
// appended with its first decision: [Started, Scheduled] in one commit,
// so an order saga takes 4 commits instead of 5, and the node replays
// nothing to take it up.
func TestStartCommitCarriesTheFirstDecision(t *testing.T) {
	e := newEnv(t)
	n := e.node(worker.Options{}, order.NewService().Definitions()...)
	const id = "decided-start"
	r, err := saga.StartWorkflow(e.ctx, n.Client(), order.Workflow, order.Input{OrderID: id, Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3}, saga.StartOptions{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(e.ctx); err != nil {
		t.Fatal(err)
	}
	commits := commitsOf(t, e, id)
	first := commits[0].Commit
	if len(first.Events) < 2 || first.Events[0].Type != stream.WorkflowExecutionStarted || first.Events[1].Type != stream.ActivityTaskScheduled || !first.Decided {
		t.Fatalf("first commit %v (decided %v), want the start and the first activity, decided", eventTypes(first.Events), first.Decided)
	}
	if len(commits) != 4 {
		t.Fatalf("%d commits, want 4", len(commits))
	}
	// A second start of the id lands nothing, decision included.
	_, err = saga.StartWorkflow(e.ctx, n.Client(), order.Workflow, order.Input{OrderID: id}, saga.StartOptions{ID: id})
	if !errors.Is(err, saga.ErrAlreadyStarted) {
		t.Fatalf("second start: %v, want ErrAlreadyStarted", err)
	}
	if got := len(commitsOf(t, e, id)); got != 4 {
		t.Fatalf("%d commits after the second start, want 4", got)
	}
	// The same request retried is its own earlier start.
	res, err := n.Client().Start(e.ctx, "order", order.Input{OrderID: "req"}, saga.StartOptions{ID: "req-1", RequestID: "r-1"})
	if err != nil || res.Existing {
		t.Fatal(res, err)
	}
	if res, err = n.Client().Start(e.ctx, "order", order.Input{OrderID: "req"}, saga.StartOptions{ID: "req-1", RequestID: "r-1"}); err != nil || res.ID != "req-1" {
		t.Fatalf("retried start: %+v, %v", res, err)
	}
}

// A start the node cannot decide on goes in alone, and the dispatcher
// gives it its verdict as before: a workflow that panics at once is
// blocked, one this node does not register is decided elsewhere, and
// with the option off every start goes alone.
func TestStartWithoutADecision(t *testing.T) {
	e := newEnv(t)
	panics := saga.NewWorkflow("panics-at-start", 1, func(ctx saga.Context, _ int) (int, error) {
		panic("bug in workflow code")
	})
	other := saga.NewWorkflow("elsewhere", 1, func(ctx saga.Context, in int) (int, error) { return in + 1, nil })
	n := e.node(worker.Options{}, panics)
	off := e.node(worker.Options{DisableDecideOnStart: true}, other)

	if _, err := saga.StartWorkflow(e.ctx, n.Client(), panics, 0, saga.StartOptions{ID: "panics-1"}); err != nil {
		t.Fatal(err)
	}
	d, err := e.cl.Wait(e.ctx, "panics-1")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedPanic {
		t.Fatalf("%+v, %v", d, err)
	}
	if first := commitsOf(t, e, "panics-1")[0].Commit; len(first.Events) != 1 {
		t.Fatalf("first commit %v, want the start alone", eventTypes(first.Events))
	}

	for i, c := range []*saga.Client{n.Client(), off.Client()} {
		id := "elsewhere-" + strconv.Itoa(i)
		r, err := saga.StartWorkflow(e.ctx, c, other, 1, saga.StartOptions{ID: id})
		if err != nil {
			t.Fatal(err)
		}
		if out, err := r.Get(e.ctx); err != nil || out != 2 {
			t.Fatalf("%s: %d, %v", id, out, err)
		}
		if first := commitsOf(t, e, id)[0].Commit; len(first.Events) != 1 {
			t.Fatalf("%s: first commit %v, want the start alone", id, eventTypes(first.Events))
		}
	}
}

func eventTypes(events []stream.Event) []stream.EventType {
	out := make([]stream.EventType, len(events))
	for i, e := range events {
		out[i] = e.Type
	}
	return out
}

// A client set to another history shard count than the engine's is
// refused before it writes: it would append starts to streams the nodes
// do not read them from, and could start a second history for an id.
func TestClientWithAnotherShardCountIsRefused(t *testing.T) {
	e := newEnv(t)
	e.node(worker.Options{}, order.NewService().Definitions()...)
	cl, err := saga.NewClient(e.srv.Conn(), saga.ClientOptions{Stream: stream.Config{HistoryShards: 2}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Start(e.ctx, "order", order.Input{OrderID: "x"}, saga.StartOptions{ID: "wrong-shards"})
	if !errors.Is(err, stream.ErrShardsMismatch) || !errors.Is(err, saga.KindConfiguration) {
		t.Fatalf("start from a client with 2 shards on an engine of 1: %v", err)
	}
	if _, err := e.cl.Describe(e.ctx, "wrong-shards"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("the refused start left a saga: %v", err)
	}
}
