package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// runDemo shows the engine in one command: an embedded nats-server in a
// temporary directory, one node with the order example, a saga run to the
// end and its history as a timeline, then an order whose shipping fails
// and the timeline of its compensation. The second saga failing is the
// expected outcome; the demo fails if it ends any other way.
func runDemo(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("demo", env)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "saga-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	log := newLogger(env.Stderr, slog.LevelWarn)

	srv, err := embeddednats.Start(embeddednats.Options{Dir: dir, Logger: log.With("component", "nats-server")})
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	nc, err := srv.Connect()
	if err != nil {
		return err
	}
	defer nc.Close()

	svc := order.NewService()
	reg := saga.NewRegistry()
	if err := reg.Register(svc.Definitions()...); err != nil {
		return err
	}
	node, err := worker.New(nc, reg, worker.Options{NodeName: "demo-node", Logger: log, DisableAPI: true})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		return err
	}
	defer func() { _ = node.Stop(context.Background()) }()
	cl := node.Client()

	out := env.Stdout
	fmt.Fprintf(out, "jetsaga demo: an embedded nats-server with JetStream in %s, one node (%s)\n", dir, node.Name())
	fmt.Fprintf(out, "workflows: %v, activities: %v\n\n", reg.WorkflowNames(), reg.ActivityNames())

	in := order.Input{OrderID: "A-1001", Items: []order.Item{{SKU: "book", Qty: 2}, {SKU: "lamp", Qty: 1}}, Amount: 87.5}
	started := time.Now()
	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: "demo-order-1"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "started saga %s (workflow order, version %d)\n", run.ID, order.Workflow.Version())
	result, err := run.Get(ctx)
	if err != nil {
		return fmt.Errorf("demo saga: %w", err)
	}
	fmt.Fprintf(out, "completed in %s: reservation %s, payment %s, tracking %s\n\n",
		time.Since(started).Round(time.Millisecond), result.ReservationID, result.PaymentID, result.TrackingNumber)

	events, err := cl.History(ctx, run.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "history of %s, one JetStream subject (saga.h.0.%s), %d events:\n", run.ID, run.ID, len(events))
	if err := writeTimeline(out, events); err != nil {
		return err
	}
	if err := demoCompensation(ctx, cl, in, out); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nEvery event above is in JetStream; a node that crashes anywhere in this flow is replaced by")
	fmt.Fprintln(out, "another that replays the history and carries on. Run a node with \"saga-node run\".")
	return nil
}

// errDemoOutcome: a demo saga did not end the way the demo shows.
var errDemoOutcome = errors.New("demo saga did not end as expected")

// demoCompensation runs the order again with its last step failing for
// good, so that the engine undoes the two steps that succeeded, last
// first, and prints the timeline of that.
func demoCompensation(ctx context.Context, cl *saga.Client, in order.Input, out io.Writer) error {
	in.OrderID, in.FailStep = "A-1002", order.StepShipOrder
	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: "demo-order-2"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nstarted saga %s with fail_step %s: shipping fails for good, so the engine undoes the steps that succeeded, last first\n", run.ID, in.FailStep)
	d, err := cl.Wait(ctx, run.ID)
	if err != nil {
		return fmt.Errorf("demo saga %s: %w", run.ID, err)
	}
	c := d.Compensation
	want := []string{order.StepProcessPayment, order.StepReserveInventory}
	var undone []string
	if c != nil {
		for _, s := range c.Steps {
			undone = append(undone, s.Step)
		}
	}
	if d.Status != saga.StatusFailed || c == nil || c.Status != stream.CompensationCompleted || !slices.Equal(undone, want) {
		status := "none"
		if c != nil {
			status = c.Status
		}
		return fmt.Errorf("%w: %s ended %s with compensation %s, undoing %v; want failed, compensation completed, undoing %v",
			errDemoOutcome, run.ID, d.Status, status, undone, want)
	}
	msg := ""
	if d.Error != nil {
		msg = ": " + errorChain(d.Error)
	}
	fmt.Fprintf(out, "failed as expected%s\ncompensation %s: refunded, then released\n\n", msg, c.Status)
	events, err := cl.History(ctx, run.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "history of %s, %d events (%s marks compensation):\n", run.ID, len(events), strings.TrimSpace(compensationMark))
	return writeTimeline(out, events)
}
