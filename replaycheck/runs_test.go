package replaycheck_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

var tick = saga.NewActivity("tick", func(_ context.Context, n int) (int, error) { return n, nil })

// looping ticks, then continues as new with its input plus one, until 3:
// version 2 ticks twice, which no recorded run did.
func looping(version int) *saga.Workflow[int, int] {
	return saga.NewWorkflow("looping", 1, func(ctx saga.Context, n int) (int, error) {
		for range version {
			if _, err := saga.ExecuteActivity(ctx, tick, n).Get(ctx); err != nil {
				return 0, err
			}
		}
		if n < 3 {
			return 0, saga.ContinueAsNew(ctx, n+1)
		}
		return n, nil
	})
}

// A saga that continued as new is checked on its latest run, the one a
// node would replay: read alone from the streams, or cut from a whole
// history.
func TestContinuedSagasAreCheckedOnTheirLatestRun(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	node, err := worker.New(srv.Conn(), registry(t, looping(1), tick), worker.Options{Logger: natstest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cl := node.Client()
	if _, err := saga.StartWorkflow(ctx, cl, looping(1), 1, saga.StartOptions{ID: "loop-1"}); err != nil {
		t.Fatal(err)
	}
	if d, err := cl.Wait(ctx, "loop-1"); err != nil || d.Run != 3 {
		t.Fatalf("saga %+v %v", d, err)
	}
	all, err := cl.History(ctx, "loop-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	src := replaycheck.NewStreamSource(openStore(t, srv, stream.Config{}))
	events, err := src.Events(ctx, "loop-1")
	if err != nil || events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs).Continued.Run != 3 || events[len(events)-1].ID != all[len(all)-1].ID {
		t.Fatalf("latest run %v, %v", events, err)
	}
	mem := newMemSource().add("loop-1", all)
	for name, s := range map[string]replaycheck.Source{"streams": src, "whole history": mem} {
		if rep := check(t, s, registry(t, looping(1)), replaycheck.Options{}); counts(rep) != "checked 1 ok 1 failed 0 newer 0 skipped 0" {
			t.Fatalf("%s, same code: %s %+v", name, counts(rep), rep.Failures)
		}
		rep := check(t, s, registry(t, looping(2)), replaycheck.Options{})
		if counts(rep) != "checked 1 ok 0 failed 1 newer 0 skipped 0" || rep.Failures[0].Kind != replaycheck.KindNondeterminism ||
			*rep.Failures[0].EventID <= events[0].ID {
			t.Fatalf("%s, changed code: %s %+v", name, counts(rep), rep.Failures)
		}
		if !errors.Is(rep.Err(), replaycheck.ErrWouldNotReplay) {
			t.Fatalf("%s: %v", name, rep.Err())
		}
	}
}
