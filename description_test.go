package saga

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/stream"
)

// history builds a saga's events with contiguous ids, a millisecond apart.
type history struct {
	events []stream.Event
	t0     time.Time
}

func newHistory() *history {
	h := &history{t0: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	return h.add(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", Version: 1})
}

// add appends an event and returns the history; next returns the id the
// next event gets.
func (h *history) add(typ stream.EventType, attrs any) *history {
	id := uint64(len(h.events))
	h.events = append(h.events, stream.Event{ID: id, SagaID: "s-1", Type: typ, Category: stream.CategoryOf(typ),
		Time: h.t0.Add(time.Duration(id) * time.Millisecond), Attrs: attrs})
	return h
}

func (h *history) next() uint64 { return uint64(len(h.events)) }

// step records an activity that completes, and the compensation marker
// that registers its undo.
func (h *history) step(activity, undo string) *history {
	id := h.next()
	return h.add(stream.ActivityTaskScheduled, &stream.ActivityTaskScheduledAttrs{ActivityType: activity}).
		add(stream.ActivityTaskStarted, &stream.ActivityTaskStartedAttrs{ScheduledEventID: id, Attempt: 1, Node: "n1"}).
		add(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: id}).
		add(stream.MarkerRecorded, &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation,
			Compensation: &stream.CompensationRegistration{Step: activity, ActivityType: undo}})
}

// undo schedules the compensation of step and returns its scheduled id.
func (h *history) undo(step, activity string) uint64 {
	id := h.next()
	h.add(stream.CompensationStepScheduled, &stream.CompensationStepScheduledAttrs{
		CompensationRegistration: stream.CompensationRegistration{Step: step, ActivityType: activity}}).
		add(stream.ActivityTaskStarted, &stream.ActivityTaskStartedAttrs{ScheduledEventID: id, Attempt: 1, Node: "n1"})
	return id
}

func (h *history) describe(t *testing.T) *Description {
	t.Helper()
	st, err := stream.Fold([]stream.StoredCommit{{Seq: 1, Commit: &stream.Commit{SagaID: "s-1", WorkflowType: "order", Events: h.events}}})
	if err != nil {
		t.Fatal(err)
	}
	return newDescription(st)
}

var shipFailed = &stream.Failure{Kind: string(KindActivityExecution), Message: "ship-order failed", NonRetryable: true}

// twoSteps is an order that reserved and paid, registered both undos, and
// whose shipping failed.
func twoSteps() *history {
	h := newHistory().step("reserve-inventory", "release-inventory").step("process-payment", "refund-payment")
	id := h.next()
	return h.add(stream.ActivityTaskScheduled, &stream.ActivityTaskScheduledAttrs{ActivityType: "ship-order"}).
		add(stream.ActivityTaskFailed, &stream.ActivityTaskFailedAttrs{ScheduledEventID: id, Failure: shipFailed, Attempts: 1})
}

func TestDescribeCompensationCompleted(t *testing.T) {
	h := twoSteps()
	refund := h.undo("process-payment", "refund-payment")
	h.add(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: refund, Step: "process-payment"})
	release := h.undo("reserve-inventory", "release-inventory")
	h.add(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: release, Step: "reserve-inventory"})
	h.add(stream.WorkflowExecutionFailed, &stream.WorkflowExecutionFailedAttrs{Failure: shipFailed,
		Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}})

	d := h.describe(t)
	if d.Status != StatusFailed || d.Error == nil || d.Error.Message != "ship-order failed" {
		t.Fatalf("status %s, error %+v", d.Status, d.Error)
	}
	c := d.Compensation
	if c == nil || c.Status != "completed" || c.NeedsOperator || len(c.FailedSteps) > 0 || len(c.NotRun) > 0 {
		t.Fatalf("compensation %+v", c)
	}
	want := []CompensationStepInfo{
		{Step: "process-payment", ActivityType: "refund-payment", ScheduledEventID: refund, Status: stream.StepCompleted},
		{Step: "reserve-inventory", ActivityType: "release-inventory", ScheduledEventID: release, Status: stream.StepCompleted},
	}
	if !slices.Equal(c.Steps, want) {
		t.Fatalf("steps\n got %+v\nwant %+v", c.Steps, want)
	}
	if len(d.PendingActivities) > 0 || d.CancelRequested != nil {
		t.Fatalf("pending %+v, cancel %+v", d.PendingActivities, d.CancelRequested)
	}
}

