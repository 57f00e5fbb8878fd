package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// timelineEvents builds events with contiguous ids, a millisecond apart.
func timelineEvents(attrs ...any) []stream.Event {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var events []stream.Event
	for i, a := range attrs {
		typ := eventTypeOf(a)
		events = append(events, stream.Event{ID: uint64(i), SagaID: "s-1", Type: typ, Category: stream.CategoryOf(typ),
			Time: t0.Add(time.Duration(i) * time.Millisecond), Attrs: a})
	}
	return events
}

// eventTypeOf names the event type an attributes value belongs to.
func eventTypeOf(a any) stream.EventType {
	switch a.(type) {
	case *stream.WorkflowExecutionStartedAttrs:
		return stream.WorkflowExecutionStarted
	case *stream.WorkflowExecutionFailedAttrs:
		return stream.WorkflowExecutionFailed
	case *stream.WorkflowExecutionCanceledAttrs:
		return stream.WorkflowExecutionCanceled
	case *stream.WorkflowExecutionTimedOutAttrs:
		return stream.WorkflowExecutionTimedOut
	case *stream.WorkflowExecutionCancelRequestedAttrs:
		return stream.WorkflowExecutionCancelRequested
	case *stream.ActivityTaskScheduledAttrs:
		return stream.ActivityTaskScheduled
	case *stream.ActivityTaskStartedAttrs:
		return stream.ActivityTaskStarted
	case *stream.ActivityTaskCompletedAttrs:
		return stream.ActivityTaskCompleted
	case *stream.ActivityTaskFailedAttrs:
		return stream.ActivityTaskFailed
	case *stream.ActivityTaskCanceledAttrs:
		return stream.ActivityTaskCanceled
	case *stream.MarkerRecordedAttrs:
		return stream.MarkerRecorded
	case *stream.CompensationStepScheduledAttrs:
		return stream.CompensationStepScheduled
	case *stream.CompensationStepCompletedAttrs:
		return stream.CompensationStepCompleted
	case *stream.CompensationStepFailedAttrs:
		return stream.CompensationStepFailed
	}
	panic("no event type for the attributes")
}

// timelineLines renders events and returns the timeline's lines, without
// the header, by event id.
func timelineLines(t *testing.T, events []stream.Event) []string {
	t.Helper()
	var b bytes.Buffer
	if err := writeTimeline(&b, events); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != len(events)+1 {
		t.Fatalf("%d lines for %d events:\n%s", len(lines), len(events), b.String())
	}
	return lines[1:]
}

