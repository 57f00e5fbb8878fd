package integration

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testLogger shows node logs when SAGA_TEST_LOG is set.
func testLogger() *slog.Logger { return natstest.Logger() }

// cluster is one embedded nats-server with any number of nodes, each on
// its own connection so that a node can be cut off alone.
type cluster struct {
	t   *testing.T
	srv *natstest.Server
}

func newCluster(t *testing.T) *cluster {
	return &cluster{t: t, srv: natstest.Start(t)}
}

type testNode struct {
	*worker.Node
	nc *nats.Conn
}

// node starts a node registering defs. Its AckWait is short so that a
// takeover after a crash happens within the test's time, its deadlock
// timeout long.
func (c *cluster) node(opts worker.Options, defs ...saga.Definition) *testNode {
	c.t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		c.t.Fatal(err)
	}
	if opts.AckWait == 0 {
		opts.AckWait = 2 * time.Second
	}
	if opts.DeadlockTimeout == 0 {
		// A loaded race-enabled run can stall a step for a second.
		opts.DeadlockTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	nc := c.srv.Conn()
	n, err := worker.New(nc, reg, opts)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Stop(ctx)
	})
	return &testNode{Node: n, nc: nc}
}

// kill makes a node vanish as a crashed process would: its connection
// drops first, so nothing it does afterwards reaches NATS, then its
// goroutines are stopped without acknowledging anything.
func (n *testNode) kill(t *testing.T) {
	t.Helper()
	n.nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.StopAndCancel(ctx); err != nil {
		t.Fatalf("stop killed node: %v", err)
	}
}

func (c *cluster) client() *saga.Client {
	c.t.Helper()
	cl, err := saga.NewClient(c.srv.Conn(), saga.ClientOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(cl.Close)
	return cl
}

// rawStore opens the history log on nc, for tests that read or write
// below the client (a foreign writer, a forged history).
func rawStore(t *testing.T, nc *nats.Conn) *stream.Store {
	t.Helper()
	st, err := stream.Open(nc, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// store opens the history log on a connection of its own.
func (c *cluster) store() *stream.Store { return rawStore(c.t, c.srv.Conn()) }

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func eventTypes(events []stream.Event) []stream.EventType {
	out := make([]stream.EventType, len(events))
	for i, e := range events {
		out[i] = e.Type
	}
	return out
}

func orderInput(id string) order.Input {
	return order.Input{OrderID: id, Items: []order.Item{{SKU: "book", Qty: 2}}, Amount: 42.5}
}
