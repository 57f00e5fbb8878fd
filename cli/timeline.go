package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jetsaga/saga/stream"
)

// writeTimeline prints a history as one line per event: id, time, time
// since the start, type and the details that matter for that type.
func writeTimeline(w io.Writer, events []stream.Event) error {
	if len(events) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tELAPSED\tEVENT\tDETAILS")
	start := events[0].Time
	activities := map[uint64]string{} // scheduled event id -> activity type
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok {
			activities[e.ID] = a.ActivityType
		}
		fmt.Fprintf(tw, "%d\t%s\t+%s\t%s\t%s\n", e.ID, e.Time.UTC().Format("15:04:05.000"),
			e.Time.Sub(start).Round(100*time.Microsecond), e.Type, details(e, activities))
	}
	return tw.Flush()
}

func details(e stream.Event, activities map[uint64]string) string {
	switch a := e.Attrs.(type) {
	case *stream.WorkflowExecutionStartedAttrs:
		return fmt.Sprintf("%s v%d input=%s", a.WorkflowType, a.Version, short(payloadJSON(a.Input)))
	case *stream.WorkflowExecutionCompletedAttrs:
		return "output=" + short(payloadJSON(a.Output))
	case *stream.WorkflowExecutionFailedAttrs:
		return failureText(a.Failure)
	case *stream.WorkflowExecutionBlockedAttrs:
		return fmt.Sprintf("%s: %s", a.Reason, firstLine(a.Message))
	case *stream.WorkflowExecutionUnblockedAttrs:
		return "replays again on " + a.Node
	case *stream.ActivityTaskScheduledAttrs:
		return fmt.Sprintf("%s input=%s", a.ActivityType, short(payloadJSON(a.Input)))
	case *stream.ActivityTaskStartedAttrs:
		return fmt.Sprintf("%s (event %d) attempt %d on %s", activities[a.ScheduledEventID], a.ScheduledEventID, a.Attempt, a.Node)
	case *stream.ActivityTaskCompletedAttrs:
		return fmt.Sprintf("%s result=%s", activities[a.ScheduledEventID], short(payloadJSON(a.Result)))
	case *stream.ActivityTaskFailedAttrs:
		return fmt.Sprintf("%s %s", activities[a.ScheduledEventID], failureText(a.Failure))
	case *stream.ActivityTaskTimedOutAttrs:
		return fmt.Sprintf("%s %s", activities[a.ScheduledEventID], failureText(a.Failure))
	case *stream.MarkerRecordedAttrs:
		if a.ChangeID != "" {
			return fmt.Sprintf("%s %s=%s", a.Name, a.ChangeID, payloadJSON(a.Data))
		}
		return fmt.Sprintf("%s %s", a.Name, short(payloadJSON(a.Data)))
	}
	return ""
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
