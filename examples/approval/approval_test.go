package approval_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// engine is an embedded nats-server with one node running the example.
type engine struct {
	node *worker.Node
	cl   *saga.Client
	svc  *approval.Service
	ctx  context.Context
}

// startEngine runs the example on a node of its own; hook, when given, is
// the back office's Hook.
func startEngine(t *testing.T, hook ...func(ctx context.Context, step, requestID string) error) *engine {
	t.Helper()
	srv := natstest.Start(t)
	svc := approval.NewService()
	if len(hook) > 0 {
		svc.Hook = hook[0]
	}
	reg := saga.NewRegistry()
	if err := reg.Register(svc.Definitions()...); err != nil {
		t.Fatal(err)
	}
	node, err := worker.New(srv.Conn(), reg, worker.Options{NodeName: "approval-node", Logger: natstest.Logger(), DisableAPI: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.Stop(ctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	})
	return &engine{node: node, cl: node.Client(), svc: svc, ctx: ctx}
}

func (e *engine) start(t *testing.T, id string, in approval.Input) *saga.Run[approval.Output] {
	t.Helper()
	run, err := saga.StartWorkflow(e.ctx, e.cl, approval.Workflow, in, saga.StartOptions{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// status asks the saga's status query.
func (e *engine) status(t *testing.T, id string) (approval.Status, error) {
	t.Helper()
	_, result, err := e.node.Query(e.ctx, id, approval.QueryStatus, nil)
	if err != nil {
		return approval.Status{}, err
	}
	var st approval.Status
	if err := stream.Unmarshal(result, &st); err != nil {
		t.Fatalf("status of %s: %v", id, err)
	}
	return st, nil
}

// awaitWaiting waits until the saga reserved its budget and waits for a
// decision, and returns its status then.
func (e *engine) awaitWaiting(t *testing.T, id string) approval.Status {
	t.Helper()
	var st approval.Status
	natstest.WaitFor(t, 10*time.Second, id+" to wait for a decision", func() bool {
		var err error
		st, err = e.status(t, id)
		return err == nil && st.Phase == approval.PhaseWaiting
	})
	return st
}

func (e *engine) wait(t *testing.T, id string) *saga.Description {
	t.Helper()
	d, err := e.cl.Wait(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (e *engine) history(t *testing.T, id string) []stream.EventType {
	t.Helper()
	events, err := e.cl.History(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var types []stream.EventType
	for _, ev := range events {
		types = append(types, ev.Type)
	}
	return types
}

// expectReleased checks that the saga failed and that its compensation
// released the budget, once.
func expectReleased(t *testing.T, d *saga.Description) {
	t.Helper()
	c := d.Compensation
	if d.Status != saga.StatusFailed || c == nil || c.Status != stream.CompensationCompleted || len(c.Steps) != 1 ||
		c.Steps[0].Step != approval.StepReserveBudget || c.Steps[0].ActivityType != approval.StepReleaseBudget {
		t.Fatalf("%s: want failed with the budget released, got status %s, compensation %+v", d.ID, d.Status, c)
	}
}

func TestApproval(t *testing.T) {
	// The reservation of r-hold holds until the test opens it.
	var held atomic.Bool
	hold := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(hold) }) }
	e := startEngine(t, func(ctx context.Context, step, requestID string) error {
		if step != approval.StepReserveBudget || requestID != "r-hold" {
			return nil
		}
		held.Store(true)
		select {
		case <-hold:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	t.Cleanup(open) // registered after the node's: runs before the node stops

	t.Run("approved", func(t *testing.T) {
		started := time.Now()
		run := e.start(t, "ap-ok", approval.Input{RequestID: "r-ok", Amount: 120.5, Requester: "bob", Timeout: "1h"})
		st := e.awaitWaiting(t, run.ID)
		if st.RequestID != "r-ok" || st.Amount != 120.5 || st.Deadline == nil || st.DecidedBy != "" {
			t.Fatalf("status while waiting: %+v", st)
		}
		if due := started.Add(time.Hour); st.Deadline.Before(due.Add(-time.Minute)) || st.Deadline.After(due.Add(time.Minute)) {
			t.Errorf("deadline %s, want about %s", st.Deadline, due)
		}
		if err := e.cl.Signal(e.ctx, run.ID, approval.SignalApprove, approval.Decision{By: "alice", Comment: "within budget"}); err != nil {
			t.Fatal(err)
		}
		out, err := run.Get(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if out.ApprovedBy != "alice" || out.PaymentID != "pay-r-ok" || out.ReservationID != "bud-r-ok" || out.Message != "request r-ok approved by alice: within budget" {
			t.Errorf("output %+v", out)
		}
		if st, err := e.status(t, run.ID); err != nil || st.Phase != approval.PhaseApproved || st.DecidedBy != "alice" {
			t.Errorf("status of the approved saga: %+v, %v", st, err)
		}
		// The decision canceled the timer: the durable timer is deleted
		// rather than left to fire.
		types := e.history(t, run.ID)
		for _, want := range []stream.EventType{stream.TimerCreated, stream.SignalReceived, stream.TimerCanceled, stream.WorkflowExecutionCompleted} {
			if !slices.Contains(types, want) {
				t.Errorf("history lacks %s: %v", want, types)
			}
		}
		if slices.Contains(types, stream.TimerFired) {
			t.Errorf("the timer fired after the decision: %v", types)
		}
	})

	t.Run("rejected", func(t *testing.T) {
		run := e.start(t, "ap-no", approval.Input{RequestID: "r-no", Amount: 900, Requester: "bob"})
		st := e.awaitWaiting(t, run.ID)
		if st.Deadline == nil || time.Until(*st.Deadline) < 23*time.Hour {
			t.Errorf("deadline %v: want the default of 24h", st.Deadline)
		}
		// A value that is not a decision decides nothing.
		bad, err := stream.Marshal("yes")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.cl.SignalPayload(e.ctx, run.ID, approval.SignalApprove, bad, ""); err != nil {
			t.Fatal(err)
		}
		if err := e.cl.Signal(e.ctx, run.ID, approval.SignalReject, approval.Decision{By: "carol", Comment: "over budget"}); err != nil {
			t.Fatal(err)
		}
		d := e.wait(t, run.ID)
		expectReleased(t, d)
		if d.Error == nil || d.Error.Kind != saga.KindWorkflowExecution || d.Error.Message != "request r-no rejected by carol: over budget" ||
			d.Error.Context["rejected_by"] != "carol" {
			t.Errorf("error %+v: want who rejected and why", d.Error)
		}
		if st, err := e.status(t, run.ID); err != nil || st.Phase != approval.PhaseRejected || st.DecidedBy != "carol" {
			t.Errorf("status of the rejected saga: %+v, %v", st, err)
		}
	})

	t.Run("timed out", func(t *testing.T) {
		run := e.start(t, "ap-late", approval.Input{RequestID: "r-late", Amount: 10, Timeout: "1s"})
		d := e.wait(t, run.ID)
		expectReleased(t, d)
		if d.Error == nil || d.Error.Kind != saga.KindTimeout || !strings.Contains(d.Error.Message, "timed out waiting for approval after 1s") {
			t.Errorf("error %+v: want it to say it timed out waiting for approval after 1s", d.Error)
		}
		if types := e.history(t, run.ID); !slices.Contains(types, stream.TimerFired) {
			t.Errorf("history lacks TimerFired: %v", types)
		}
		if st, err := e.status(t, run.ID); err != nil || st.Phase != approval.PhaseTimedOut {
			t.Errorf("status of the timed out saga: %+v, %v", st, err)
		}
	})

	t.Run("canceled", func(t *testing.T) {
		run := e.start(t, "ap-cancel", approval.Input{RequestID: "r-cancel", Amount: 10, Timeout: "1h"})
		e.awaitWaiting(t, run.ID)
		if err := e.cl.Cancel(e.ctx, run.ID, "withdrawn"); err != nil {
			t.Fatal(err)
		}
		d := e.wait(t, run.ID)
		if d.Status != saga.StatusCanceled || d.Compensation == nil || d.Compensation.Status != stream.CompensationCompleted {
			t.Errorf("want canceled with the budget released, got %s, compensation %+v", d.Status, d.Compensation)
		}
	})

	// A cancellation while the reservation runs stops the wait for it,
	// not the reservation: the undo, registered before it, still runs.
	t.Run("canceled while reserving", func(t *testing.T) {
		run := e.start(t, "ap-hold", approval.Input{RequestID: "r-hold", Amount: 10, Timeout: "1h"})
		natstest.WaitFor(t, 10*time.Second, "the held reservation", held.Load)
		if st, err := e.status(t, run.ID); err != nil || st.Phase != approval.PhaseReserving || st.Deadline != nil {
			t.Errorf("status while reserving: %+v, %v", st, err)
		}
		if err := e.cl.Cancel(e.ctx, run.ID, "withdrawn"); err != nil {
			t.Fatal(err)
		}
		open()
		d := e.wait(t, run.ID)
		if d.Status != saga.StatusCanceled || d.Compensation == nil || d.Compensation.Status != stream.CompensationCompleted ||
			len(d.Compensation.Steps) != 1 || d.Compensation.Steps[0].ActivityType != approval.StepReleaseBudget {
			t.Errorf("want canceled with the budget released, got %s, compensation %+v", d.Status, d.Compensation)
		}
	})

	// Each expense reserved once; only the approved one was paid, and
	// every other one released.
	for step, want := range map[string]int{approval.StepReserveBudget: 5, approval.StepPayExpense: 1, approval.StepReleaseBudget: 4} {
		if got := e.svc.Calls(step); got != want {
			t.Errorf("%s ran %d times, want %d", step, got, want)
		}
	}
}

func TestInvalidInput(t *testing.T) {
	e := startEngine(t)
	for id, tc := range map[string]struct {
		in   approval.Input
		want string
	}{
		"bad-timeout":  {approval.Input{RequestID: "r-1", Amount: 1, Timeout: "soon"}, `timeout must be a positive Go duration such as "1h" or "30m", got "soon"`},
		"zero-timeout": {approval.Input{RequestID: "r-1", Amount: 1, Timeout: "0s"}, "timeout must be a positive Go duration"},
		"no-amount":    {approval.Input{RequestID: "r-1"}, "amount must be positive, got 0"},
		"no-request":   {approval.Input{Amount: 1}, "request_id is required"},
	} {
		e.start(t, id, tc.in)
		d := e.wait(t, id)
		if d.Status != saga.StatusFailed || d.Error == nil || d.Error.Kind != saga.KindValidation || !strings.Contains(d.Error.Message, tc.want) {
			t.Errorf("%s: want failed with a Validation error %q, got %s, %+v", id, tc.want, d.Status, d.Error)
		}
	}
	if n := e.svc.Calls(approval.StepReserveBudget); n != 0 {
		t.Errorf("reserve-budget ran %d times for invalid inputs", n)
	}
}
