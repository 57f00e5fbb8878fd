package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
)

// rounds is continuedWorkflow's input: runs left, and steps per run.
type rounds struct {
	Runs  int `json:"runs"`
	Steps int `json:"steps"`
}

// continuedWorkflow runs Steps steps of growthStep per run and continues
// as new Runs-1 times; its last run then runs one step per "go" signal,
// forever, as growthWorkflow does. A run is 2 + 3*Steps events long
// (its start, three events per step, and the continue-as-new that ends
// it).
var continuedWorkflow = saga.NewWorkflow("continued", 1, func(ctx saga.Context, r rounds) (int, error) {
	for i := range r.Steps {
		if _, err := saga.ExecuteActivity(ctx, growthStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
	if r.Runs > 1 {
		return 0, saga.ContinueAsNew(ctx, rounds{Runs: r.Runs - 1, Steps: r.Steps})
	}
	next := saga.GetSignalChannel[struct{}](ctx, "go")
	for i := 0; ; i++ {
		if _, err := next.Receive(ctx); err != nil {
			return i, err
		}
		if _, err := saga.ExecuteActivity(ctx, growthStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
})

// BenchmarkContinuedHistory is BenchmarkHistoryGrowth's 10,000 events
// spread over runs of about 100 or 1,000 events by continue-as-new:
//
//	go test ./integration -run '^$' -bench ContinuedHistory -benchtime 1x
//
// cold_step_ms is a step on a fresh node, which reads and replays the
// latest run only (replayed_events says how many events its replays
// fed); describe_ms and run_history_ms read the latest run,
// history_read_ms the whole history (every run). Compare with
// BenchmarkHistoryGrowth/events=100, =1000 and =10000.
func BenchmarkContinuedHistory(b *testing.B) {
	for _, steps := range []int{33, 333} {
		runLen := 2 + 3*steps
		b.Run(fmt.Sprintf("events=10000/run=%d", runLen), func(b *testing.B) {
			benchContinuedHistory(b, rounds{Runs: 10_000 / runLen, Steps: steps})
		})
	}
}

func benchContinuedHistory(b *testing.B, r rounds) {
	srv := natstest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := saga.NewClient(growthConn(b, srv), saga.ClientOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const id = "continued-1"
	watch := watchGrowth(b, growthConn(b, srv), id)
	node := startGrowthNode(b, srv, continuedWorkflow, growthStep)
	if _, err := saga.StartWorkflow(ctx, cl, continuedWorkflow, r, saga.StartOptions{ID: id}); err != nil {
		b.Fatal(err)
	}
	completed := r.Runs * r.Steps
	watch.waitCompleted(b, completed, time.Minute+time.Duration(completed)*10*time.Millisecond)
	d, err := cl.Describe(ctx, id)
	if err != nil || d.Run != uint32(r.Runs) {
		b.Fatalf("saga at run %d of %d: %v", d.Run, r.Runs, err)
	}
	events := d.Events

	var cold, describe, runHistory, history []time.Duration
	var replayed int64
	step := func() time.Duration {
		completed++
		t0 := time.Now()
		if err := cl.Signal(ctx, id, "go", struct{}{}); err != nil {
			b.Fatal(err)
		}
		watch.waitCompleted(b, completed, time.Minute)
		return time.Since(t0)
	}
	timed := func(out *[]time.Duration, f func() error) {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		*out = append(*out, time.Since(t0))
	}
	b.ResetTimer()
	for range b.N {
		for range growthReads {
			timed(&describe, func() error { _, err := cl.Describe(ctx, id); return err })
			timed(&runHistory, func() error { _, err := cl.RunHistory(ctx, id); return err })
			timed(&history, func() error { _, err := cl.History(ctx, id); return err })
		}
		for range growthColdSteps {
			node.stop(b)
			node = startGrowthNode(b, srv, continuedWorkflow, growthStep)
			cold = append(cold, step())
			st := node.Stats()
			if st.Replays < 1 {
				b.Fatal("a fresh node did not replay the saga")
			}
			replayed += st.ReplayedEvents
		}
	}
	b.StopTimer()
	node.stop(b)
	b.ReportMetric(medianMs(cold), "cold_step_ms")
	b.ReportMetric(medianMs(describe), "describe_ms")
	b.ReportMetric(medianMs(runHistory), "run_history_ms")
	b.ReportMetric(medianMs(history), "history_read_ms")
	b.ReportMetric(float64(replayed)/float64(len(cold)), "replayed_events")
	b.ReportMetric(float64(events), "events")
}