func TestDescribeCompensationRunning(t *testing.T) {
	h := twoSteps()
	refund := h.undo("process-payment", "refund-payment")
	d := h.describe(t)
	if d.Status != StatusRunning {
		t.Fatalf("status %s", d.Status)
	}
	c := d.Compensation
	if c == nil || c.Status != "running" || c.NeedsOperator || len(c.Steps) != 1 || c.Steps[0].Status != stream.StepScheduled {
		t.Fatalf("compensation %+v", c)
	}
	want := []PendingActivity{{ScheduledEventID: refund, ActivityType: "refund-payment", CompensationStep: "process-payment"}}
	if !slices.Equal(d.PendingActivities, want) {
		t.Fatalf("pending %+v, want %+v", d.PendingActivities, want)
	}

	// Between two steps nothing is open, and no outcome is recorded yet:
	// what ran so far completed.
	h.add(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: refund, Step: "process-payment"})
	if c := h.describe(t).Compensation; c == nil || c.Status != "completed" {
		t.Fatalf("after the first step: %+v", c)
	}
}

func TestDescribeCompensationFailed(t *testing.T) {
	h := twoSteps()
	refund := h.undo("process-payment", "refund-payment")
	refundFailed := &stream.Failure{Kind: string(KindActivityExecution), Message: "refund-payment failed", NonRetryable: true}
	h.add(stream.CompensationStepFailed, &stream.CompensationStepFailedAttrs{ScheduledEventID: refund, Step: "process-payment", Failure: refundFailed, Attempts: 1})
	h.add(stream.WorkflowExecutionFailed, &stream.WorkflowExecutionFailedAttrs{Failure: shipFailed,
		Compensation: &stream.CompensationOutcome{Status: stream.CompensationFailed, FailedSteps: []string{"process-payment"},
			Failure: refundFailed, NotRun: []string{"reserve-inventory"}}})

	d := h.describe(t)
	c := d.Compensation
	if c == nil || c.Status != "failed" || !c.NeedsOperator {
		t.Fatalf("compensation %+v", c)
	}
	if !slices.Equal(c.FailedSteps, []string{"process-payment"}) || !slices.Equal(c.NotRun, []string{"reserve-inventory"}) {
		t.Fatalf("failed %v, not run %v", c.FailedSteps, c.NotRun)
	}
	if len(c.Steps) != 1 || c.Steps[0].Status != stream.StepFailed || c.Steps[0].Error == nil || c.Steps[0].Error.Message != "refund-payment failed" {
		t.Fatalf("steps %+v", c.Steps)
	}

	// The JSON form, as describe --json and the API give it.
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"compensation":{"status":"failed","steps":[{"step":"process-payment","activity_type":"refund-payment","scheduled_event_id":`,
		`"status":"failed","error":{"kind":"ActivityExecution","message":"refund-payment failed","non_retryable":true}}]`,
		`"failed_steps":["process-payment"],"not_run":["reserve-inventory"],"needs_operator":true}`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "cancel_requested") {
		t.Errorf("JSON has a cancel request:\n%s", b)
	}
}

// A workflow that discarded its compensations ran none: skipped, and the
// steps are listed as not run, without calling for an operator.
func TestDescribeCompensationSkipped(t *testing.T) {
	h := twoSteps()
	h.add(stream.WorkflowExecutionFailed, &stream.WorkflowExecutionFailedAttrs{Failure: shipFailed,
		Compensation: &stream.CompensationOutcome{Status: stream.CompensationSkipped, NotRun: []string{"process-payment", "reserve-inventory"}}})
	c := h.describe(t).Compensation
	if c == nil || c.Status != "skipped" || c.NeedsOperator || len(c.Steps) != 0 || !slices.Equal(c.NotRun, []string{"process-payment", "reserve-inventory"}) {
		t.Fatalf("compensation %+v", c)
	}
}

// A saga with nothing to undo has no compensation to describe.
func TestDescribeNoCompensation(t *testing.T) {
	h := newHistory()
	id := h.next()
	h.add(stream.ActivityTaskScheduled, &stream.ActivityTaskScheduledAttrs{ActivityType: "reserve-inventory"}).
		add(stream.ActivityTaskFailed, &stream.ActivityTaskFailedAttrs{ScheduledEventID: id, Failure: shipFailed, Attempts: 1}).
		add(stream.WorkflowExecutionFailed, &stream.WorkflowExecutionFailedAttrs{Failure: shipFailed})
	d := h.describe(t)
	if d.Compensation != nil {
		t.Fatalf("compensation %+v", d.Compensation)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), `"compensation"`) || strings.Contains(string(b), "compensation_step") {
		t.Errorf("JSON mentions compensation:\n%s", b)
	}
}

func TestDescribeCancel(t *testing.T) {
	h := newHistory().step("reserve-inventory", "release-inventory")
	pay := h.next()
	h.add(stream.ActivityTaskScheduled, &stream.ActivityTaskScheduledAttrs{ActivityType: "process-payment"})
	requested := h.next()
	h.add(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "customer called", Identity: "saga-node cancel"})

	d := h.describe(t)
	want := &CancelRequest{Cause: "request", Reason: "customer called", Identity: "saga-node cancel", EventID: requested}
	if d.Status != StatusRunning || d.CancelRequested == nil || *d.CancelRequested != *want {
		t.Fatalf("status %s, cancel %+v", d.Status, d.CancelRequested)
	}
	if len(d.PendingActivities) != 1 || d.PendingActivities[0].CompensationStep != "" {
		t.Fatalf("pending %+v", d.PendingActivities)
	}

	// A second request is recorded but does not replace the first.
	h.add(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "again"})
	h.add(stream.ActivityTaskCanceled, &stream.ActivityTaskCanceledAttrs{ScheduledEventID: pay, Attempts: 1})
	release := h.undo("reserve-inventory", "release-inventory")
	h.add(stream.CompensationStepCompleted, &stream.CompensationStepCompletedAttrs{ScheduledEventID: release, Step: "reserve-inventory"})
	h.add(stream.WorkflowExecutionCanceled, &stream.WorkflowExecutionCanceledAttrs{Reason: "customer called",
		Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 1}})
	d = h.describe(t)
	if d.Status != StatusCanceled || d.ClosedAt == nil || d.CancelRequested == nil || *d.CancelRequested != *want {
		t.Fatalf("status %s, cancel %+v", d.Status, d.CancelRequested)
	}
	if c := d.Compensation; c == nil || c.Status != "completed" || len(c.Steps) != 1 || c.Steps[0].Step != "reserve-inventory" {
		t.Fatalf("compensation %+v", c)
	}
	if len(d.PendingActivities) > 0 {
		t.Fatalf("pending %+v", d.PendingActivities)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"cancel_requested":{"cause":"request","reason":"customer called","identity":"saga-node cancel","event_id":`) {
		t.Errorf("JSON lacks the cancel request:\n%s", b)
	}
}

func TestDescribeRunTimeout(t *testing.T) {
	h := newHistory()
	requested := h.next()
	h.add(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRunTimeout, Identity: "n1"})
	running := h.describe(t)
	if running.Status != StatusRunning || running.CancelRequested == nil || running.CancelRequested.Cause != "run_timeout" || running.CancelRequested.EventID != requested {
		t.Fatalf("status %s, cancel %+v", running.Status, running.CancelRequested)
	}
	h.add(stream.WorkflowExecutionTimedOut, &stream.WorkflowExecutionTimedOutAttrs{RunTimeout: time.Second})
	d := h.describe(t)
	if d.Status != StatusTimedOut || d.ClosedAt == nil || d.Compensation != nil {
		t.Fatalf("status %s, compensation %+v", d.Status, d.Compensation)
	}
}
