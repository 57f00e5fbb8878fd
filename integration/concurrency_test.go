package integration

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// barrier lets n parties through only once all have arrived.
type barrier struct {
	mu      sync.Mutex
	arrived int
	n       int
	all     chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, all: make(chan struct{})} }

func (b *barrier) wait(ctx context.Context) error {
	b.mu.Lock()
	b.arrived++
	if b.arrived == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Acceptance 3: two deciders race on one saga. Both decide from the same
// history and append at the same expected sequence: exactly one append
// wins; the loser re-reads, finds the decision made, and adds nothing.
func TestRacingDecidersAppendOnce(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 20*time.Second)
	// Streams exist once any node has started; this one only serves reads.
	c.node(worker.Options{NodeName: "bystander", DisableAPI: true})
	if _, err := cl.Start(ctx, "order", orderInput("o-5"), saga.StartOptions{ID: "race-1"}); err != nil {
		t.Fatal(err)
	}

	b := newBarrier(2)
	var appendsTried atomic.Int32
	hooks := &worker.Hooks{BeforeAppend: func(ctx context.Context, _ string, _ *stream.Commit) error {
		if appendsTried.Add(1) <= 2 {
			return b.wait(ctx) // both deciders hold the same expected sequence
		}
		return nil
	}}
	var deciders []*worker.Node
	for _, name := range []string{"decider-a", "decider-b"} {
		reg := saga.NewRegistry()
		reg.MustRegister(order.Workflow)
		n, err := worker.New(c.srv.Conn(), reg, worker.Options{NodeName: name, Hooks: hooks, Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop(context.Background()) })
		deciders = append(deciders, n)
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i, n := range deciders {
		wg.Go(func() { errs[i] = n.Wake(ctx, "race-1") })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("decider: %v", err)
		}
	}
	if got := appendsTried.Load(); got != 2 {
		t.Fatalf("%d appends tried, want 2 (one each; the loser must not try again)", got)
	}
	commits := deciders[0].Stats().Commits + deciders[1].Stats().Commits
	conflicts := deciders[0].Stats().Conflicts + deciders[1].Stats().Conflicts
	if commits != 1 || conflicts != 1 {
		t.Fatalf("%d commits landed and %d lost, want 1 and 1", commits, conflicts)
	}
	events, err := cl.History(ctx, "race-1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := eventTypes(events), []stream.EventType{stream.WorkflowExecutionStarted, stream.ActivityTaskScheduled}; !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
}

// Acceptance 4: one saga id started twice, one after the other and from
// many clients at once: one history, ErrAlreadyStarted for every other.
func TestStartIsIdempotent(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	c.node(worker.Options{}, svc.Definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 20*time.Second)

	if _, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("o-6"), saga.StartOptions{ID: "once"}); err != nil {
		t.Fatal(err)
	}
	_, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("o-6"), saga.StartOptions{ID: "once"})
	if !errors.Is(err, saga.ErrAlreadyStarted) || !errors.Is(err, saga.KindValidation) {
		t.Fatalf("second start: got %v, want ErrAlreadyStarted", err)
	}
	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("o-6"), saga.StartOptions{ID: "once", IfExists: saga.IfExistsUseExisting})
	if err != nil || !run.Existing {
		t.Fatalf("start with IfExistsUseExisting: %v, existing=%v", err, run != nil && run.Existing)
	}
	if _, err := run.Get(ctx); err != nil {
		t.Fatal(err)
	}

	// Many clients, each on its own connection, start one id at once.
	const clients, perClient = 4, 8
	var wins, already atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range clients {
		other := c.client()
		for range perClient {
			wg.Go(func() {
				<-start
				_, err := other.Start(ctx, "order", orderInput("o-7"), saga.StartOptions{ID: "contended"})
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, saga.ErrAlreadyStarted):
					already.Add(1)
				default:
					t.Errorf("start: %v", err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || already.Load() != clients*perClient-1 {
		t.Fatalf("%d starts won and %d were refused, want 1 and %d", wins.Load(), already.Load(), clients*perClient-1)
	}
	d, err := cl.Wait(ctx, "contended")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("contended saga: %v %+v", err, d)
	}
	events, err := cl.History(ctx, "contended")
	if err != nil {
		t.Fatal(err)
	}
	starts := 0
	for _, e := range events {
		if e.Type == stream.WorkflowExecutionStarted {
			starts++
		}
	}
	if starts != 1 {
		t.Fatalf("%d start events in one history", starts)
	}
	if svc.Calls(order.StepReserveInventory) != 2 {
		t.Fatalf("reserve-inventory ran %d times for two sagas", svc.Calls(order.StepReserveInventory))
	}
}