func TestTimelineCompensation(t *testing.T) {
	reg := func(step, undo string) *stream.CompensationRegistration {
		return &stream.CompensationRegistration{Step: step, ActivityType: undo, Input: mustPayload(t, map[string]string{"order_id": "A-1"})}
	}
	sched := func(step, undo string) *stream.CompensationStepScheduledAttrs {
		return &stream.CompensationStepScheduledAttrs{CompensationRegistration: *reg(step, undo)}
	}
	failure := &stream.Failure{Kind: "ActivityExecution", Message: "refund refused", NonRetryable: true}
	events := timelineEvents(
		&stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", Version: 1, RunTimeout: 30 * time.Second}, // 0
		&stream.ActivityTaskScheduledAttrs{ActivityType: "reserve-inventory"},                                  // 1
		&stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1},                                                // 2
		&stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation, Compensation: reg("reserve-inventory", "release-inventory")},
		&stream.ActivityTaskScheduledAttrs{ActivityType: "process-payment"}, // 4
		&stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "customer called", Identity: "saga-node cancel"},
		&stream.ActivityTaskCanceledAttrs{ScheduledEventID: 4, Attempts: 2},           // 6
		sched("reserve-inventory", "release-inventory"),                               // 7
		&stream.ActivityTaskStartedAttrs{ScheduledEventID: 7, Attempt: 1, Node: "n1"}, // 8
		&stream.CompensationStepCompletedAttrs{ScheduledEventID: 7, Step: "reserve-inventory", Result: mustPayload(t, map[string]bool{"released": true})},
		sched("process-payment", "refund-payment"), // 10
		&stream.CompensationStepFailedAttrs{ScheduledEventID: 10, Step: "process-payment", Failure: failure, Attempts: 3},
		&stream.WorkflowExecutionCanceledAttrs{Reason: "customer called", Compensation: &stream.CompensationOutcome{
			Status: stream.CompensationFailed, Completed: 1, FailedSteps: []string{"process-payment"}, Failure: failure, NotRun: []string{"ship-order"}}},
	)
	lines := timelineLines(t, events)
	for i, want := range map[int][]string{
		0:  {"WorkflowExecutionStarted", "run_timeout=30s"},
		3:  {"MarkerRecorded", "↩ registered: undoes reserve-inventory via release-inventory", `input={"order_id":"A-1"}`},
		5:  {"WorkflowExecutionCancelRequested", "cause=request by saga-node cancel", `reason="customer called"`},
		6:  {"ActivityTaskCanceled", "process-payment (event 4) canceled after 2 attempts"},
		7:  {"CompensationStepScheduled", "↩ undoes reserve-inventory via release-inventory"},
		8:  {"ActivityTaskStarted", "↩ release-inventory undoing reserve-inventory (event 7) attempt 1 on n1"},
		9:  {"CompensationStepCompleted", "↩ undid reserve-inventory via release-inventory", `result={"released":true}`},
		10: {"CompensationStepScheduled", "↩ undoes process-payment via refund-payment"},
		11: {"CompensationStepFailed", "↩ failed to undo process-payment via refund-payment after 3 attempts: [ActivityExecution] refund refused"},
		12: {"WorkflowExecutionCanceled", `reason="customer called"`, "↩ compensation failed (1 undone, failed: process-payment, not run: ship-order)"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("event %d: line lacks %q:\n%s", i, w, lines[i])
			}
		}
	}
	// Only compensation events carry the mark.
	for _, i := range []int{0, 1, 2, 4, 5, 6} {
		if strings.Contains(lines[i], compensationMark) {
			t.Errorf("event %d is marked as compensation:\n%s", i, lines[i])
		}
	}

	ended := timelineLines(t, timelineEvents(
		&stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", Version: 1},
		&stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRunTimeout, Identity: "n1"},
		&stream.WorkflowExecutionTimedOutAttrs{RunTimeout: 2 * time.Second, Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}},
		&stream.WorkflowExecutionFailedAttrs{Failure: failure, Compensation: &stream.CompensationOutcome{Status: stream.CompensationSkipped, NotRun: []string{"a", "b"}}},
	))
	for i, want := range map[int]string{
		1: "cause=run_timeout by n1",
		2: "ran past its run timeout of 2s; ↩ compensation completed (2 undone)",
		3: "[ActivityExecution] refund refused; ↩ compensation skipped (0 undone, not run: a, b)",
	} {
		if !strings.Contains(ended[i], want) {
			t.Errorf("line %d lacks %q:\n%s", i, want, ended[i])
		}
	}
}

func mustPayload(t *testing.T, v any) stream.Payload {
	t.Helper()
	p, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDescribeTextCompensation(t *testing.T) {
	d := &saga.Description{
		ID: "c-1", Type: "order", Version: 1, Status: saga.StatusRunning,
		PendingActivities: []saga.PendingActivity{{ScheduledEventID: 14, ActivityType: "refund-payment", CompensationStep: "process-payment"}},
		CancelRequested:   &saga.CancelRequest{Cause: "request", Reason: "customer called", Identity: "saga-node cancel", EventID: 12},
		Compensation: &saga.CompensationInfo{Status: "running", Steps: []saga.CompensationStepInfo{
			{Step: "process-payment", ActivityType: "refund-payment", ScheduledEventID: 14, Status: "scheduled"}}},
	}
	var b bytes.Buffer
	if err := writeDescription(&b, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"pending:  refund-payment (scheduled at event 14), undoing process-payment\n",
		`cancel:   requested at event 12 (request) by saga-node cancel: "customer called"` + "\n",
		"compensation: running\n",
		"undo:     process-payment via refund-payment (event 14): scheduled\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("describe lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "needs an operator") {
		t.Errorf("a running compensation needs no operator:\n%s", b.String())
	}

	d.Status, d.PendingActivities = saga.StatusFailed, nil
	d.Compensation = &saga.CompensationInfo{Status: "failed", NeedsOperator: true,
		FailedSteps: []string{"process-payment"}, NotRun: []string{"reserve-inventory"},
		Steps: []saga.CompensationStepInfo{{Step: "process-payment", ActivityType: "refund-payment", ScheduledEventID: 14, Status: "failed",
			Error: &saga.StructuredError{Kind: saga.KindActivityExecution, Message: "refund refused"}}}}
	b.Reset()
	if err := writeDescription(&b, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"compensation: failed\n",
		"undo:     process-payment via refund-payment (event 14): failed: [ActivityExecution] refund refused\n",
		"not run:  reserve-inventory\n",
		"needs an operator: undo by hand: process-payment, reserve-inventory\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("describe lacks %q:\n%s", want, b.String())
		}
	}
}

