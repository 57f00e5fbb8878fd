package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/worker"
)

// A client waiting for a long saga reads each commit about once, not the
// whole history again at every commit: before, a wait read a history of
// n commits n times over, which doubled a long saga's duration.
func TestWaitReadsOnlyWhatIsNew(t *testing.T) {
	c := newCluster(t)
	const steps = 60
	step := saga.NewActivity("wait-step", func(_ context.Context, i int) (int, error) { return i, nil })
	wf := saga.NewWorkflow("wait-long", 1, func(ctx saga.Context, n int) (int, error) {
		sum := 0
		for i := range n {
			v, err := saga.ExecuteActivity(ctx, step, i).Get(ctx)
			if err != nil {
				return 0, err
			}
			sum += v
		}
		return sum, nil
	})
	c.node(worker.Options{}, wf, step)
	nc := c.srv.Conn()
	cl, err := saga.NewClient(nc, saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := ctxTimeout(t, 60*time.Second)
	run, err := saga.StartWorkflow(ctx, cl, wf, steps, saga.StartOptions{ID: "wait-long-1"})
	if err != nil {
		t.Fatal(err)
	}
	before := nc.Stats().InMsgs
	out, err := run.Get(ctx)
	if err != nil || out != steps*(steps-1)/2 {
		t.Fatalf("got %d, %v", out, err)
	}
	commits, err := c.store().ReadLatest(ctx, "wait-long-1")
	if err != nil {
		t.Fatal(err)
	}
	// Each commit reaches the waiter as a notification and as a read;
	// each read also costs the leader's answer and a batch's end marker.
	received := nc.Stats().InMsgs - before
	if bound := uint64(6 * len(commits)); received > bound {
		t.Fatalf("the wait received %d messages for a history of %d commits (bound %d): it reads what it has already", received, len(commits), bound)
	}
	t.Logf("%d messages for %d commits", received, len(commits))
}
