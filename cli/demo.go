package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/ui"
	"github.com/jetsaga/saga/worker"
)

// runDemo shows the engine in one command: an embedded nats-server in a
// temporary directory, one node with the order and approval examples, a
// saga run to the end and its history as a timeline, then an order whose
// shipping fails and the timeline of its compensation; then an approval
// that waits for a signal, is queried and approved by a plain NATS
// publish, and one that nobody approves in time and compensates. The
// failures are the expected outcomes; the demo fails if any saga ends
// another way.
func runDemo(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("demo", env)
	withUI := fs.Bool("ui", false, "after the demo, serve the web UI on its sagas until Ctrl-C")
	var uf uiFlags
	uf.register(fs, env, ui.DefaultListen, " with --ui", "ui-read-only")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	uiOpts, err := uf.options()
	if err != nil {
		return err
	}
	if *withUI && uf.listen == "" {
		return fmt.Errorf("%w: --ui needs a --ui-listen address", errUsage)
	}
	parent := ctx
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

	reg := saga.NewRegistry()
	if err := reg.Register(order.NewService().Definitions()...); err != nil {
		return err
	}
	if err := reg.Register(approval.NewService().Definitions()...); err != nil {
		return err
	}
	// The UI's actions go through the API; the demo alone needs none.
	node, err := worker.New(nc, reg, worker.Options{NodeName: "demo-node", Logger: log, DisableAPI: !*withUI})
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
	if err := demoApproval(ctx, node, nc, out); err != nil {
		return err
	}
	if err := demoApprovalTimeout(ctx, node, out); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nEvery event above is in JetStream; a node that crashes anywhere in this flow is replaced by")
	fmt.Fprintln(out, "another that replays the history and carries on. Run a node with \"saga-node run\".")
	if !*withUI {
		return nil
	}
	return demoServeUI(parent, uiOpts, uf.listen, nc, log, out)
}

