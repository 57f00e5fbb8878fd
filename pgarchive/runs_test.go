package pgarchive_test

import (
	"context"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

var step = saga.NewActivity("step", func(_ context.Context, n int) (int, error) { return n, nil })

// countdown steps, then continues as new one lower, until zero.
var countdown = saga.NewWorkflow("countdown", 1, func(ctx saga.Context, n int) (string, error) {
	if _, err := saga.ExecuteActivity(ctx, step, n).Get(ctx); err != nil {
		return "", err
	}
	if n > 0 {
		return "", saga.ContinueAsNew(ctx, n-1)
	}
	return "liftoff", nil
})

// The projection of a saga that continued as new holds every run's
// commits and events, and its row describes the latest run.
func TestProjectionOfASagaThatContinuedAsNew(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	pg, err := pgarchive.Open(ctx, pgtest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	reg := saga.NewRegistry()
	reg.MustRegister(countdown, step)
	node, err := worker.New(srv.Conn(), reg, worker.Options{Projection: pg, Logger: natstest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop(context.Background()) })
	cl := node.Client()
	ids := []string{"cd-1", "cd-2"}
	for i, id := range ids {
		if _, err := saga.StartWorkflow(ctx, cl, countdown, 2+i, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		d, err := cl.Wait(ctx, id)
		if err != nil || d.Status != saga.StatusCompleted || d.Run != uint32(3+i) {
			t.Fatalf("%s: %+v %v", id, d, err)
		}
	}
	hist, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	natstest.WaitFor(t, 30*time.Second, "the projection to hold both sagas' ends", func() bool {
		for _, id := range ids {
			if r, err := pg.Saga(ctx, id); err != nil || r.Status != saga.StatusCompleted {
				return false
			}
		}
		return true
	})
	mismatches, err := pg.Verify(ctx, hist, ids)
	if err != nil || len(mismatches) != 0 {
		t.Fatalf("verify: %v %v", mismatches, err)
	}
	for i, id := range ids {
		r, err := pg.Saga(ctx, id)
		if err != nil || r.Run != uint32(3+i) {
			t.Fatalf("%s row: %+v %v", id, r, err)
		}
		st, err := pg.State(ctx, id)
		if err != nil || st.Run != r.Run || st.Status != saga.StatusCompleted {
			t.Fatalf("%s state from the projection: %+v %v", id, st, err)
		}
		events, err := pg.History(ctx, id)
		if err != nil || uint64(len(events)) != r.Events || len(stream.LatestRun(events)) != int(st.RunEvents()) {
			t.Fatalf("%s: %d events projected, row says %d: %v", id, len(events), r.Events, err)
		}
	}
}
