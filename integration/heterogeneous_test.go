package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// Nodes need not run the same workflows: each workflow type's tasks go to
// the nodes that register it, so services that each run their own sagas
// (or a rolling deploy that adds a type) share one engine without one
// node blocking another's sagas.
func TestNodesWithDifferentWorkflowsShareTheEngine(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)

	echo := func(name string) (*saga.Workflow[string, string], *saga.Activity[string, string]) {
		act := saga.NewActivity(name+"-step", func(_ context.Context, s string) (string, error) { return name + ":" + s, nil })
		wf := saga.NewWorkflow(name, 1, func(ctx saga.Context, s string) (string, error) {
			return saga.ExecuteActivity(ctx, act, s).Get(ctx)
		})
		return wf, act
	}
	billing, charge := echo("billing")
	shipping, ship := echo("shipping")
	c.node(worker.Options{NodeName: "billing-service"}, billing, charge)
	c.node(worker.Options{NodeName: "shipping-service"}, shipping, ship)

	var wg sync.WaitGroup
	for i := range 20 {
		for _, wf := range []*saga.Workflow[string, string]{billing, shipping} {
			wg.Go(func() {
				id := fmt.Sprintf("%s-%d", wf.Name(), i)
				r, err := saga.StartWorkflow(ctx, cl, wf, id, saga.StartOptions{ID: id})
				if err != nil {
					t.Error(err)
					return
				}
				out, err := r.Get(ctx)
				if err != nil || out != wf.Name()+":"+id {
					t.Errorf("%s: %q %v", id, out, err)
				}
			})
		}
	}
	wg.Wait()

	// A start through the API reaches a node that registers the type.
	nc := c.srv.Conn()
	for _, typ := range []string{"billing", "shipping"} {
		msg, err := nc.Request("saga.api.start."+typ, []byte(`{"id":"api-`+typ+`","input":"x"}`), 5*time.Second)
		if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("API start %s: %v %s", typ, err, msg.Header.Get("Nats-Service-Error"))
		}
		if d, err := cl.Wait(ctx, "api-"+typ); err != nil || d.Status != saga.StatusCompleted {
			t.Fatalf("api-%s: %v %+v", typ, err, d)
		}
	}
}

// A commit no engine would write schedules an activity whose type is not
// a subject token. Its task can never be published; rather than retry
// forever, the dispatcher fails the activity, and the saga does not hang.
func TestUnpublishableActivityTaskFailsTheActivity(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 20*time.Second)
	wf := saga.NewWorkflow("lenient", 1, func(ctx saga.Context, _ int) (int, error) {
		ctx.Await(func() bool { return false }) // waits for something that never comes
		return 0, nil
	})
	c.node(worker.Options{}, wf)
	now := time.Now()
	st := c.store()
	seq, err := st.Append(ctx, &stream.Commit{SagaID: "forged", WorkflowType: "lenient", Decided: true, Events: []stream.Event{
		{ID: 0, Type: stream.WorkflowExecutionStarted, Time: now, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "lenient", Version: 1}},
		{ID: 1, Type: stream.ActivityTaskScheduled, Time: now, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "not.a.token"}},
	}}, 0)
	if err != nil || seq == 0 {
		t.Fatal(err)
	}
	var events []stream.Event
	natstest.WaitFor(t, 10*time.Second, "the activity to be failed", func() bool {
		events, err = cl.History(ctx, "forged")
		return err == nil && len(events) >= 3
	})
	failed, ok := events[2].Attrs.(*stream.ActivityTaskFailedAttrs)
	if !ok || failed.ScheduledEventID != 1 || !strings.Contains(failed.Failure.Error(), "could not be scheduled") {
		t.Fatalf("event 2: %s %+v", events[2].Type, events[2].Attrs)
	}
	// The workflow code never scheduled that activity: replay says so.
	d, err := cl.Wait(ctx, "forged")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedNonDeterminism {
		t.Fatalf("%v %+v", err, d)
	}
}

// Results that nearly fill a message, recorded by a node without the
// workflow, on a server with a small max_payload: the commits that need a
// decision may be too large to travel inside a workflow task (the task then
// carries the saga id and sequence only, and the decider reads the
// history), and the saga still completes.
func TestNearLimitResultsRecordedWithoutTheWorkflow(t *testing.T) {
	srv := natstest.Start(t, func(o *embeddednats.Options) { o.MaxPayload = 16 << 10 })
	c := &cluster{t: t, srv: srv}
	cl := c.client()
	ctx := ctxTimeout(t, 20*time.Second)
	// Results are recorded by a node without the workflow, so each result
	// commit needs a workflow task; the result nearly fills a message.
	big := saga.NewActivity("big", func(_ context.Context, n int) (string, error) { return strings.Repeat("r", 12000-n), nil })
	wf := saga.NewWorkflow("takes-big", 1, func(ctx saga.Context, n int) (int, error) {
		s, err := saga.ExecuteActivity(ctx, big, n).Get(ctx)
		return len(s), err
	})
	c.node(worker.Options{NodeName: "activities"}, big)
	c.node(worker.Options{NodeName: "deciders"}, wf)
	r, err := saga.StartWorkflow(ctx, cl, wf, 0, saga.StartOptions{ID: "big-1"})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := r.Get(ctx); err != nil || out != 12000 {
		t.Fatalf("got %d, %v", out, err)
	}
}
