package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jetsaga/saga/stream"
)

// writeTimeline prints a history as one line per event: id, time, time
// since the start, type and the details that matter for that type. The
// details of compensation events (an undo registered, scheduled, run,
// completed or failed) start with compensationMark, so that the undoing
// stands out from the doing.
func writeTimeline(w io.Writer, events []stream.Event) error {
	if len(events) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tELAPSED\tEVENT\tDETAILS")
	start := events[0].Time
	activities := map[uint64]scheduled{}
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.ActivityTaskScheduledAttrs:
			activities[e.ID] = scheduled{activityType: a.ActivityType}
		case *stream.CompensationStepScheduledAttrs:
			activities[e.ID] = scheduled{activityType: a.ActivityType, undoes: a.Step}
		}
		fmt.Fprintf(tw, "%d\t%s\t+%s\t%s\t%s\n", e.ID, e.Time.UTC().Format("15:04:05.000"),
			e.Time.Sub(start).Round(100*time.Microsecond), e.Type, details(e, activities))
	}
	return tw.Flush()
}

// compensationMark starts the details of every compensation event.
const compensationMark = "↩ "

// scheduled is what the timeline remembers of a scheduled activity, so
// that the events about it can name it.
type scheduled struct {
	activityType string
	// undoes is set for a compensation step: the step it undoes.
	undoes string
}

// name is the activity's type, marked and with the step it undoes for a
// compensation step.
func (s scheduled) name() string {
	if s.undoes == "" {
		return s.activityType
	}
	return compensationMark + s.activityType + " undoing " + s.undoes
}

