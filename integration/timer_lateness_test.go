package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// sleeperWorkflow waits its input on a durable timer and completes.
var sleeperWorkflow = saga.NewWorkflow("sleeper", 1, func(ctx saga.Context, d time.Duration) (struct{}, error) {
	return struct{}{}, saga.Sleep(ctx, d)
})

// latenessSagas is how many timers the lateness test and benchmark run:
// enough for a p99 that is not the maximum.
const latenessSagas = 1000

// startParallelism bounds the starts in flight: enough to keep one node
// busy, few enough that a race-enabled run on two cores does not time out
// its own requests.
const startParallelism = 32

// spread returns the i-th of n durations spread evenly over [lo, hi],
// to the millisecond: the same on every run.
func spread(i, n int, lo, hi time.Duration) time.Duration {
	if n < 2 {
		return lo
	}
	return (lo + (hi-lo)*time.Duration(i)/time.Duration(n-1)).Truncate(time.Millisecond)
}

// inParallel runs fn(0) … fn(n-1) with at most par calls at a time.
func inParallel(n, par int, fn func(i int)) {
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(n, par) {
		wg.Go(func() {
			for i := range work {
				fn(i)
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

// percentile of sorted durations, p in [0, 100]: the smallest value that
// at least p% of them do not exceed.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// nodeFor starts a node on its own connection to srv and stops it when tb
// ends: the harness's cluster serves tests only, this serves benchmarks
// too.
func nodeFor(tb testing.TB, srv *natstest.Server, opts worker.Options, defs ...saga.Definition) *worker.Node {
	tb.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		tb.Fatal(err)
	}
	if opts.DeadlockTimeout == 0 {
		// A loaded race-enabled run can stall a step for a second.
		opts.DeadlockTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = testLogger()
	}
	n, err := worker.New(srv.Conn(), reg, opts)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = n.Stop(ctx)
	})
	return n
}

// clientFor is a client on its own connection to srv, closed when tb ends.
func clientFor(tb testing.TB, srv *natstest.Server) *saga.Client {
	tb.Helper()
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cl.Close)
	return cl
}

// endings notes the sagas whose last published commit ends them, so that
// a test can wait for a thousand sagas without a subscription each. It is
// a hint of when to read the histories, not a verdict: a core subscriber
// also sees commits the stream refused.
type endings struct {
	mu   sync.Mutex
	ends map[string]stream.EventType
}

func watchEndings(tb testing.TB, srv *natstest.Server) *endings {
	tb.Helper()
	e := &endings{ends: map[string]stream.EventType{}}
	cfg := stream.Config{}.Defaults()
	sub, err := srv.Conn().Subscribe(cfg.HistoryFilter(0), func(m *nats.Msg) {
		c, err := stream.DecodeCommit(m.Data)
		if err != nil {
			return
		}
		switch last := c.Events[len(c.Events)-1].Type; last {
		case stream.WorkflowExecutionCompleted, stream.WorkflowExecutionFailed, stream.WorkflowExecutionCanceled,
			stream.WorkflowExecutionTimedOut, stream.WorkflowExecutionBlocked:
			e.mu.Lock()
			e.ends[c.SagaID] = last
			e.mu.Unlock()
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = sub.Unsubscribe() })
	return e
}

// ended counts the sagas of ids seen ending.
func (e *endings) ended(ids []string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := e.ends[id]; ok {
			n++
		}
	}
	return n
}

// startSleepers starts a sleeper saga per id, each sleeping its duration.
func startSleepers(tb testing.TB, ctx context.Context, cl *saga.Client, ids []string, durations []time.Duration) {
	tb.Helper()
	inParallel(len(ids), startParallelism, func(i int) {
		if _, err := saga.StartWorkflow(ctx, cl, sleeperWorkflow, durations[i], saga.StartOptions{ID: ids[i]}); err != nil {
			tb.Errorf("start %s: %v", ids[i], err)
		}
	})
	if tb.Failed() {
		tb.FailNow()
	}
}

// timerRecord is one workflow timer as a history records it.
type timerRecord struct {
	created stream.Event
	due     time.Time
	fired   []stream.Event
}

// timersOf pairs every TimerFired of a history with its TimerCreated.
func timersOf(events []stream.Event) (map[uint64]*timerRecord, error) {
	timers := map[uint64]*timerRecord{}
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.TimerCreatedAttrs:
			timers[e.ID] = &timerRecord{created: e, due: a.FireAt(e.Time)}
		case *stream.TimerFiredAttrs:
			t := timers[a.StartedEventID]
			if t == nil {
				return nil, fmt.Errorf("TimerFired at event %d names event %d, which created no timer", e.ID, a.StartedEventID)
			}
			t.fired = append(t.fired, e)
		}
	}
	return timers, nil
}