// hold is a back office whose step holds for one order until opened.
type hold struct {
	svc  *order.Service
	held atomic.Bool
	open func()
}

// holdStep returns a back office whose steps hold for the given order
// until open is called (it may be called more than once; the test's
// cleanup calls it too, before the node stops).
func holdStep(orderID string, steps ...string) *hold {
	h := &hold{svc: order.NewService()}
	release := make(chan struct{})
	var once sync.Once
	h.open = func() { once.Do(func() { close(release) }) }
	h.svc.Hook = func(ctx context.Context, s, id string) error {
		if !slices.Contains(steps, s) || id != orderID {
			return nil
		}
		h.held.Store(true)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h
}

func TestCancel(t *testing.T) {
	// The undo of the reservation holds too, so that the saga cannot end
	// before the test has tried a second cancel.
	h := holdStep("HOLD-C", order.StepProcessPayment, order.StepReleaseInventory)
	url := startEngine(t, h.svc)
	t.Cleanup(h.open) // registered after the node's: runs before the node stops

	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"cancel"},
			{"cancel", "a", "b"},
			{"cancel", "x", "--bogus"},
			{"cancel", "x", "--reason"},
		} {
			r := withURL(t, url, args...)
			if r.code != ExitUsage {
				t.Errorf("%q: want exit %d, got:\n%s", args, ExitUsage, r)
				continue
			}
			if !strings.Contains(r.stderr, "saga-node cancel") || r.stdout != "" {
				t.Errorf("%q: stderr should name the command, stdout stay empty:\n%s", args, r)
			}
		}
		r := withURL(t, url, "cancel", "a.b")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "invalid identifier") {
			t.Errorf("cancel a.b: stderr should say the id is invalid:\n%s", r)
		}
		r = withURL(t, url, "cancel", "-h")
		expectCode(t, r, ExitOK)
		if !strings.Contains(r.stderr, "-reason") {
			t.Errorf("cancel -h should list --reason:\n%s", r)
		}
	})

	t.Run("missing saga", func(t *testing.T) {
		r := withURL(t, url, "cancel", "no-such-saga")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga-node cancel: saga no-such-saga not found") || r.stdout != "" {
			t.Errorf("stderr should say the saga is not found:\n%s", r)
		}
	})

	t.Run("ended saga", func(t *testing.T) {
		expectCode(t, withURL(t, url, "start", "order", "--id", "done-1", "--input", okInput, "--wait", "--timeout", "15s"), ExitOK)
		r := withURL(t, url, "cancel", "done-1")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga done-1 already ended (completed): there is nothing to cancel") || r.stdout != "" {
			t.Errorf("stderr should say the saga ended:\n%s", r)
		}
	})

	t.Run("running saga", func(t *testing.T) {
		in := `{"order_id":"HOLD-C","items":[{"sku":"book","qty":1}],"amount":5}`
		expectCode(t, withURL(t, url, "start", "order", "--id", "hold-c", "--input", in), ExitOK)
		// The reservation completed and registered its undo: the payment
		// runs, and holds.
		natstest.WaitFor(t, 10*time.Second, "the held payment", h.held.Load)

		r := withURL(t, url, "cancel", "hold-c", "--reason", "customer called")
		expectCode(t, r, ExitOK)
		if r.stdout != "cancel requested for hold-c\n" {
			t.Errorf("want %q, got %q", "cancel requested for hold-c\n", r.stdout)
		}
		r = withURL(t, url, "cancel", "hold-c")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "the cancellation of saga hold-c was already requested") {
			t.Errorf("a second cancel should say it was requested already:\n%s", r)
		}

		// The payment never returns on its own: it does not heartbeat.
		h.open()
		var d map[string]any
		natstest.WaitFor(t, 15*time.Second, "hold-c to end", func() bool {
			r := withURL(t, url, "describe", "hold-c", "--json")
			if r.code != ExitOK {
				return false
			}
			d = decodeObject(t, r.stdout)
			return d["status"] != "running"
		})
		if d["status"] != "canceled" {
			t.Fatalf("hold-c ended %v, want canceled: %v", d["status"], d)
		}
		c, _ := d["cancel_requested"].(map[string]any)
		if c["cause"] != "request" || c["reason"] != "customer called" || c["identity"] != cancelIdentity {
			t.Errorf("cancel_requested %v", d["cancel_requested"])
		}
		comp, _ := d["compensation"].(map[string]any)
		steps, _ := comp["steps"].([]any)
		if comp["status"] != "completed" || len(steps) == 0 {
			t.Fatalf("compensation %v\n%s", d["compensation"], withURL(t, url, "history", "hold-c").stdout)
		}
		if last, _ := steps[len(steps)-1].(map[string]any); last["step"] != order.StepReserveInventory || last["activity_type"] != order.StepReleaseInventory {
			t.Errorf("the reservation is not undone last: %v", steps)
		}

		r = withURL(t, url, "describe", "hold-c")
		expectCode(t, r, ExitOK)
		for _, want := range []string{"status:   canceled\n", `by saga-node cancel: "customer called"`, "compensation: completed\n", "undo:     reserve-inventory via release-inventory"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("describe lacks %q:\n%s", want, r.stdout)
			}
		}
		r = withURL(t, url, "history", "hold-c")
		expectCode(t, r, ExitOK)
		for _, want := range []string{"WorkflowExecutionCancelRequested", "cause=request by saga-node cancel", "↩ undid reserve-inventory via release-inventory", "WorkflowExecutionCanceled"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("history lacks %q:\n%s", want, r.stdout)
			}
		}
		r = withURL(t, url, "cancel", "hold-c")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "already ended (canceled)") {
			t.Errorf("cancel of a canceled saga should say it ended:\n%s", r)
		}
	})
}