// demoServeUI serves the web UI on the demo's sagas until SIGINT or
// SIGTERM (or ctx ends), with the node still running so that its actions
// work.
func demoServeUI(ctx context.Context, o ui.Options, listen string, nc *nats.Conn, log *slog.Logger, out io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	url, stopUI, err := serveUI(o, listen, nc, stream.Config{}, nil, nil, log)
	if err != nil {
		return err
	}
	defer stopUI()
	fmt.Fprintf(out, "\nweb UI at %s (the demo's sagas; Ctrl-C to stop)\n", url)
	<-ctx.Done()
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

// demoApproval starts an approval saga, which reserves the budget and
// waits for a decision on a durable timer, shows its status through the
// query "status", and approves it with a plain NATS publish of JSON to the
// signal's subject: what any NATS client can do, with no SDK.
func demoApproval(ctx context.Context, node *worker.Node, nc *nats.Conn, out io.Writer) error {
	cl := node.Client()
	in := approval.Input{RequestID: "R-2001", Amount: 120.5, Requester: "bob", Timeout: "1h"}
	run, err := saga.StartWorkflow(ctx, cl, approval.Workflow, in, saga.StartOptions{ID: "demo-approval-1"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nstarted saga %s (workflow approval, version %d): reserve the budget, then wait up to %s for approve or reject\n",
		run.ID, approval.Workflow.Version(), in.Timeout)
	status, err := demoAwaitPhase(ctx, node, run.ID, approval.PhaseWaiting)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "query %s of %s: %s\n", approval.QueryStatus, run.ID, status)

	// The node runs with the default stream configuration, prefix "saga".
	subject := stream.Config{}.Defaults().InboxSignalSubject(run.ID, approval.SignalApprove)
	value := `{"by":"alice","comment":"within budget"}`
	msg := &nats.Msg{Subject: subject, Data: []byte(value), Header: nats.Header{worker.HeaderContentType: {worker.ContentTypeJSON}}}
	if err := nc.PublishMsg(msg); err != nil {
		return fmt.Errorf("publish the approval: %w", err)
	}
	fmt.Fprintf(out, "published %s to %s (%s: %s)\n", value, subject, worker.HeaderContentType, worker.ContentTypeJSON)
	d, err := cl.Wait(ctx, run.ID)
	if err != nil {
		return fmt.Errorf("demo saga %s: %w", run.ID, err)
	}
	events, err := cl.History(ctx, run.ID)
	if err != nil {
		return err
	}
	var result approval.Output
	if d.Status == saga.StatusCompleted {
		if err := stream.Unmarshal(d.Output, &result); err != nil {
			return fmt.Errorf("demo saga %s: output: %w", run.ID, err)
		}
	}
	want := []stream.EventType{stream.TimerCreated, stream.SignalReceived, stream.WorkflowExecutionCompleted}
	if d.Status != saga.StatusCompleted || result.ApprovedBy != "alice" || !hasEventTypes(events, want...) {
		return fmt.Errorf("%w: %s ended %s approved by %q; want completed, approved by alice, with %v in its history",
			errDemoOutcome, run.ID, d.Status, result.ApprovedBy, want)
	}
	fmt.Fprintf(out, "completed: %s\n\n", result.Message)
	fmt.Fprintf(out, "history of %s, %d events:\n", run.ID, len(events))
	return writeTimeline(out, events)
}

// demoApprovalTimeout starts an approval that waits 2 seconds for a
// decision that never comes: the saga fails for the timeout, and the
// engine releases the budget it reserved.
func demoApprovalTimeout(ctx context.Context, node *worker.Node, out io.Writer) error {
	cl := node.Client()
	in := approval.Input{RequestID: "R-2002", Amount: 80, Requester: "carol", Timeout: "2s"}
	run, err := saga.StartWorkflow(ctx, cl, approval.Workflow, in, saga.StartOptions{ID: "demo-approval-2"})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nstarted saga %s with timeout %s, and nobody decides: the engine releases the budget it reserved\n", run.ID, in.Timeout)
	d, err := cl.Wait(ctx, run.ID)
	if err != nil {
		return fmt.Errorf("demo saga %s: %w", run.ID, err)
	}
	c := d.Compensation
	var undone []string
	if c != nil {
		for _, s := range c.Steps {
			undone = append(undone, s.ActivityType)
		}
	}
	msg := ""
	if d.Error != nil {
		msg = errorChain(d.Error)
	}
	want := []string{approval.StepReleaseBudget}
	if d.Status != saga.StatusFailed || !strings.Contains(msg, approval.TimeoutMessage) ||
		c == nil || c.Status != stream.CompensationCompleted || !slices.Equal(undone, want) {
		status := "none"
		if c != nil {
			status = c.Status
		}
		return fmt.Errorf("%w: %s ended %s (%q) with compensation %s, running %v; want failed, %q, compensation completed, running %v",
			errDemoOutcome, run.ID, d.Status, msg, status, undone, approval.TimeoutMessage, want)
	}
	fmt.Fprintf(out, "failed as expected: %s\ncompensation %s: budget released\n\n", msg, c.Status)
	events, err := cl.History(ctx, run.ID)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "history of %s, %d events (%s marks compensation):\n", run.ID, len(events), strings.TrimSpace(compensationMark))
	return writeTimeline(out, events)
}

// demoAwaitPhase asks the saga's status until it reports phase, and
// returns the status as JSON. The saga gets there on its own, within
// moments: the demo only shows it once it waits.
func demoAwaitPhase(ctx context.Context, node *worker.Node, id, phase string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		_, result, err := node.Query(ctx, id, approval.QueryStatus, nil)
		if err == nil {
			var st approval.Status
			if err = stream.Unmarshal(result, &st); err == nil && st.Phase == phase {
				doc, err := result.MarshalJSON()
				return string(doc), err
			} else if err == nil {
				err = fmt.Errorf("phase %q", st.Phase)
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %s did not reach phase %q: %v", errDemoOutcome, id, phase, last)
		case <-tick.C:
		}
	}
}

// hasEventTypes reports whether events hold each of types, in that order.
func hasEventTypes(events []stream.Event, types ...stream.EventType) bool {
	for _, e := range events {
		if len(types) > 0 && e.Type == types[0] {
			types = types[1:]
		}
	}
	return len(types) == 0
}
