package integration

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"sync/atomic"
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
	cfg := stream.Config{}.Defaults()
	waitDispatched(tb, srv, kv.TimersConfig{Bucket: cfg.TimersBucket()}.StreamName(), "timers armed", n, d)
}

// waitDispatched waits until the stream holds at least n messages (timers
// armed, tasks queued) and the dispatcher has nothing left to do.
func waitDispatched(tb testing.TB, srv *natstest.Server, streamName, what string, n int, d time.Duration) {
	tb.Helper()
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		tb.Fatal(err)
	}
	natstest.WaitFor(tb, d, fmt.Sprintf("%d %s", n, what), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, streamName)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(n) && dispatcherIdle(ctx, js)
	})
}

// dispatcherIdle reports whether the dispatcher has every history commit
// handled and acknowledged.
func dispatcherIdle(ctx context.Context, js jetstream.JetStream) bool {
	c, err := js.Consumer(ctx, stream.Config{}.Defaults().HistoryStream(0), "saga-dispatch")
	if err != nil {
		return false
	}
	ci, err := c.Info(ctx)
	return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
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

// parkedSagas is how many sagas BenchmarkParkedSagas parks on a signal and
// a timer, or on a queued activity; parkedRSSTargetMiB is the most the
// whole process may take once they are parked.
const (
	parkedSagas        = 10_000
	parkedRSSTargetMiB = 256
)

// unservedActivity is an activity no node of these tests runs: its tasks
// stay queued.
var unservedActivity = saga.NewActivity("unserved", func(context.Context, int) (int, error) { return 0, nil })

// queuedWorkflow waits for an activity whose task stays queued: a saga
// parked on a queued activity.
var queuedWorkflow = saga.NewWorkflow("parked-on-task", 1, func(ctx saga.Context, _ struct{}) (int, error) {
	return saga.ExecuteActivity(ctx, unservedActivity, 0).Get(ctx)
})

// parkedCase is one way of parking sagas in BenchmarkParkedSagas.
type parkedCase struct {
	sagas int
	opts  worker.Options
	defs  []saga.Definition
	start func(ctx context.Context, cl *saga.Client, id string) error
	// parked waits until every saga is parked.
	parked func(b *testing.B, srv *natstest.Server)
	// keeps is the goroutines a parked saga holds once its machine is
	// released: none, or a running activity's own and its handler's.
	keeps int
	// maxRSSMiB, when set, is the most the process may take with every
	// saga parked.
	maxRSSMiB float64
	// end, when set, lets the parked sagas end after the measurement.
	end func()
}

// BenchmarkParkedSagas parks sagas on one in-process node and reports the
// process's memory and goroutines once they are all parked and their
// machines released as idle (worker.Options.IdleMachineTimeout, 5 s):
//
//	go test ./integration -run '^$' -bench ParkedSagas -benchtime 1x
//
// b.N is ignored: one run parks them all. The cases:
//
//   - on=signal-and-timer/cache=1000: 10,000 sagas, each waiting on a
//     signal and a one-hour timer, with the default cache (1,000 sagas:
//     9,000 are evicted and hold nothing on the node);
//   - on=signal-and-timer/cache=10000: the same, every saga cached;
//   - on=queued-activity: 10,000 sagas, each waiting on an activity that no
//     node runs (its task stays queued), every saga cached;
//   - on=running-activity: 1,000 sagas, each waiting on an activity that
//     runs until the benchmark ends, on a node running 1,000 at once;
//   - on=running-activity/heartbeating: the same, each activity having
//     heartbeated once (as long-running activities do).
//
// rss-MiB is the whole process, the embedded nats-server included, after
// freed memory is returned to the system; heap-MiB is the Go heap in use
// after a collection, the server's included; rss-KiB/saga and
// goroutines/saga are over the figures before the first start.
// goroutines-live is the count once the sagas are parked, before their
// machines are released; release-s how long the release took from then.
// The benchmark fails if the goroutines stay above what the parked sagas
// keep (none, or a running activity's two) plus an allowance, or if
// 10,000 parked sagas take 256 MiB of RSS or more.
func BenchmarkParkedSagas(b *testing.B) {
	for _, cacheSize := range []int{1000, parkedSagas} {
		b.Run(fmt.Sprintf("on=signal-and-timer/cache=%d", cacheSize), func(b *testing.B) {
			benchParked(b, parkedCase{
				sagas: parkedSagas,
				opts:  worker.Options{CacheSize: cacheSize},
				defs:  []saga.Definition{parkedWorkflow},
				start: func(ctx context.Context, cl *saga.Client, id string) error {
					_, err := saga.StartWorkflow(ctx, cl, parkedWorkflow, struct{}{}, saga.StartOptions{ID: id})
					return err
				},
				parked:    func(b *testing.B, srv *natstest.Server) { waitParked(b, srv, parkedSagas, 8*time.Minute) },
				maxRSSMiB: parkedRSSTargetMiB,
			})
		})
	}
	b.Run("on=queued-activity", func(b *testing.B) {
		benchParked(b, parkedCase{
			sagas: parkedSagas,
			opts:  worker.Options{CacheSize: parkedSagas},
			defs:  []saga.Definition{queuedWorkflow},
			start: func(ctx context.Context, cl *saga.Client, id string) error {
				_, err := saga.StartWorkflow(ctx, cl, queuedWorkflow, struct{}{}, saga.StartOptions{ID: id})
				return err
			},
			parked: func(b *testing.B, srv *natstest.Server) {
				waitDispatched(b, srv, stream.Config{}.Defaults().TaskStream(), "activity tasks queued", parkedSagas, 8*time.Minute)
			},
			maxRSSMiB: parkedRSSTargetMiB,
		})
	})
	for _, heartbeating := range []bool{false, true} {
		name := "on=running-activity"
		if heartbeating {
			name += "/heartbeating"
		}
		b.Run(name, func(b *testing.B) { benchRunningActivities(b, 1000, heartbeating) })
	}
}

// benchRunningActivities parks sagas in an activity that runs until the
// benchmark ends, having heartbeated once if heartbeating is set.
func benchRunningActivities(b *testing.B, sagas int, heartbeating bool) {
	release := make(chan struct{})
	var running atomic.Int64
	hold := saga.NewActivity("hold", func(ctx context.Context, _ int) (int, error) {
		if heartbeating {
			if err := saga.Heartbeat(ctx, nil); err != nil {
				return 0, err
			}
		}
		running.Add(1)
		defer running.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return 0, nil
	})
	holding := saga.NewWorkflow("parked-in-activity", 1, func(ctx saga.Context, _ struct{}) (int, error) {
		return saga.ExecuteActivity(ctx, hold, 0).Get(ctx)
	})
	benchParked(b, parkedCase{
		sagas: sagas,
		opts:  worker.Options{ActivityConcurrency: sagas},
		defs:  []saga.Definition{holding, hold},
		start: func(ctx context.Context, cl *saga.Client, id string) error {
			_, err := saga.StartWorkflow(ctx, cl, holding, struct{}{}, saga.StartOptions{ID: id})
			return err
		},
		parked: func(b *testing.B, srv *natstest.Server) {
			natstest.WaitFor(b, 5*time.Minute, fmt.Sprintf("%d activities running", sagas), func() bool { return running.Load() == int64(sagas) })
		},
		keeps: 2,
		end:   func() { close(release) },
	})
}

func benchParked(b *testing.B, pc parkedCase) {
	srv := natstest.Start(b)
	var ends *endings
	if pc.end != nil {
		ends = watchEndings(b, srv)
	}
	node := nodeFor(b, srv, pc.opts, pc.defs...)
	cl := clientFor(b, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ids := make([]string, pc.sagas)
	for i := range ids {
		ids[i] = fmt.Sprintf("parked-%d", i)
	}
	runtime.GC()
	debug.FreeOSMemory()
	baseline := runtime.NumGoroutine()
	rssBefore, _ := rssMiB()
	heapBefore := heapInUseMiB()
	b.ResetTimer()
	began := time.Now()
	inParallel(len(ids), 64, func(i int) {
		if err := pc.start(ctx, cl, ids[i]); err != nil {
			b.Errorf("start %s: %v", ids[i], err)
		}
	})
	if b.Failed() {
		b.FailNow()
	}
	pc.parked(b, srv)
	parkedIn := time.Since(began)
	b.StopTimer()
	live := runtime.NumGoroutine()

	// Parked sagas make no decision: past the idle timeout, their machines
	// go.
	releaseBegan := time.Now()
	natstest.WaitFor(b, time.Minute, "every machine released", func() bool { return node.Stats().LiveMachines == 0 })
	releasedIn := time.Since(releaseBegan)
	bound := baseline + pc.sagas*pc.keeps + goroutineAllowance
	// Counted after the release, which gives the handlers still winding
	// down when the last saga parked time to exit.
	goroutines := waitGoroutinesAtMost(b, bound, "parked sagas hold goroutines")
	heap := heapInUseMiB()
	debug.FreeOSMemory()
	rss, ok := rssMiB()
	if ok {
		b.ReportMetric(rss, "rss-MiB")
		b.ReportMetric((rss-rssBefore)*1024/float64(pc.sagas), "rss-KiB/saga")
		if pc.maxRSSMiB > 0 && rss > pc.maxRSSMiB {
			b.Errorf("%d parked sagas: %.0f MiB RSS, the target is under %.0f MiB", pc.sagas, rss, pc.maxRSSMiB)
		}
	}
	st := node.Stats()
	b.ReportMetric(heap, "heap-MiB")
	b.ReportMetric(float64(goroutines), "goroutines")
	b.ReportMetric(float64(goroutines-baseline)/float64(pc.sagas), "goroutines/saga")
	b.ReportMetric(float64(live), "goroutines-live")
	b.ReportMetric(float64(baseline), "goroutines-before")
	b.ReportMetric(parkedIn.Seconds(), "park-s")
	b.ReportMetric(releasedIn.Seconds(), "release-s")
	b.Logf("%d sagas parked in %s (%d replays, %d cached); before: %.0f MiB RSS, %.1f MiB heap, %d goroutines; parked: %d goroutines, then, %s later, %d machines released: %.0f MiB RSS, %.1f MiB heap, %d goroutines (bound %d)",
		len(ids), parkedIn.Round(time.Millisecond), st.Replays, st.CachedSagas, rssBefore, heapBefore, baseline, live,
		releasedIn.Round(time.Millisecond), st.MachinesReleased, rss, heap, goroutines, bound)
	if pc.end != nil {
		pc.end()
		natstest.WaitFor(b, 2*time.Minute, "every parked saga to end", func() bool { return ends.ended(ids) == len(ids) })
	}
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

// nappingWorkflow sleeps for the duration it is given unless woken first.
// Woken, it records who woke it (a decision) and waits for "finish", so
// that the wake's step ends nothing; its timer runs out, it ends.
var nappingWorkflow = saga.NewWorkflow("napping", 1, func(ctx saga.Context, d time.Duration) (string, error) {
	var by string
	woken := false
	err := saga.Select(ctx,
		saga.GetSignalChannel[string](ctx, "wake").OnSignal(func(v string, _ error) { by, woken = v, true }),
		saga.OnReady(saga.NewTimer(ctx, d), func() {}),
	)
	if err != nil || !woken {
		return "slept", err
	}
	out, err := saga.SideEffect(ctx, func() (string, error) { return "woken by " + by, nil })
	if err != nil {
		return "", err
	}
	_, err = saga.GetSignalChannel[struct{}](ctx, "finish").Receive(ctx)
	return out, err
})

// Sagas parked on a signal or a timer hold no goroutine once idle: the
// node releases their machines and keeps their events and state. Each
// then resumes, when signaled or when its timer fires, by replaying the
// cached events into a new machine, without loading its history, and
// completes as it would have.
func TestParkedSagasReleaseTheirMachines(t *testing.T) {
	const sleepers, wakers = 100, 100
	// The sleepers' timers fall due this long after the first start: time
	// to park every saga and release its machine first, even under -race.
	const nap = 15 * time.Second
	c := newCluster(t)
	node := c.node(worker.Options{IdleMachineTimeout: 300 * time.Millisecond}, nappingWorkflow)
	cl := c.client()
	ends := watchEndings(t, c.srv)
	ctx := ctxTimeout(t, 2*time.Minute)
	sleeping := make([]string, sleepers)
	waking := make([]string, wakers)
	for i := range sleeping {
		sleeping[i] = fmt.Sprintf("sleeper-%d", i)
	}
	for i := range waking {
		waking[i] = fmt.Sprintf("waker-%d", i)
	}
	runtime.GC()
	baseline := runtime.NumGoroutine()
	due := time.Now().Add(nap)
	inParallel(sleepers+wakers, startParallelism, func(i int) {
		id, d := "", time.Hour
		if i < sleepers {
			id, d = sleeping[i], time.Until(due)
		} else {
			id = waking[i-sleepers]
		}
		if _, err := saga.StartWorkflow(ctx, cl, nappingWorkflow, d, saga.StartOptions{ID: id}); err != nil {
			t.Errorf("start %s: %v", id, err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	waitParked(t, c.srv, sleepers+wakers, 60*time.Second)
	natstest.WaitFor(t, 30*time.Second, "every machine released", func() bool {
		st := node.Stats()
		return st.LiveMachines == 0 && st.MachinesReleased >= sleepers+wakers
	})
	bound := baseline + goroutineAllowance
	parked := waitGoroutinesAtMost(t, bound, "parked sagas hold goroutines once idle")
	if time.Now().After(due.Add(-time.Second)) {
		t.Fatalf("the sagas took until %s past their first start to park and be released: the timers fall due too soon for this test", nap-time.Until(due))
	}
	t.Logf("%d sagas parked: %d goroutines, %d before the first start (bound %d)", sleepers+wakers, parked, baseline, bound)

	before := node.Stats()
	if before.CachedSagas != sleepers+wakers {
		t.Fatalf("%d sagas cached, want every one of %d", before.CachedSagas, sleepers+wakers)
	}
	inParallel(wakers, startParallelism, func(i int) {
		if err := cl.Signal(ctx, waking[i], "wake", waking[i]); err != nil {
			t.Errorf("signal %s: %v", waking[i], err)
		}
	})
	// Woken sagas wait for "finish"; sleepers end when their timers fire.
	natstest.WaitFor(t, 60*time.Second, "every sleeper to end", func() bool { return ends.ended(sleeping) == sleepers })
	for _, id := range waking {
		natstest.WaitFor(t, 30*time.Second, id+" woken", func() bool {
			events, err := cl.History(ctx, id)
			return err == nil && slices.ContainsFunc(events, func(e stream.Event) bool { return e.Type == stream.MarkerRecorded })
		})
	}
	after := node.Stats()
	if n := after.Replays - before.Replays; n != sleepers+wakers {
		t.Errorf("%d replays, want one per saga: %d", n, sleepers+wakers)
	}
	if n := after.HistoryLoads - before.HistoryLoads; n != 0 {
		t.Errorf("%d whole histories read, want none: every saga was cached", n)
	}

	inParallel(wakers, startParallelism, func(i int) {
		if err := cl.Signal(ctx, waking[i], "finish", struct{}{}); err != nil {
			t.Errorf("signal %s: %v", waking[i], err)
		}
	})
	natstest.WaitFor(t, 60*time.Second, "every woken saga to end", func() bool { return ends.ended(waking) == wakers })
	check := func(id, want string) {
		d, err := cl.Describe(ctx, id)
		if err != nil || d.Status != saga.StatusCompleted {
			t.Errorf("saga %s: %v %+v", id, err, d)
			return
		}
		var out string
		if err := stream.Unmarshal(d.Output, &out); err != nil || out != want {
			t.Errorf("saga %s: output %q %v, want %q", id, out, err, want)
		}
	}
	for _, id := range sleeping {
		check(id, "slept")
	}
	for _, id := range waking {
		check(id, "woken by "+id)
	}
}