// historyJSON reads a saga's history with "history --json".
func historyJSON(t *testing.T, url, id string) []map[string]any {
	t.Helper()
	r := withURL(t, url, "history", id, "--json")
	expectCode(t, r, ExitOK)
	var evs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &evs); err != nil {
		t.Fatalf("history --json is not a JSON array: %v\n%s", err, r.stdout)
	}
	return evs
}

func attrs(e map[string]any) map[string]any {
	a, _ := e["attributes"].(map[string]any)
	return a
}

// Acceptance: an order whose shipping fails for good exits non-zero, and
// its history shows the refund completed before the release (LIFO).
func TestStartCompensates(t *testing.T) {
	svc := order.NewService()
	url := startEngine(t, svc)

	in := `{"order_id":"C-1","items":[{"sku":"book","qty":1}],"amount":12.5,"fail_step":"ship-order"}`
	r := withURL(t, url, "start", "order", "--id", "comp-1", "--input", in, "--wait", "--timeout", "15s")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "saga comp-1 is failed") {
		t.Errorf("stderr should say the saga failed:\n%s", r)
	}
	m := decodeObject(t, r.stdout)
	comp, _ := m["compensation"].(map[string]any)
	if m["status"] != "failed" || comp["status"] != "completed" || comp["needs_operator"] != false {
		t.Fatalf("want failed with compensation completed, got status %v, compensation %v", m["status"], m["compensation"])
	}

	evs := historyJSON(t, url, "comp-1")
	undos := map[float64]string{} // scheduled event id -> activity type
	var completed, steps []string
	failedAt, shipFailedAt := -1, -1
	for i, e := range evs {
		a := attrs(e)
		switch e["type"] {
		case string(stream.CompensationStepScheduled):
			undos[e["id"].(float64)], _ = a["activity_type"].(string)
		case string(stream.CompensationStepCompleted):
			completed = append(completed, undos[a["scheduled_event_id"].(float64)])
			s, _ := a["step"].(string)
			steps = append(steps, s)
			if i < shipFailedAt || shipFailedAt < 0 {
				t.Errorf("compensation step at event %d comes before the failure it compensates", i)
			}
		case string(stream.ActivityTaskFailed):
			shipFailedAt = i
		case string(stream.WorkflowExecutionFailed):
			failedAt = i
			if c, _ := a["compensation"].(map[string]any); c["status"] != "completed" || c["completed"] != float64(2) {
				t.Errorf("WorkflowExecutionFailed records compensation %v", a["compensation"])
			}
		}
	}
	if want := []string{order.StepRefundPayment, order.StepReleaseInventory}; !slices.Equal(completed, want) {
		t.Errorf("CompensationStepCompleted for %v, want %v (last registered first)", completed, want)
	}
	if want := []string{order.StepProcessPayment, order.StepReserveInventory}; !slices.Equal(steps, want) {
		t.Errorf("steps undone %v, want %v", steps, want)
	}
	if failedAt != len(evs)-1 {
		t.Errorf("WorkflowExecutionFailed at %d, want last (%d events)", failedAt, len(evs))
	}
	if svc.Calls(order.StepRefundPayment) != 1 || svc.Calls(order.StepReleaseInventory) != 1 {
		t.Errorf("refund ran %d times, release %d", svc.Calls(order.StepRefundPayment), svc.Calls(order.StepReleaseInventory))
	}

	r = withURL(t, url, "history", "comp-1")
	expectCode(t, r, ExitOK)
	refund := strings.Index(r.stdout, "↩ undid process-payment via refund-payment")
	release := strings.Index(r.stdout, "↩ undid reserve-inventory via release-inventory")
	if refund < 0 || release < refund || !strings.Contains(r.stdout, "↩ compensation completed (2 undone)") {
		t.Errorf("the timeline should show the refund, then the release, then the outcome:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "↩ refund-payment undoing process-payment (event") {
		t.Errorf("the timeline should name the undo an attempt ran:\n%s", r.stdout)
	}
}

// An undo that fails for good leaves the saga for an operator: describe
// names what is left to undo by hand.
func TestStartCompensationFails(t *testing.T) {
	svc := order.NewService()
	url := startEngine(t, svc)

	in := `{"order_id":"C-2","amount":3,"fail_step":"ship-order","fail_compensation":"refund-payment"}`
	r := withURL(t, url, "start", "order", "--id", "comp-2", "--input", in, "--wait", "--timeout", "15s")
	expectCode(t, r, ExitError)
	m := decodeObject(t, r.stdout)
	comp, _ := m["compensation"].(map[string]any)
	if m["status"] != "failed" || comp["status"] != "failed" || comp["needs_operator"] != true {
		t.Fatalf("want failed with compensation failed, got status %v, compensation %v", m["status"], m["compensation"])
	}
	r = withURL(t, url, "describe", "comp-2")
	expectCode(t, r, ExitOK)
	for _, want := range []string{
		"compensation: failed\n",
		"undo:     process-payment via refund-payment (event",
		"refund-payment failed for order C-2 (fail_compensation)",
		"not run:  reserve-inventory\n",
		"needs an operator: undo by hand: process-payment, reserve-inventory\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe lacks %q:\n%s", want, r.stdout)
		}
	}
	if n := svc.Calls(order.StepReleaseInventory); n != 0 {
		t.Errorf("release-inventory ran %d times after the refund failed; compensation stops at the first failure", n)
	}

	// Only an undo can be made to fail that way.
	r = withURL(t, url, "start", "order", "--input", `{"order_id":"C-3","fail_compensation":"ship-order"}`, "--wait", "--timeout", "15s")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stdout, `fail_compensation \"ship-order\" is not one of`) {
		t.Errorf("a fail_compensation that is not an undo should be refused:\n%s", r)
	}
}

