package cli

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/stream"
)

// sagaRunner starts order sagas and times each from its start to the
// commit that ends it, seen on a subscription to every history subject.
type sagaRunner struct {
	cl  *saga.Client
	sub *nats.Subscription

	ended atomic.Int64 // sagas of the current phase that ended, for progress

	mu        sync.Mutex
	startedAt map[string]time.Time
	latencies []time.Duration
	failed    int
	events    uint64 // in the histories of the sagas that ended
	done      chan struct{}
}

// maxStarters bounds the goroutines that start sagas in a loaded run.
const maxStarters = 16

func newSagaRunner(nc *nats.Conn, cl *saga.Client, cfg stream.Config) (*sagaRunner, error) {
	r := &sagaRunner{cl: cl, startedAt: map[string]time.Time{}}
	sub, err := nc.Subscribe(cfg.Prefix+".h.*.*", r.observe)
	if err != nil {
		return nil, fmt.Errorf("subscribe to histories: %w", err)
	}
	r.sub = sub
	return r, nil
}

func (r *sagaRunner) close() { _ = r.sub.Unsubscribe() }

func (r *sagaRunner) observe(m *nats.Msg) {
	c, err := stream.DecodeCommit(m.Data)
	if err != nil {
		return
	}
	last := c.Events[len(c.Events)-1].Type
	if !stream.IsTerminal(last) && last != stream.WorkflowExecutionBlocked {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.startedAt[c.SagaID]
	if !ok {
		return
	}
	r.latencies = append(r.latencies, time.Since(t))
	r.events += c.NextEventID()
	delete(r.startedAt, c.SagaID)
	if last != stream.WorkflowExecutionCompleted {
		r.failed++
	}
	r.ended.Add(1)
	r.done <- struct{}{}
}

// phase is what one run of sagas measured.
type phase struct {
	sagas     int
	failed    int
	elapsed   time.Duration
	events    uint64
	latencies []time.Duration // sorted
}

// percentile returns the p-quantile of the sorted latencies in ms.
func (ph phase) percentile(p float64) float64 {
	if len(ph.latencies) == 0 {
		return 0
	}
	return ms(ph.latencies[int(p*float64(len(ph.latencies)-1))])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// run starts n sagas named idPrefix-<i>, keeping inFlight of them unfinished
// at any time, and returns when all have ended.
func (r *sagaRunner) run(ctx context.Context, idPrefix string, n, inFlight int, p *progress, label string) (phase, error) {
	r.mu.Lock()
	r.latencies = make([]time.Duration, 0, n)
	r.failed, r.events = 0, 0
	r.done = make(chan struct{}, n) // one per saga: observe never blocks
	r.mu.Unlock()
	r.ended.Store(0)

	window := make(chan struct{}, inFlight)
	startErr := make(chan error, 1)
	began := time.Now()
	p.show(func() string { return bar(label, r.ended.Load(), int64(n), began) })
	// The starters stop and are waited for before the client they use
	// closes. Several start at once, as a fleet's clients do: one start
	// is a round trip and an fsync, and a single starter would cap the
	// rate at one start per round trip rather than let the window fill.
	startCtx, stopStarting := context.WithCancel(ctx)
	var starters sync.WaitGroup
	defer starters.Wait()
	defer stopStarting()
	var next atomic.Int64
	for range min(inFlight, maxStarters) {
		starters.Go(func() {
			ctx := startCtx
			for {
				select {
				case window <- struct{}{}:
				case <-ctx.Done():
					return
				}
				i := next.Add(1) - 1
				if i >= int64(n) {
					<-window
					return
				}
				id := idPrefix + "-" + strconv.FormatInt(i, 10)
				r.mu.Lock()
				r.startedAt[id] = time.Now()
				r.mu.Unlock()
				in := order.Input{OrderID: id, Items: []order.Item{{SKU: "sku", Qty: 1}}, Amount: 10}
				if _, err := saga.StartWorkflow(ctx, r.cl, order.Workflow, in, saga.StartOptions{ID: id}); err != nil {
					select {
					case startErr <- fmt.Errorf("start %s: %w", id, err):
					default:
					}
					return
				}
			}
		})
	}
	for range n {
		select {
		case <-r.done:
			<-window
		case err := <-startErr:
			return phase{}, err
		case <-ctx.Done():
			return phase{}, ctx.Err()
		}
	}
	elapsed := time.Since(began)
	r.mu.Lock()
	defer r.mu.Unlock()
	ph := phase{sagas: n, failed: r.failed, elapsed: elapsed, events: r.events, latencies: slices.Clone(r.latencies)}
	slices.Sort(ph.latencies)
	return ph, nil
}
