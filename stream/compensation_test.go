package stream_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/stream"
)

// A compensation step round-trips with its registration inlined, in
// msgpack and in JSON, and folds into the state as an open activity that
// names its step; the saga's cancellation never reaches it.
func TestCompensationEventsRoundTripAndFold(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	input, _ := stream.Marshal(map[string]string{"reservation_id": "r1"})
	events := []stream.Event{
		{ID: 0, Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", RunTimeout: time.Minute}},
		{ID: 1, Type: stream.ActivityTaskScheduled, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "ship"}},
		{ID: 2, Type: stream.WorkflowExecutionCancelRequested, Attrs: &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "r"}},
		{ID: 3, Type: stream.CompensationStepScheduled, Attrs: &stream.CompensationStepScheduledAttrs{
			CompensationRegistration: stream.CompensationRegistration{Step: "reserve", ActivityType: "release", Input: input}, RegisteredEventID: 1}},
	}
	for i := range events {
		events[i].SagaID, events[i].Time, events[i].Category = "s1", now, stream.CategoryOf(events[i].Type)
	}
	c := &stream.Commit{SagaID: "s1", WorkflowType: "order", Events: events}
	data, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := stream.DecodeCommit(data)
	if err != nil {
		t.Fatal(err)
	}
	a := back.Events[3].Attrs.(*stream.CompensationStepScheduledAttrs)
	if a.Step != "reserve" || a.ActivityType != "release" || string(a.Input) != string(input) || a.RegisteredEventID != 1 {
		t.Fatalf("decoded %+v", a)
	}
	doc, err := json.Marshal(back.Events[3])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), `"step":"reserve"`) || !strings.Contains(string(doc), `"activity_type":"release"`) {
		t.Fatalf("json %s", doc)
	}
	st, err := stream.Fold([]stream.StoredCommit{{Seq: 1, Commit: back}})
	if err != nil {
		t.Fatal(err)
	}
	if st.RunTimeout != time.Minute || st.CancelRequestedEventID != 2 || st.RunTimedOut {
		t.Fatalf("state %+v", st)
	}
	if !st.CancelReaches(1) {
		t.Fatal("the cancellation does not reach the activity scheduled before it")
	}
	if st.CancelReaches(3) || !st.OpenActivities[3].IsCompensation() {
		t.Fatal("the cancellation reaches a compensation step")
	}
	if len(st.CompensationSteps) != 1 || st.CompensationSteps[0].Status != stream.StepScheduled {
		t.Fatalf("steps %+v", st.CompensationSteps)
	}
}