func TestStartRunTimeout(t *testing.T) {
	h := holdStep("HOLD-T", order.StepProcessPayment)
	url := startEngine(t, h.svc)
	t.Cleanup(h.open)

	for _, bad := range []string{"soon", "-5s"} {
		r := withURL(t, url, "start", "order", "--input", okInput, "--run-timeout", bad)
		expectCode(t, r, ExitUsage)
		if !strings.Contains(r.stderr, "run-timeout") || r.stdout != "" {
			t.Errorf("--run-timeout %s: stderr should name the flag:\n%s", bad, r)
		}
	}

	// The timeout is recorded with the start.
	expectCode(t, withURL(t, url, "start", "order", "--id", "rt-1", "--input", okInput, "--run-timeout", "90s", "--wait", "--timeout", "15s"), ExitOK)
	evs := historyJSON(t, url, "rt-1")
	if got := attrs(evs[0])["run_timeout"]; got != float64(90*time.Second) {
		t.Errorf("WorkflowExecutionStarted has run_timeout %v, want %d", got, 90*time.Second)
	}

	// A saga still running when its timeout passes is canceled,
	// compensates and ends timed_out.
	in := `{"order_id":"HOLD-T","items":[{"sku":"book","qty":1}],"amount":5}`
	r := withURL(t, url, "start", "order", "--id", "rt-2", "--input", in, "--run-timeout", "1s", "--wait", "--timeout", "12s")
	h.open()
	if !h.held.Load() {
		t.Errorf("the payment never held: the saga did not run until its timeout")
	}
	expectCode(t, r, ExitError)
	m := decodeObject(t, r.stdout)
	comp, _ := m["compensation"].(map[string]any)
	c, _ := m["cancel_requested"].(map[string]any)
	if m["status"] != "timed_out" || c["cause"] != "run_timeout" || comp["status"] != "completed" {
		t.Errorf("want timed_out by run_timeout with compensation completed, got %v", m)
	}
}

