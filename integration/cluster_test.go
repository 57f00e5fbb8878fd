package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// paymentGate holds the payments of the orders whose id has a prefix until
// released, and says when a number of distinct orders are held.
type paymentGate struct {
	prefix  string
	want    int
	release chan struct{}
	allHeld chan struct{}

	mu   sync.Mutex
	held map[string]bool
}

func newPaymentGate(prefix string, want int) *paymentGate {
	return &paymentGate{prefix: prefix, want: want, release: make(chan struct{}), allHeld: make(chan struct{}), held: map[string]bool{}}
}

func (g *paymentGate) hook(ctx context.Context, step, orderID string) error {
	if step != order.StepProcessPayment || !strings.HasPrefix(orderID, g.prefix) {
		return nil
	}
	g.mu.Lock()
	// Distinct orders: a payment may be delivered again while held.
	if !g.held[orderID] {
		g.held[orderID] = true
		if len(g.held) == g.want {
			close(g.allHeld)
		}
	}
	g.mu.Unlock()
	select {
	case <-g.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startCommit is the commit a client appends to start an order saga.
func startCommit(t *testing.T, id, requestID string) *stream.Commit {
	t.Helper()
	input, err := stream.Marshal(orderInput(id))
	if err != nil {
		t.Fatal(err)
	}
	return &stream.Commit{SagaID: id, WorkflowType: order.Workflow.Name(), Events: []stream.Event{{
		SagaID: id, Type: stream.WorkflowExecutionStarted, Time: time.Now(),
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: order.Workflow.Name(), Input: input, RequestID: requestID},
	}}}
}

// historyLeader names the server leading the history stream, "" while it
// has none (or the request fails, as it may during an election).
func historyLeader(ctx context.Context, st *stream.Store) string {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	s, err := st.JetStream().Stream(ctx, st.Config().HistoryStream(0))
	if err != nil || s.CachedInfo().Cluster == nil {
		return ""
	}
	return s.CachedInfo().Cluster.Leader
}

// assertCalls checks that every step of the order saga ran at least once
// per saga: activities run at least once, and more after a takeover.
func assertCalls(t *testing.T, svc *order.Service, sagas int) {
	t.Helper()
	for _, step := range []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder} {
		n := svc.Calls(step)
		t.Logf("%s ran %d times for %d sagas", step, n, sagas)
		if n < sagas {
			t.Fatalf("%s ran %d times for %d sagas", step, n, sagas)
		}
	}
}

