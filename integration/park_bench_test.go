package integration

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/procmem"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// parkedWorkflow waits for the signal "wake" or an hour, whichever comes
// first: a saga parked on a timer and a signal at once.
var parkedWorkflow = saga.NewWorkflow("parked", 1, func(ctx saga.Context, _ struct{}) (string, error) {
	wake := saga.GetSignalChannel[struct{}](ctx, "wake")
	timeout := saga.NewTimer(ctx, time.Hour)
	outcome := ""
	err := saga.Select(ctx,
		wake.OnSignal(func(struct{}, error) { outcome = "woken" }),
		saga.OnReady(timeout, func() { outcome = "timed out" }),
	)
	return outcome, err
})

// parkedCoroutines is how many coroutines, each a goroutine, a cached
// machine of parkedWorkflow holds: its root alone (Select spawns none).
const parkedCoroutines = 1

// goroutineAllowance bounds the goroutines that come and go with the
// node's work rather than with the sagas it parked (handlers finishing,
// connection and server housekeeping), measured against the count before
// any saga started.
const goroutineAllowance = 50

// startParked starts a parked saga per id with bounded concurrency.
func startParked(tb testing.TB, ctx context.Context, cl *saga.Client, ids []string, par int) {
	tb.Helper()
	inParallel(len(ids), par, func(i int) {
		if _, err := saga.StartWorkflow(ctx, cl, parkedWorkflow, struct{}{}, saga.StartOptions{ID: ids[i]}); err != nil {
			tb.Errorf("start %s: %v", ids[i], err)
		}
	})
	if tb.Failed() {
		tb.FailNow()
	}
}

// waitParked waits until n timers are armed in the timers bucket (each
// saga's TimerCreated was committed and dispatched) and the dispatcher has
// nothing left to do.
func waitParked(tb testing.TB, srv *natstest.Server, n int, d time.Duration) {
	tb.Helper()
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		tb.Fatal(err)
	}
	cfg := stream.Config{}.Defaults()
	timers := kv.TimersConfig{Bucket: cfg.TimersBucket()}.StreamName()
	natstest.WaitFor(tb, d, fmt.Sprintf("%d sagas parked", n), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, timers)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		if err != nil || info.State.Msgs < uint64(n) {
			return false
		}
		c, err := js.Consumer(ctx, cfg.HistoryStream(0), "saga-dispatch")
		if err != nil {
			return false
		}
		ci, err := c.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	})
}

// waitGoroutinesAtMost waits until the process runs at most bound
// goroutines (handlers that finished their work exit a moment later),
// and fails if it never does.
func waitGoroutinesAtMost(tb testing.TB, bound int, why string) int {
	tb.Helper()
	n := runtime.NumGoroutine()
	defer func() {
		// WaitFor fails with Fatal, which still runs this: say how many.
		if n > bound {
			tb.Logf("%d goroutines, more than %d: %s", n, bound, why)
		}
	}()
	natstest.WaitFor(tb, 15*time.Second, fmt.Sprintf("at most %d goroutines", bound), func() bool {
		n = runtime.NumGoroutine()
		return n <= bound
	})
	return n
}

// rssMiB is the process's resident set size; ok is false where the
// kernel does not report it.
func rssMiB() (mib float64, ok bool) { return procmem.StatusMiB("VmRSS") }

// heapInUseMiB is the Go heap in use after a collection: the node's, the
// client's and the in-process nats-server's together.
func heapInUseMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse) / (1 << 20)
}

// parkedSagas is how many sagas BenchmarkParkedSagas parks.
const parkedSagas = 10_000

