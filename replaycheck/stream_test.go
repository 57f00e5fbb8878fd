package replaycheck_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

var greet = saga.NewWorkflow("greet", 1, func(_ saga.Context, name string) (string, error) { return "hello " + name, nil })

// runSagas runs sagas to their end on a node with the order example and
// greet, and stops the node: the check needs none.
func runSagas(t *testing.T, srv *natstest.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	reg := registry(t, append(order.NewService().Definitions(), greet)...)
	node, err := worker.New(srv.Conn(), reg, worker.Options{NodeName: "n", Logger: natstest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := node.Stop(ctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	}()
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	starts := map[string]struct {
		typ string
		in  any
	}{
		"o-1": {"order", order.Input{OrderID: "o-1", Items: []order.Item{{SKU: "book", Qty: 1}}, Amount: 10}},
		"o-2": {"order", order.Input{OrderID: "o-2", Amount: 20, FailStep: order.StepShipOrder}}, // compensates
		"g-1": {"greet", "ann"},
	}
	for id, s := range starts {
		if _, err := cl.Start(ctx, s.typ, s.in, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for id := range starts {
		if d, err := cl.Wait(ctx, id); err != nil || !d.Status.Terminal() {
			t.Fatalf("%s: %v %+v", id, err, d)
		}
	}
}

func openStore(t *testing.T, srv *natstest.Server, cfg stream.Config) *stream.Store {
	t.Helper()
	st, err := stream.Open(srv.Conn(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestStreamSource(t *testing.T) {
	srv := natstest.Start(t)
	runSagas(t, srv)
	ctx := t.Context()
	// A message some other client published on a history subject.
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "saga.h.0.junk", []byte("not a commit")); err != nil {
		t.Fatal(err)
	}
	src := replaycheck.NewStreamSource(openStore(t, srv, stream.Config{}))

	ids, err := src.SagaIDs(ctx, replaycheck.Filter{})
	if err != nil || !slices.Equal(ids, []string{"g-1", "junk", "o-1", "o-2"}) {
		t.Fatalf("ids %v %v", ids, err)
	}
	// The type is read from each saga's last commit; one that does not
	// decode is kept for Events to report.
	ids, err = src.SagaIDs(ctx, replaycheck.Filter{Type: "order"})
	if err != nil || !slices.Equal(ids, []string{"junk", "o-1", "o-2"}) {
		t.Fatalf("order ids %v %v", ids, err)
	}
	events, err := src.Events(ctx, "o-2")
	if err != nil || events[0].Type != stream.WorkflowExecutionStarted || events[len(events)-1].Type != stream.WorkflowExecutionFailed {
		t.Fatalf("events %v %v", events, err)
	}
	for i, e := range events {
		if e.ID != uint64(i) {
			t.Fatalf("event %d has id %d", i, e.ID)
		}
	}
	if _, err := src.Events(ctx, "nobody"); !errors.Is(err, stream.ErrNotFound) {
		t.Fatalf("missing saga: %v", err)
	}
	if _, err := src.Events(ctx, "junk"); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("junk: %v", err)
	}

	rep, err := replaycheck.Check(ctx, src, registry(t, order.NewService().Definitions()...), replaycheck.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := counts(rep); got != "checked 3 ok 2 failed 1 newer 0 skipped 1" || rep.SkippedTypes["greet"] != 1 {
		t.Fatalf("%s %+v", got, rep)
	}
	if f := rep.Failures[0]; f.SagaID != "junk" || f.Kind != replaycheck.KindCorrupt {
		t.Fatalf("failure %+v", f)
	}
}

func TestStreamSourceNeedsTheEnginesShardCount(t *testing.T) {
	srv := natstest.Start(t)
	ctx := t.Context()
	st := openStore(t, srv, stream.Config{})
	if err := st.EnsureStreams(ctx, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	// Streams not set up under this prefix.
	if _, err := replaycheck.NewStreamSource(openStore(t, srv, stream.Config{Prefix: "other"})).SagaIDs(ctx, replaycheck.Filter{}); !errors.Is(err, stream.ErrNoStream) {
		t.Fatalf("other prefix: %v", err)
	}
	// More shards than the engine has.
	if _, err := replaycheck.NewStreamSource(openStore(t, srv, stream.Config{HistoryShards: 2})).SagaIDs(ctx, replaycheck.Filter{}); !errors.Is(err, stream.ErrNoStream) {
		t.Fatalf("2 shards of 1: %v", err)
	}
	// Fewer: the sagas of the second shard would go unchecked.
	two := openStore(t, srv, stream.Config{Prefix: "two", HistoryShards: 2})
	if err := two.EnsureStreams(ctx, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	if _, err := replaycheck.NewStreamSource(openStore(t, srv, stream.Config{Prefix: "two"})).SagaIDs(ctx, replaycheck.Filter{}); !errors.Is(err, replaycheck.ErrShardsMismatch) {
		t.Fatalf("1 shard of 2: %v", err)
	}
	ids, err := replaycheck.NewStreamSource(two).SagaIDs(ctx, replaycheck.Filter{})
	if err != nil || len(ids) != 0 {
		t.Fatalf("2 of 2: %v %v", ids, err)
	}
}