func details(e stream.Event, activities map[uint64]scheduled) string {
	switch a := e.Attrs.(type) {
	case *stream.WorkflowExecutionStartedAttrs:
		s := fmt.Sprintf("%s v%d input=%s", a.WorkflowType, a.Version, short(payloadJSON(a.Input)))
		if a.RunTimeout > 0 {
			s += fmt.Sprintf(" run_timeout=%s", a.RunTimeout)
		}
		if c := a.Continued; c != nil {
			s += fmt.Sprintf(" run %d (continues run %d, started at event %d)", c.Run, c.Run-1, c.PreviousStartEventID)
			if len(c.Signals) > 0 {
				s += fmt.Sprintf(", %d untaken signals passed on", len(c.Signals))
			}
			if c.CancelRequested != nil {
				s += ", its cancellation passed on"
			}
		}
		return s
	case *stream.WorkflowExecutionContinuedAsNewAttrs:
		return fmt.Sprintf("run %d follows", a.NextRun)
	case *stream.WorkflowExecutionCompletedAttrs:
		return "output=" + short(payloadJSON(a.Output))
	case *stream.WorkflowExecutionFailedAttrs:
		return failureText(a.Failure) + outcomeText(a.Compensation)
	case *stream.WorkflowExecutionCancelRequestedAttrs:
		s := "cause=" + a.Cause
		if a.Identity != "" {
			s += " by " + a.Identity
		}
		if a.Reason != "" {
			s += " reason=" + short(strconv.Quote(a.Reason))
		}
		return s
	case *stream.WorkflowExecutionCanceledAttrs:
		s := "canceled"
		if a.Reason != "" {
			s += " reason=" + short(strconv.Quote(a.Reason))
		}
		return s + outcomeText(a.Compensation)
	case *stream.WorkflowExecutionTimedOutAttrs:
		return fmt.Sprintf("ran past its run timeout of %s", a.RunTimeout) + outcomeText(a.Compensation)
	case *stream.WorkflowExecutionBlockedAttrs:
		return fmt.Sprintf("%s: %s", a.Reason, firstLine(a.Message))
	case *stream.WorkflowExecutionUnblockedAttrs:
		return "replays again on " + a.Node
	case *stream.ActivityTaskScheduledAttrs:
		if a.Canceled {
			return fmt.Sprintf("%s input=%s (canceled as scheduled: never runs)", a.ActivityType, short(payloadJSON(a.Input)))
		}
		return fmt.Sprintf("%s input=%s", a.ActivityType, short(payloadJSON(a.Input)))
	case *stream.ActivityTaskStartedAttrs:
		return fmt.Sprintf("%s (event %d) attempt %d on %s", activities[a.ScheduledEventID].name(), a.ScheduledEventID, a.Attempt, a.Node)
	case *stream.ActivityTaskCompletedAttrs:
		return fmt.Sprintf("%s result=%s", activities[a.ScheduledEventID].name(), short(payloadJSON(a.Result)))
	case *stream.ActivityTaskFailedAttrs:
		return fmt.Sprintf("%s %s", activities[a.ScheduledEventID].name(), failureText(a.Failure))
	case *stream.ActivityTaskTimedOutAttrs:
		return fmt.Sprintf("%s %s", activities[a.ScheduledEventID].name(), failureText(a.Failure))
	case *stream.ActivityTaskCanceledAttrs:
		return fmt.Sprintf("%s (event %d) canceled after %s", activities[a.ScheduledEventID].name(), a.ScheduledEventID, attempts(a.Attempts))
	case *stream.TimerCreatedAttrs:
		return fmt.Sprintf("waits %s, until %s", a.Duration, a.FireAt(e.Time).UTC().Format("15:04:05.000"))
	case *stream.TimerFiredAttrs:
		return fmt.Sprintf("timer of event %d fired", a.StartedEventID)
	case *stream.TimerCanceledAttrs:
		return fmt.Sprintf("timer of event %d canceled", a.StartedEventID)
	case *stream.SignalReceivedAttrs:
		s := a.Name
		if len(a.Input) > 0 {
			s += " input=" + short(payloadJSON(a.Input))
		}
		s += fmt.Sprintf(" inbox_seq=%d", a.InboxSeq)
		if a.MsgID != "" {
			s += " msg_id=" + short(a.MsgID)
		}
		return s
	case *stream.MarkerRecordedAttrs:
		if c := a.Compensation; c != nil {
			return fmt.Sprintf("%sregistered: undoes %s via %s input=%s", compensationMark, c.Step, c.ActivityType, short(payloadJSON(c.Input)))
		}
		if a.ChangeID != "" {
			return fmt.Sprintf("%s %s=%s", a.Name, a.ChangeID, payloadJSON(a.Data))
		}
		return fmt.Sprintf("%s %s", a.Name, short(payloadJSON(a.Data)))
	case *stream.CompensationStepScheduledAttrs:
		return fmt.Sprintf("%sundoes %s via %s input=%s", compensationMark, a.Step, a.ActivityType, short(payloadJSON(a.Input)))
	case *stream.CompensationStepCompletedAttrs:
		return fmt.Sprintf("%sundid %s via %s result=%s", compensationMark, a.Step, activities[a.ScheduledEventID].activityType, short(payloadJSON(a.Result)))
	case *stream.CompensationStepFailedAttrs:
		return fmt.Sprintf("%sfailed to undo %s via %s after %s: %s", compensationMark, a.Step, activities[a.ScheduledEventID].activityType, attempts(a.Attempts), failureText(a.Failure))
	}
	return ""
}

// outcomeText says how the compensation of a saga that ended ended.
func outcomeText(o *stream.CompensationOutcome) string {
	if o == nil {
		return ""
	}
	s := fmt.Sprintf("; %scompensation %s (%d undone", compensationMark, o.Status, o.Completed)
	if len(o.FailedSteps) > 0 {
		s += ", failed: " + strings.Join(o.FailedSteps, ", ")
	}
	if len(o.NotRun) > 0 {
		s += ", not run: " + strings.Join(o.NotRun, ", ")
	}
	return s + ")"
}

func attempts(n int) string {
	if n == 1 {
		return "1 attempt"
	}
	return fmt.Sprintf("%d attempts", n)
}

func failureText(f *stream.Failure) string {
	if f == nil {
		return ""
	}
	return fmt.Sprintf("[%s] %s", f.Kind, firstLine(f.Error()))
}

// short keeps timeline lines readable.
func short(s string) string {
	const max = 100
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) <= max {
		return s
	}
	return s[:max-3] + "..."
}