// checkSleeper checks that a sleeper saga completed and that each of its
// timers fired exactly once, never before it was due, and returns how late
// each fired: the TimerFired event's time (stamped by the node that
// appended it) less the due time.
func checkSleeper(events []stream.Event) ([]time.Duration, error) {
	if len(events) == 0 || events[len(events)-1].Type != stream.WorkflowExecutionCompleted {
		return nil, fmt.Errorf("did not complete: %v", eventTypes(events))
	}
	timers, err := timersOf(events)
	if err != nil {
		return nil, err
	}
	if len(timers) != 1 {
		return nil, fmt.Errorf("%d timers created, want 1: %v", len(timers), eventTypes(events))
	}
	var lateness []time.Duration
	for id, t := range timers {
		if len(t.fired) != 1 {
			return nil, fmt.Errorf("timer at event %d fired %d times", id, len(t.fired))
		}
		late := t.fired[0].Time.Sub(t.due)
		if late < 0 {
			return nil, fmt.Errorf("timer at event %d fired %s early (created %s, due %s, fired %s)",
				id, -late, t.created.Time.Format(time.RFC3339Nano), t.due.Format(time.RFC3339Nano), t.fired[0].Time.Format(time.RFC3339Nano))
		}
		lateness = append(lateness, late)
	}
	return lateness, nil
}

// sleepAndMeasure runs latenessSagas sleeper sagas with durations spread
// over 1-5 s on the node(s) serving srv, checks each, and returns the
// lateness of every timer, sorted.
func sleepAndMeasure(tb testing.TB, srv *natstest.Server, cl *saga.Client, prefix string) []time.Duration {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ids := make([]string, latenessSagas)
	durations := make([]time.Duration, latenessSagas)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		durations[i] = spread(i, latenessSagas, time.Second, 5*time.Second)
	}
	ends := watchEndings(tb, srv)
	began := time.Now()
	startSleepers(tb, ctx, cl, ids, durations)
	started := time.Since(began)
	natstest.WaitFor(tb, 3*time.Minute, "every sleeper to end", func() bool { return ends.ended(ids) == len(ids) })
	tb.Logf("%d sleepers: started in %s, all ended after %s", len(ids), started.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	var mu sync.Mutex
	lateness := make([]time.Duration, 0, len(ids))
	inParallel(len(ids), 16, func(i int) {
		events, err := cl.History(ctx, ids[i])
		if err == nil {
			var late []time.Duration
			if late, err = checkSleeper(events); err == nil {
				mu.Lock()
				lateness = append(lateness, late...)
				mu.Unlock()
				return
			}
		}
		tb.Errorf("saga %s: %v", ids[i], err)
	})
	if tb.Failed() {
		tb.FailNow()
	}
	slices.Sort(lateness)
	return lateness
}

// A thousand sagas sleep 1-5 s each on one node: every one completes, each
// timer fires exactly once and never early. The lateness is logged, not
// checked: the targets are BenchmarkTimerLateness's.
func TestThousandTimersFireOnceNeverEarly(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, sleeperWorkflow)
	lateness := sleepAndMeasure(t, c.srv, c.client(), "late")
	t.Logf("lateness of %d timers: p50 %s, p99 %s, max %s", len(lateness),
		percentile(lateness, 50).Round(time.Millisecond), percentile(lateness, 99).Round(time.Millisecond), lateness[len(lateness)-1].Round(time.Millisecond))
}

// BenchmarkTimerLateness runs 1,000 sagas sleeping 1-5 s on one node per
// iteration and reports how late their timers fired (TimerFired's time
// less the due time), in milliseconds:
//
//	go test ./integration -run '^$' -bench TimerLateness -benchtime 1x
func BenchmarkTimerLateness(b *testing.B) {
	srv := natstest.Start(b)
	nodeFor(b, srv, worker.Options{}, sleeperWorkflow)
	cl := clientFor(b, srv)
	var lateness []time.Duration
	for i := range b.N {
		lateness = append(lateness, sleepAndMeasure(b, srv, cl, fmt.Sprintf("bench%d", i))...)
	}
	b.StopTimer()
	slices.Sort(lateness)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(lateness, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lateness, 99)), "p99-ms")
	b.ReportMetric(ms(lateness[len(lateness)-1]), "max-ms")
}

