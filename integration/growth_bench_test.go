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

// growthStep is the no-op activity every step of growthWorkflow runs: the
// benchmark measures the engine's cost of a step, not an activity's.
var growthStep = saga.NewActivity("growth-step", func(_ context.Context, i int) (int, error) { return i, nil })

// growthWorkflow runs n steps back to back, which takes its history to
// 1 + 3n events (started, then scheduled, started and completed per step)
// as fast as the engine goes, then runs one more step for every "go"
// signal, forever: each signal is a step the benchmark can time at the
// length the history has reached.
var growthWorkflow = saga.NewWorkflow("growth", 1, func(ctx saga.Context, n int) (int, error) {
	for i := range n {
		if _, err := saga.ExecuteActivity(ctx, growthStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
	next := saga.GetSignalChannel[struct{}](ctx, "go")
	for i := n; ; i++ {
		if _, err := next.Receive(ctx); err != nil {
			return i, err
		}
		if _, err := saga.ExecuteActivity(ctx, growthStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
})

// growthEventsPerStep is what a signaled step adds to the history:
// SignalReceived, then the activity's scheduled, started and completed.
const growthEventsPerStep = 4

// Samples per round of BenchmarkHistoryGrowth. Cold steps are fewer: each
// one stops a node and starts another.
const (
	growthWarmSteps = 9
	growthColdSteps = 5
	growthReads     = 9
)

// BenchmarkHistoryGrowth measures how the cost of a saga grows with the
// length of its history: sagas of growthWorkflow are taken to exactly 10,
// 100, 1,000 and 10,000 events, then timed, on one node and an embedded
// server (sync interval, the default):
//
//	go test ./integration -run '^$' -bench HistoryGrowth -benchtime 1x
//
// Each round (b.N of them; one with -benchtime 1x) reports medians:
// describe_ms and history_read_ms are saga.Client.Describe and
// Client.History of the saga; describe_commits is how many commits a
// describe reads (from the latest snapshot on, written every 100 events
// by default), and full_fold_ms what a describe costs without one (the
// whole history read and folded); cold_step_ms is a step (a signal, then an
// activity) on a fresh node, on a connection of its own, that has never
// seen the saga, so it reads the whole history and replays it (the node
// before it is stopped first); warm_step_ms is the same step on the node
// that has the saga cached, right after it took the saga there. A step is
// timed from the signal's publish to the commit recording the activity's
// completion, as a client watching the saga sees it, and each step is the
// first of a saga of its own taken to the length just before (see
// growthSteps), so every step is timed at exactly the length named.
// build_s is how long the saga took to reach the length, events the
// length at which the measurements began.
func BenchmarkHistoryGrowth(b *testing.B) {
	for _, events := range []int{10, 100, 1_000, 10_000} {
		b.Run(fmt.Sprintf("events=%d", events), func(b *testing.B) {
			benchHistoryGrowth(b, (events-1)/3)
		})
	}
}

func benchHistoryGrowth(b *testing.B, steps int) {
	srv := natstest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Everything connects in-process, as in the other benchmarks of
	// docs/benchmarks.md: the figures are the engine's and the server's,
	// not the loopback interface's.
	cl, err := saga.NewClient(growthConn(b, srv), saga.ClientOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const id = "growth-1"
	watch := watchGrowth(b, growthConn(b, srv), id)

	node := startGrowthNode(b, srv)
	began := time.Now()
	if _, err := saga.StartWorkflow(ctx, cl, growthWorkflow, steps, saga.StartOptions{ID: id}); err != nil {
		b.Fatal(err)
	}
	completed := steps
	// Ten milliseconds a step is many times what a step takes here: a
	// build slower than that has gone wrong rather than slow.
	watch.waitCompleted(b, completed, time.Minute+time.Duration(steps)*10*time.Millisecond)
	built := time.Since(began)
	length := growthLength(b, ctx, cl, id, 1+3*steps)
	// Describe starts from the saga's latest snapshot: the dispatcher
	// writes it once it has handled the commit that reaches it.
	store := growthStore(b, growthConn(b, srv))
	waitSagaDispatched(b, ctx, store, id)

	var warm, cold, describe, fullFold, history []time.Duration
	var describeCommits int
	stepWatch := growthConn(b, srv)
	b.ResetTimer()
	for round := range b.N {
		for range growthReads {
			t0 := time.Now()
			d, err := cl.Describe(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			describe = append(describe, time.Since(t0))
			if d.Status != saga.StatusRunning {
				b.Fatalf("saga %s is %s, want running", id, d.Status)
			}
		}
		// What describe cost before snapshots: the whole history read
		// and folded.
		for range growthReads {
			t0 := time.Now()
			commits, err := store.ReadLatest(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Fold(commits); err != nil {
				b.Fatal(err)
			}
			fullFold = append(fullFold, time.Since(t0))
		}
		_, load, err := store.LoadState(ctx, id, stream.LoadOptions{})
		if err != nil {
			b.Fatal(err)
		}
		describeCommits = load.CommitsRead
		for range growthReads {
			t0 := time.Now()
			events, err := cl.History(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			history = append(history, time.Since(t0))
			if len(events) < length {
				b.Fatalf("history of %d events, want at least %d", len(events), length)
			}
		}
		roundCold, roundWarm := growthSteps(b, ctx, srv, stepWatch, cl, &node, steps, round)
		cold, warm = append(cold, roundCold...), append(warm, roundWarm...)
	}
	b.StopTimer()
	growthLength(b, ctx, cl, id, length)
	node.stop(b)

	b.ReportMetric(medianMs(warm), "warm_step_ms")
	b.ReportMetric(medianMs(cold), "cold_step_ms")
	b.ReportMetric(medianMs(describe), "describe_ms")
	b.ReportMetric(float64(describeCommits), "describe_commits")
	b.ReportMetric(medianMs(fullFold), "full_fold_ms")
	b.ReportMetric(medianMs(history), "history_read_ms")
	b.ReportMetric(built.Seconds(), "build_s")
	b.ReportMetric(float64(length), "events")
}

// growthStore is a store of the engine's streams on nc.
func growthStore(b *testing.B, nc *nats.Conn) *stream.Store {
	b.Helper()
	st, err := stream.Open(nc, stream.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	return st
}

// waitSagaDispatched waits until the dispatcher has handled the saga's last
// commit.
func waitSagaDispatched(b *testing.B, ctx context.Context, store *stream.Store, id string) {
	b.Helper()
	natstest.WaitFor(b, time.Minute, "the saga's commits dispatched", func() bool {
		last, err := store.LastSeqOnLeader(ctx, id)
		if err != nil {
			return false
		}
		done, err := store.Dispatched(ctx, id, last)
		return err == nil && done
	})
}

// growthSteps times growthColdSteps cold steps, then growthWarmSteps warm
// ones, each the first step of a saga of its own taken to exactly
// 1+3*steps events just before, so that every step is timed at the length
// named. A warm step runs on the node that took its saga there; a cold one
// on a fresh node, started after the one before it stopped, which reads
// the whole history and replays it. node is the node running now.
func growthSteps(b *testing.B, ctx context.Context, srv *natstest.Server, watchConn *nats.Conn, cl *saga.Client, node **growthNode, steps, round int) (cold, warm []time.Duration) {
	b.Helper()
	js, err := jetstream.New(watchConn)
	if err != nil {
		b.Fatal(err)
	}
	for i := range growthColdSteps + growthWarmSteps {
		id := fmt.Sprintf("growth-%d-step-%d", round, i)
		watch := watchGrowth(b, watchConn, id)
		// The watch must see the saga's first commit.
		if err := watchConn.Flush(); err != nil {
			b.Fatal(err)
		}
		if _, err := saga.StartWorkflow(ctx, cl, growthWorkflow, steps, saga.StartOptions{ID: id}); err != nil {
			b.Fatal(err)
		}
		watch.waitCompleted(b, steps, time.Minute+time.Duration(steps)*10*time.Millisecond)
		isCold := i < growthColdSteps
		if isCold {
			// The node that took the saga there is done with it before it
			// stops: the fresh node meets nothing of the build but the
			// history.
			natstest.WaitFor(b, time.Minute, "the dispatcher idle", func() bool { return dispatcherIdle(ctx, js) })
			(*node).stop(b)
			*node = startGrowthNode(b, srv)
		}
		// A warm step follows the build at once, as the steps of a busy
		// saga follow each other (after a pause, the first step of any
		// saga takes longer on this machine: the pause is not the length's
		// cost); the history's length is checked after it.
		before := (*node).Stats()
		t0 := time.Now()
		if err := cl.Signal(ctx, id, "go", struct{}{}); err != nil {
			b.Fatal(err)
		}
		watch.waitCompleted(b, steps+1, time.Minute)
		took := time.Since(t0)
		after := (*node).Stats()
		// The step was timed at exactly 1+3*steps events.
		growthLength(b, ctx, cl, id, 1+3*steps+growthEventsPerStep)
		switch {
		case isCold && (after.Replays-before.Replays < 1 || after.HistoryLoads-before.HistoryLoads < 1):
			// The step is cold only if the node had to rebuild the saga
			// from its history.
			b.Fatalf("fresh node: %d replays, %d history loads, want at least one of each",
				after.Replays-before.Replays, after.HistoryLoads-before.HistoryLoads)
		case !isCold && after.Replays != before.Replays:
			// A warm step replays nothing: the saga is cached, its
			// machine live.
			b.Fatalf("%d replays during a warm step, want 0", after.Replays-before.Replays)
		case isCold:
			cold = append(cold, took)
		default:
			warm = append(warm, took)
		}
	}
	return cold, warm
}

// growthNode is a node on a connection of its own, so that a node that
// stops takes its subscriptions (and the pull requests they answer) with
// it.
type growthNode struct {
	*worker.Node
	nc *nats.Conn
}

// growthConn is an in-process connection to srv, closed when b ends.
func growthConn(b *testing.B, srv *natstest.Server) *nats.Conn {
	b.Helper()
	nc, err := srv.Connect()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

// startGrowthNode starts a node of the growth benchmarks with defs (the
// growth workflow and its step, by default).
func startGrowthNode(b *testing.B, srv *natstest.Server, defs ...saga.Definition) *growthNode {
	b.Helper()
	nc := growthConn(b, srv)
	if len(defs) == 0 {
		defs = []saga.Definition{growthWorkflow, growthStep}
	}
	reg := saga.NewRegistry()
	reg.MustRegister(defs...)
	// Replaying 10,000 events runs the workflow code for a while before
	// its first new decision: the deadlock timeout allows it generously.
	n, err := worker.New(nc, reg, worker.Options{Logger: testLogger(), DisableAPI: true, DeadlockTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		b.Fatal(err)
	}
	gn := &growthNode{Node: n, nc: nc}
	b.Cleanup(func() { gn.stop(b) })
	return gn
}

// stop drains the node and closes its connection. Safe to call again.
func (n *growthNode) stop(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Stop(ctx); err != nil {
		b.Errorf("stop node: %v", err)
	}
	n.nc.Close()
}

// growthLength checks that the saga's history holds want events and
// returns how many it holds.
func growthLength(b *testing.B, ctx context.Context, cl *saga.Client, id string, want int) int {
	b.Helper()
	events, err := cl.History(ctx, id)
	if err != nil {
		b.Fatal(err)
	}
	if len(events) != want {
		b.Fatalf("history of %d events, want %d", len(events), want)
	}
	return len(events)
}

// growthWatch counts the activity completions committed to one saga, as
// published on its history subject: a commit's publish reaches a core
// subscriber as the stream stores it, which is when the step is done.
type growthWatch struct {
	mu        sync.Mutex
	next      uint64 // the first event id of the commit expected next
	completed int
	changed   chan struct{}
}

func watchGrowth(b *testing.B, nc *nats.Conn, id string) *growthWatch {
	b.Helper()
	w := &growthWatch{changed: make(chan struct{}, 1)}
	subject := stream.Config{}.Defaults().HistorySubject(id)
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		c, err := stream.DecodeCommit(m.Data)
		if err != nil {
			return
		}
		w.mu.Lock()
		// A core subscriber also sees publishes the stream refused (a
		// retry, a lost race): only a commit continuing the last one
		// counts.
		if c.FirstEventID() == w.next {
			w.next = c.NextEventID()
			for _, e := range c.Events {
				if e.Type == stream.ActivityTaskCompleted {
					w.completed++
				}
			}
		}
		w.mu.Unlock()
		select {
		case w.changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	return w
}

// waitCompleted waits until n activity completions are committed.
func (w *growthWatch) waitCompleted(b *testing.B, n int, d time.Duration) {
	b.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		got := w.completed
		w.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-w.changed:
		case <-deadline.C:
			b.Fatalf("%d activity completions after %s, want %d", got, d, n)
		}
	}
}

// medianMs is the median of ds in milliseconds.
func medianMs(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return float64(m) / float64(time.Millisecond)
}