// The API's cancel endpoint and run_timeout, as any NATS client uses them.
func TestAPICancelAndRunTimeout(t *testing.T) {
	url := startEngine(t, nil)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cfg := stream.Config{Prefix: "saga"}

	var started api.StartResponse
	err = apiRequest(ctx, nc, cfg.StartSubject("order"), api.StartRequest{ID: "api-rt", Input: json.RawMessage(okInput), RunTimeout: "soon"}, &started)
	if err == nil || !strings.Contains(err.Error(), "(code 400)") || !strings.Contains(err.Error(), "run_timeout") {
		t.Errorf("a bad run_timeout: want a 400 naming it, got %v", err)
	}
	if err := apiRequest(ctx, nc, cfg.StartSubject("order"), api.StartRequest{ID: "api-1", Input: json.RawMessage(okInput), RunTimeout: "1m"}, &started); err != nil {
		t.Fatal(err)
	}
	expectCode(t, withURL(t, url, "start", "order", "--id", "api-1", "--if-exists", "use_existing", "--wait", "--timeout", "15s"), ExitOK)
	if got := attrs(historyJSON(t, url, "api-1")[0])["run_timeout"]; got != float64(time.Minute) {
		t.Errorf("run_timeout %v, want %d", got, time.Minute)
	}

	for _, tc := range []struct {
		req  any
		code string
	}{
		{api.CancelRequest{ID: "api-1", Reason: "late"}, "(code 409)"},
		{api.CancelRequest{ID: "no-such-saga"}, "(code 404)"},
		{api.CancelRequest{ID: "a.b"}, "(code 400)"},
		{map[string]string{"id": "api-1", "bogus": "x"}, "(code 400)"},
	} {
		var res api.SagaRequest
		err := apiRequest(ctx, nc, cfg.APISubject("cancel"), tc.req, &res)
		if err == nil || !strings.Contains(err.Error(), tc.code) {
			t.Errorf("cancel %+v: want %s, got %v", tc.req, tc.code, err)
		}
	}
}
