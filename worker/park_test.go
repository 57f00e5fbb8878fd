package worker_test

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// wakeThenFinish waits for "wake", records what woke it as a side effect
// (a decision), then waits for "finish": the wake's step decides without
// ending the saga, so nothing reads the history back after it.
var wakeThenFinish = saga.NewWorkflow("wake-then-finish", 1, func(ctx saga.Context, _ int) (string, error) {
	by, err := saga.GetSignalChannel[string](ctx, "wake").Receive(ctx)
	if err != nil {
		return "", err
	}
	woken, err := saga.SideEffect(ctx, func() (string, error) { return "woken by " + by, nil })
	if err != nil {
		return "", err
	}
	_, err = saga.GetSignalChannel[struct{}](ctx, "finish").Receive(ctx)
	return woken, err
})

// A saga parked on a signal holds no goroutine once idle: the node
// releases its machine and keeps its events and state, and the signal's
// step rebuilds the machine from them, with no read of the history.
func TestIdleSagasReleaseTheirMachinesAndResumeFromTheCache(t *testing.T) {
	const sagas = 50
	// Goroutines of the node's own work (handlers winding down, pull
	// requests) that may still run when the sagas are counted.
	const allowance = 15
	e := newEnv(t)
	node := e.node(worker.Options{IdleMachineTimeout: 100 * time.Millisecond}, wakeThenFinish)
	runtime.GC()
	baseline := runtime.NumGoroutine()
	runs := make([]*saga.Run[string], sagas)
	for i := range runs {
		r, err := saga.StartWorkflow(e.ctx, e.cl, wakeThenFinish, 0, saga.StartOptions{ID: fmt.Sprintf("idle-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		runs[i] = r
	}
	// Each saga's machine was built once, at its start, and released once.
	natstest.WaitFor(t, 20*time.Second, "every machine released", func() bool {
		st := node.Stats()
		return st.CachedSagas == sagas && st.LiveMachines == 0 && st.MachinesReleased == sagas
	})
	natstest.WaitFor(t, 10*time.Second, fmt.Sprintf("at most %d goroutines (%d before the first start)", baseline+allowance, baseline), func() bool {
		return runtime.NumGoroutine() <= baseline+allowance
	})

	before := node.Stats()
	for i := range runs {
		if err := e.cl.Signal(e.ctx, fmt.Sprintf("idle-%d", i), "wake", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range runs {
		natstest.WaitFor(t, 20*time.Second, r.ID+" woken", func() bool {
			events, err := e.cl.History(e.ctx, r.ID)
			return err == nil && slices.ContainsFunc(events, func(ev stream.Event) bool { return ev.Type == stream.MarkerRecorded })
		})
	}
	after := node.Stats()
	if n := after.Replays - before.Replays; n != sagas {
		t.Errorf("%d replays for %d woken sagas, want one each (from the cached events)", n, sagas)
	}
	if n := after.HistoryReads - before.HistoryReads; n != 0 {
		t.Errorf("%d history reads to wake sagas the node held, want 0", n)
	}
	if after.CachedSagas != sagas {
		t.Errorf("%d sagas cached, want all %d", after.CachedSagas, sagas)
	}

	for i, r := range runs {
		if err := e.cl.Signal(e.ctx, r.ID, "finish", struct{}{}); err != nil {
			t.Fatal(err)
		}
		out, err := r.Get(e.ctx)
		if want := fmt.Sprintf("woken by %d", i); err != nil || out != want {
			t.Fatalf("saga %s: %q, %v; want %q", r.ID, out, err, want)
		}
	}
}

// A node refuses an idle timeout that would make it sweep its cache
// without pause, or never.
func TestIdleMachineTimeoutIsValidated(t *testing.T) {
	e := newEnv(t)
	for _, d := range []time.Duration{-time.Second, time.Millisecond} {
		_, err := worker.New(e.srv.Conn(), saga.NewRegistry(), worker.Options{IdleMachineTimeout: d})
		if !errors.Is(err, saga.KindConfiguration) {
			t.Errorf("IdleMachineTimeout %s: %v, want a configuration error", d, err)
		}
	}
}
