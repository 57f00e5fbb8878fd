package ui

import (
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/stream"
)

// A history with a retried activity running beside another, a timer that
// fired and a signal: each activity and the timer get a row, the retried
// one its attempts, the signal a mark, and the parallel bars overlap.
func TestTimelineOfParallelRetriedSteps(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	events := []stream.Event{
		{ID: 0, Type: stream.WorkflowExecutionStarted, Time: at(0), Attrs: &stream.WorkflowExecutionStartedAttrs{}},
		{ID: 1, Type: stream.ActivityTaskScheduled, Time: at(10), Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "charge"}},
		{ID: 2, Type: stream.ActivityTaskScheduled, Time: at(10), Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "reserve"}},
		{ID: 3, Type: stream.ActivityTaskStarted, Time: at(40), Attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: 2, Attempt: 1}},
		{ID: 4, Type: stream.ActivityTaskCompleted, Time: at(40), Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 2}},
		{ID: 5, Type: stream.ActivityTaskStarted, Time: at(60), Attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: 1, Attempt: 3}},
		{ID: 6, Type: stream.ActivityTaskFailed, Time: at(60), Attrs: &stream.ActivityTaskFailedAttrs{ScheduledEventID: 1, Attempts: 3}},
		{ID: 7, Type: stream.TimerCreated, Time: at(60), Attrs: &stream.TimerCreatedAttrs{Duration: 20 * time.Millisecond}},
		{ID: 8, Type: stream.SignalReceived, Time: at(70), Attrs: &stream.SignalReceivedAttrs{Name: "go"}},
		{ID: 9, Type: stream.TimerFired, Time: at(80), Attrs: &stream.TimerFiredAttrs{StartedEventID: 7}},
		{ID: 10, Type: stream.WorkflowExecutionCompleted, Time: at(100), Attrs: &stream.WorkflowExecutionCompletedAttrs{}},
	}
	tl := buildTimeline(events, at(100))
	if len(tl.Rows) != 3 || len(tl.Marks) != 1 {
		t.Fatalf("rows %+v, marks %+v", tl.Rows, tl.Marks)
	}
	charge, reserve, timer := tl.Rows[0], tl.Rows[1], tl.Rows[2]
	if charge.Attempts != 3 || charge.Class != "failed" || !strings.Contains(charge.Title, "3 attempts") {
		t.Errorf("charge %+v", charge)
	}
	if reserve.Class != "completed" || reserve.X != charge.X || reserve.W >= charge.W {
		t.Errorf("parallel bars: reserve %+v, charge %+v", reserve, charge)
	}
	if timer.Class != "timer fired" || timer.X != charge.X+charge.W {
		t.Errorf("timer %+v", timer)
	}
	if m := tl.Marks[0]; m.Class != "signal" || m.X != tlLabel+tlChart*70/100 {
		t.Errorf("signal mark %+v", m)
	}
}
