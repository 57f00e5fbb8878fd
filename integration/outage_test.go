package integration

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/worker"
)

// The NATS server goes away while sagas are in flight, with activities
// running whose results cannot be recorded, and comes back: the node keeps
// running, reconnects, and every saga completes with one result per
// activity; no activity whose result was recorded before the outage runs
// again.
func TestServerRestartMidSaga(t *testing.T) {
	c := newCluster(t)
	svc := order.NewService()
	const sagas = 12
	release := make(chan struct{})
	var mu sync.Mutex
	holding := 0
	allHeld := make(chan struct{})
	svc.Hook = func(ctx context.Context, step, _ string) error {
		if step != order.StepProcessPayment {
			return nil
		}
		mu.Lock()
		holding++
		if holding == sagas {
			close(allHeld)
		}
		mu.Unlock()
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	node := c.node(worker.Options{NodeName: "steadfast"}, svc.Definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 90*time.Second)
	for i := range sagas {
		if _, err := cl.Start(ctx, "order", orderInput(fmt.Sprintf("o-%d", i)), saga.StartOptions{ID: fmt.Sprintf("outage-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-allHeld:
	case <-ctx.Done():
		t.Fatal("payments never all started")
	}

	c.srv.Shutdown()
	natstest.WaitFor(t, 10*time.Second, "the node to lose its connection", func() bool {
		return node.nc.Status() != nats.CONNECTED
	})
	// The payments finish while the server is down: their results must
	// wait for it rather than be lost.
	close(release)
	c.srv.StartAgain()

	for i := range sagas {
		assertCompleted(t, ctx, cl, fmt.Sprintf("outage-%d", i))
	}
	if got := svc.Calls(order.StepReserveInventory); got != sagas {
		t.Fatalf("reserve-inventory ran %d times for %d sagas: results recorded before the outage were run again", got, sagas)
	}
	// Payments run at least once; a second run needs the task's AckWait to
	// expire before the held result is recorded.
	t.Logf("process-payment ran %d times for %d sagas", svc.Calls(order.StepProcessPayment), sagas)
	if got := svc.Calls(order.StepProcessPayment); got < sagas {
		t.Fatalf("process-payment ran %d times for %d sagas", got, sagas)
	}

	// The node is still serving: a saga started after the outage completes.
	if _, err := cl.Start(ctx, "order", orderInput("after"), saga.StartOptions{ID: "after-outage"}); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Wait(ctx, "after-outage")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga after the outage: %v %+v", err, d)
	}
}