// The engine on a three-server JetStream cluster with every stream
// replicated three times, a node and a client on each server. Reads are
// direct gets answered by the replica of the server a connection is on,
// which may lag behind the leader, and an append racing another on the
// same saga may be refused as "in flight" (10164) rather than with the
// last sequence (10071). Sagas complete with correct histories through
// concurrent starts on every server, through the crash of the server
// leading the history stream while results are held, and after that
// server comes back.
//
// Most of the time goes to raft: the crash hands nothing over, so the
// survivors elect new leaders after an election timeout (4-9 s), and the
// server that comes back takes as long again to catch up.
func TestClusterOfThreeServers(t *testing.T) {
	began := time.Now()
	servers := natstest.StartCluster(t, 3)
	t.Logf("cluster up in %s", time.Since(began).Round(time.Millisecond))
	cfg := stream.Config{Replicas: 3}
	svc := order.NewService()
	gate := newPaymentGate("failover-", 12)
	svc.Hook = gate.hook

	nodes := make([]*testNode, len(servers))
	clients := make([]*saga.Client, len(servers))
	stores := make([]*stream.Store, len(servers))
	for i, srv := range servers {
		c := &cluster{t: t, srv: srv}
		nodes[i] = c.node(worker.Options{Stream: cfg, NodeName: fmt.Sprintf("node-%d", i)}, svc.Definitions()...)
		nc := srv.Conn()
		cl, err := saga.NewClient(nc, saga.ClientOptions{Stream: cfg, Logger: testLogger()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		clients[i] = cl
		stores[i] = rawStore(t, nc)
	}
	ctx := ctxTimeout(t, 2*time.Minute)
	total := 0

	// A node started without --replicas (so asking for 1) keeps every
	// stream and bucket at 3: before, it turned the replicated streams
	// into single copies on start. What it creates because it is missing
	// (as after an upgrade that adds a stream) it creates at 3 as well.
	names := []string{cfg.Defaults().TaskStream(), cfg.Defaults().HistoryStream(0), cfg.Defaults().DeadLetterStream(),
		"KV_" + cfg.Defaults().TimersBucket(), "KV_" + cfg.Defaults().ActivitiesBucket()}
	for _, missing := range names[2:] {
		if err := stores[0].JetStream().DeleteStream(ctx, missing); err != nil {
			t.Fatal(err)
		}
	}
	careless := (&cluster{t: t, srv: servers[0]}).node(worker.Options{NodeName: "careless"})
	if err := careless.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		s, err := stores[0].JetStream().Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("stream %s has %d replicas after a node asked for 1", name, r)
		}
	}

	// Concurrent starts through every server. Each saga is then checked
	// through another server, whose replica may not have it all yet.
	const concurrent = 30
	began = time.Now()
	errs := make([]error, concurrent)
	var wg sync.WaitGroup
	for i := range concurrent {
		wg.Go(func() {
			_, errs[i] = clients[i%3].Start(ctx, "order", orderInput(fmt.Sprintf("c-%d", i)), saga.StartOptions{ID: fmt.Sprintf("cluster-%d", i)})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start cluster-%d: %v", i, err)
		}
	}
	for i := range concurrent {
		assertCompleted(t, ctx, clients[(i+1)%3], fmt.Sprintf("cluster-%d", i))
	}
	total += concurrent
	assertCalls(t, svc, total)
	t.Logf("%d concurrent sagas completed in %s", concurrent, time.Since(began).Round(time.Millisecond))

	// Starts racing on one saga, two through each server: exactly one
	// lands, and every other is a concurrency conflict, whichever of the
	// two wrong-last-sequence codes the leader gives.
	const raced, racers = 4, 6
	codes := map[jetstream.ErrorCode]int{}
	for r := range raced {
		id := fmt.Sprintf("raced-%d", r)
		b := newBarrier(racers)
		errs := make([]error, racers)
		for i := range racers {
			commit := startCommit(t, id, fmt.Sprintf("request-%d", i))
			wg.Go(func() {
				if errs[i] = b.wait(ctx); errs[i] == nil {
					_, errs[i] = stores[i%3].Append(ctx, commit, 0)
				}
			})
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			var apiErr *jetstream.APIError
			switch {
			case err == nil:
				won++
			case !errors.Is(err, stream.ErrConcurrency):
				t.Fatalf("racing start of %s: %v", id, err)
			case errors.As(err, &apiErr):
				codes[apiErr.ErrorCode]++
			}
		}
		if won != 1 {
			t.Fatalf("%d of %d racing starts of %s landed", won, racers, id)
		}
	}
	t.Logf("racing starts refused with codes %v", codes)
	for r := range raced {
		assertCompleted(t, ctx, clients[r%3], fmt.Sprintf("raced-%d", r))
	}
	total += raced

	// The server leading the history stream crashes while payments are
	// held and more sagas are between steps; the results are recorded, and
	// the sagas finish, on the two servers that remain. The node that was
	// on it reconnects to one of them.
	for i := range gate.want {
		if _, err := clients[i%3].Start(ctx, "order", orderInput(fmt.Sprintf("failover-%d", i)), saga.StartOptions{ID: fmt.Sprintf("failover-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-gate.allHeld:
	case <-ctx.Done():
		t.Fatal("payments never all started")
	}
	var leader string
	natstest.WaitFor(t, 10*time.Second, "the history stream's leader", func() bool {
		leader = historyLeader(ctx, stores[0])
		return leader != ""
	})
	killed := -1
	for i, srv := range servers {
		if srv.Name() == leader {
			killed = i
		}
	}
	if killed < 0 {
		t.Fatalf("history stream leader %q is none of the servers", leader)
	}
	const inflight = 12
	errs = make([]error, inflight)
	for i := range inflight {
		wg.Go(func() {
			_, errs[i] = clients[i%3].Start(ctx, "order", orderInput(fmt.Sprintf("inflight-%d", i)), saga.StartOptions{ID: fmt.Sprintf("inflight-%d", i)})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start inflight-%d: %v", i, err)
		}
	}
	servers[killed].Kill()
	down := time.Now()
	t.Logf("killed %s, the history stream's leader", leader)
	// The results are recorded while the survivors elect a new leader.
	close(gate.release)
	survivor := stores[(killed+1)%3]
	natstest.WaitFor(t, 30*time.Second, "a new history stream leader", func() bool {
		l := historyLeader(ctx, survivor)
		return l != "" && l != leader
	})
	t.Logf("new history stream leader %s after %s", historyLeader(ctx, survivor), time.Since(down).Round(time.Millisecond))
	for i := range gate.want {
		assertCompleted(t, ctx, clients[(killed+1+i%2)%3], fmt.Sprintf("failover-%d", i))
	}
	for i := range inflight {
		assertCompleted(t, ctx, clients[(killed+1+i%2)%3], fmt.Sprintf("inflight-%d", i))
	}
	total += gate.want + inflight
	assertCalls(t, svc, total)
	t.Logf("sagas in flight at the leader's loss completed %s after it", time.Since(down).Round(time.Millisecond))

	// The server comes back (StartAgain waits until it has caught up),
	// with a node and a client of its own, and sagas run through every
	// server again.
	began = time.Now()
	servers[killed].StartAgain()
	(&cluster{t: t, srv: servers[killed]}).node(worker.Options{Stream: cfg, NodeName: fmt.Sprintf("node-%d-again", killed)}, svc.Definitions()...)
	back, err := saga.NewClient(servers[killed].Conn(), saga.ClientOptions{Stream: cfg, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(back.Close)
	clients[killed] = back
	const after = 6
	for i := range after {
		if _, err := clients[i%3].Start(ctx, "order", orderInput(fmt.Sprintf("after-%d", i)), saga.StartOptions{ID: fmt.Sprintf("after-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range after {
		assertCompleted(t, ctx, back, fmt.Sprintf("after-%d", i))
	}
	total += after
	assertCalls(t, svc, total)
	t.Logf("%s caught up and the sagas after its restart completed in %s", leader, time.Since(began).Round(time.Millisecond))
	for _, n := range nodes {
		t.Logf("%s: %+v", n.Name(), n.Stats())
	}
}