// BenchmarkParkedSagas parks 10,000 sagas, each waiting on a signal and a
// one-hour timer, on one in-process node with the default cache (1,000
// sagas), and reports the process's memory and goroutines once they are
// all parked:
//
//	go test ./integration -run '^$' -bench ParkedSagas -benchtime 1x
//
// b.N is ignored: one run parks them all. rss-MiB is the whole process,
// the embedded nats-server included; heap-MiB is the Go heap in use after
// a collection, the server's included. A cached saga holds a goroutine per
// coroutine of its workflow; an evicted one holds none, so the goroutines
// over the count before the first start stay under the cache size (plus
// an allowance) however many sagas wait.
func BenchmarkParkedSagas(b *testing.B) {
	srv := natstest.Start(b)
	node := nodeFor(b, srv, worker.Options{}, parkedWorkflow)
	cl := clientFor(b, srv)
	const cacheSize = 1000 // worker.Options' default
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ids := make([]string, parkedSagas)
	for i := range ids {
		ids[i] = fmt.Sprintf("parked-%d", i)
	}
	runtime.GC()
	baseline := runtime.NumGoroutine()
	rssBefore, _ := rssMiB()
	heapBefore := heapInUseMiB()
	b.ResetTimer()
	began := time.Now()
	startParked(b, ctx, cl, ids, 64)
	waitParked(b, srv, len(ids), 8*time.Minute)
	parkedIn := time.Since(began)
	b.StopTimer()

	bound := baseline + cacheSize*parkedCoroutines + goroutineAllowance
	heap := heapInUseMiB()
	rss, ok := rssMiB()
	// Counted after the collection, which gives the handlers still winding
	// down when the last saga parked time to exit.
	goroutines := waitGoroutinesAtMost(b, bound, "parked sagas hold goroutines beyond the cache")
	if ok {
		b.ReportMetric(rss, "rss-MiB")
	}
	b.ReportMetric(heap, "heap-MiB")
	b.ReportMetric(float64(goroutines), "goroutines")
	b.ReportMetric(float64(baseline), "goroutines-before")
	b.ReportMetric(float64(parkedIn.Milliseconds())/1000, "park-s")
	b.Logf("%d sagas parked in %s (%d replays); before: %.0f MiB RSS, %.1f MiB heap, %d goroutines; parked: %.0f MiB RSS, %.1f MiB heap, %d goroutines (bound %d)",
		len(ids), parkedIn.Round(time.Millisecond), node.Stats().Replays, rssBefore, heapBefore, baseline, rss, heap, goroutines, bound)
}

// Three hundred sagas park on a node that caches fifty: the goroutines
// stay within the cache's bound, and once signaled every saga completes,
// the evicted ones by replaying their histories.
func TestParkedSagasHoldNoGoroutinesBeyondTheCache(t *testing.T) {
	const sagas, cacheSize = 300, 50
	c := newCluster(t)
	node := c.node(worker.Options{CacheSize: cacheSize}, parkedWorkflow)
	cl := c.client()
	ends := watchEndings(t, c.srv)
	ctx := ctxTimeout(t, 2*time.Minute)
	ids := make([]string, sagas)
	for i := range ids {
		ids[i] = fmt.Sprintf("parked-%d", i)
	}
	baseline := runtime.NumGoroutine()
	startParked(t, ctx, cl, ids, startParallelism)
	waitParked(t, c.srv, sagas, 60*time.Second)
	bound := baseline + cacheSize*parkedCoroutines + goroutineAllowance
	parked := waitGoroutinesAtMost(t, bound, "parked sagas hold goroutines beyond the cache")
	t.Logf("%d sagas parked: %d goroutines, %d before the first start (bound %d)", sagas, parked, baseline, bound)

	replays := node.Stats().Replays
	inParallel(sagas, startParallelism, func(i int) {
		if err := cl.Signal(ctx, ids[i], "wake", struct{}{}); err != nil {
			t.Errorf("signal %s: %v", ids[i], err)
		}
	})
	natstest.WaitFor(t, 90*time.Second, "every parked saga to end", func() bool { return ends.ended(ids) == sagas })
	inParallel(sagas, 16, func(i int) {
		d, err := cl.Describe(ctx, ids[i])
		if err != nil || d.Status != saga.StatusCompleted {
			t.Errorf("saga %s: %v %+v", ids[i], err, d)
			return
		}
		var out string
		if err := stream.Unmarshal(d.Output, &out); err != nil || out != "woken" {
			t.Errorf("saga %s: output %q %v", ids[i], out, err)
		}
	})
	// At most cacheSize sagas were still cached when the signals came;
	// every other one was rebuilt from its history.
	if n := node.Stats().Replays - replays; n < sagas-cacheSize {
		t.Fatalf("%d replays after the signals, want at least %d", n, sagas-cacheSize)
	}
	waitGoroutinesAtMost(t, bound, "ended sagas hold goroutines")
}