// timersBucket opens the engine's timers bucket.
func timersBucket(tb testing.TB, srv *natstest.Server) jetstream.KeyValue {
	tb.Helper()
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bucket, err := js.KeyValue(ctx, stream.Config{}.Defaults().TimersBucket())
	if err != nil {
		tb.Fatal(err)
	}
	return bucket
}

// armedWorkflowTimers counts the workflow timers whose entry is in the
// bucket: armed and not yet expired. An expired entry leaves a marker,
// which the listing skips as a deletion.
func armedWorkflowTimers(tb testing.TB, bucket jetstream.KeyValue) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := bucket.ListKeysFiltered(ctx, "wf.>")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for range keys.Keys() {
		n++
	}
	return n
}

// Every node stops while sagas sleep 2-3 s, and stays down until all their
// timers have expired on the server; a new node then fires each of them
// exactly once, from the expiry markers the server kept: none lost, none
// doubled.
func TestTimersFireOnceAfterEveryNodeWasDown(t *testing.T) {
	c := newCluster(t)
	first := c.node(worker.Options{}, sleeperWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 2*time.Minute)
	const sagas = 50
	ids := make([]string, sagas)
	durations := make([]time.Duration, sagas)
	for i := range ids {
		ids[i] = fmt.Sprintf("outage-sleeper-%d", i)
		durations[i] = spread(i, sagas, 2*time.Second, 3*time.Second)
	}
	ends := watchEndings(t, c.srv)
	startSleepers(t, ctx, cl, ids, durations)
	bucket := timersBucket(t, c.srv)
	natstest.WaitFor(t, 30*time.Second, "every timer armed", func() bool { return armedWorkflowTimers(t, bucket) == sagas })
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()

	// The outage must cover every due time, or this test shows nothing.
	var firstDue, lastDue time.Time
	for _, id := range ids {
		events, err := cl.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		timers, err := timersOf(events)
		if err != nil || len(timers) != 1 {
			t.Fatalf("saga %s: %d timers, %v: %v", id, len(timers), err, eventTypes(events))
		}
		for _, tr := range timers {
			if len(tr.fired) > 0 || !tr.due.After(stopped) {
				t.Fatalf("saga %s: its timer was due at %s, before every node stopped at %s: this machine is too slow for the test's margin",
					id, tr.due.Format(time.RFC3339Nano), stopped.Format(time.RFC3339Nano))
			}
			if firstDue.IsZero() || tr.due.Before(firstDue) {
				firstDue = tr.due
			}
			lastDue = later(lastDue, tr.due)
		}
	}
	// The server writes an expiry marker in place of each entry when it
	// falls due, with no node running.
	natstest.WaitFor(t, 30*time.Second, "every timer's entry to expire", func() bool { return armedWorkflowTimers(t, bucket) == 0 })
	if now := time.Now(); now.Before(lastDue) {
		t.Fatalf("every entry expired at %s, before the last due time %s", now.Format(time.RFC3339Nano), lastDue.Format(time.RFC3339Nano))
	}
	if n := ends.ended(ids); n != 0 {
		t.Fatalf("%d sagas ended with no node running", n)
	}
	restarted := time.Now()
	c.node(worker.Options{}, sleeperWorkflow)
	natstest.WaitFor(t, 60*time.Second, "every sleeper to end", func() bool { return ends.ended(ids) == len(ids) })

	var firstFired, lastFired time.Time
	for _, id := range ids {
		events, err := cl.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := checkSleeper(events); err != nil {
			t.Fatalf("saga %s: %v", id, err)
		}
		timers, _ := timersOf(events)
		for _, tr := range timers {
			fired := tr.fired[0].Time
			if fired.Before(restarted) {
				t.Fatalf("saga %s: its timer fired at %s, before a node ran again at %s", id, fired.Format(time.RFC3339Nano), restarted.Format(time.RFC3339Nano))
			}
			if firstFired.IsZero() || fired.Before(firstFired) {
				firstFired = fired
			}
			lastFired = later(lastFired, fired)
		}
	}
	t.Logf("%d timers fired once each after an outage of %s (from %s before the first due time to %s after the last): %s to %s after the new node began starting",
		sagas, restarted.Sub(stopped).Round(time.Millisecond), firstDue.Sub(stopped).Round(time.Millisecond), restarted.Sub(lastDue).Round(time.Millisecond),
		firstFired.Sub(restarted).Round(time.Millisecond), lastFired.Sub(restarted).Round(time.Millisecond))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
