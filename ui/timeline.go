package ui

import (
	"fmt"
	"time"

	"github.com/jetsaga/saga/stream"
)

// The timeline's geometry, in SVG user units.
const (
	tlLabel  = 280 // width of the label column
	tlChart  = 640 // width of the time axis
	tlRowH   = 22
	tlTop    = 24 // room for the tick labels
	tlMinBar = 2
)

// timeline is a saga drawn on a time axis: one row per activity,
// compensation and timer, bars from scheduling to outcome (so that
// parallel steps overlap and waiting shows as gaps), and marks for
// signals and cancellation requests.
type timeline struct {
	Width, Height int
	Rows          []tlRow
	Marks         []tlMark
	Ticks         []tlTick
	Span          string
}

type tlRow struct {
	Label      string
	Y, TextY   int
	X, W       int
	Class      string // CSS class: the outcome
	Title      string
	Attempts   int
	AttemptsAt int
}

type tlMark struct {
	X     int
	Class string
	Title string
}

type tlTick struct {
	X     int
	Label string
}

type tlOpen struct {
	row   int
	start time.Time
}

func buildTimeline(events []stream.Event, end time.Time) timeline {
	var t timeline
	if len(events) == 0 {
		return t
	}
	t0 := events[0].Time
	if last := events[len(events)-1].Time; last.After(end) {
		end = last
	}
	span := end.Sub(t0)
	if span <= 0 {
		span = time.Millisecond
	}
	t.Span = roundDuration(span)
	x := func(at time.Time) int { return tlLabel + int(float64(tlChart)*float64(at.Sub(t0))/float64(span)) }
	open := map[uint64]tlOpen{}
	type rowEnd struct {
		at    time.Time
		class string
		what  string
		open  bool // a timer that has not fired: at is when it will
	}
	ends := map[int]rowEnd{}
	add := func(label, class string, at time.Time) int {
		t.Rows = append(t.Rows, tlRow{Label: label, Class: class, Title: label})
		return len(t.Rows) - 1
	}
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.ActivityTaskScheduledAttrs:
			open[e.ID] = tlOpen{row: add(a.ActivityType, "pending", e.Time), start: e.Time}
		case *stream.CompensationStepScheduledAttrs:
			open[e.ID] = tlOpen{row: add("↩ "+a.ActivityType+" (undo "+a.Step+")", "pending undo", e.Time), start: e.Time}
		case *stream.TimerCreatedAttrs:
			r := add(fmt.Sprintf("timer %s", a.Duration), "timer pending", e.Time)
			open[e.ID] = tlOpen{row: r, start: e.Time}
			ends[r] = rowEnd{at: a.FireAt(e.Time), class: "timer pending", what: "fires at " + a.FireAt(e.Time).UTC().Format(time.RFC3339), open: true}
		case *stream.ActivityTaskStartedAttrs:
			if o, ok := open[a.ScheduledEventID]; ok {
				t.Rows[o.row].Attempts = a.Attempt
			}
		case *stream.TimerFiredAttrs:
			if o, ok := open[a.StartedEventID]; ok {
				ends[o.row] = rowEnd{at: e.Time, class: "timer fired", what: "fired"}
			}
		case *stream.TimerCanceledAttrs:
			if o, ok := open[a.StartedEventID]; ok {
				ends[o.row] = rowEnd{at: e.Time, class: "timer canceled", what: "canceled"}
			}
		case *stream.SignalReceivedAttrs:
			t.Marks = append(t.Marks, tlMark{X: x(e.Time), Class: "signal", Title: "signal " + a.Name + " at " + e.Time.UTC().Format(time.RFC3339Nano)})
		case *stream.WorkflowExecutionCancelRequestedAttrs:
			t.Marks = append(t.Marks, tlMark{X: x(e.Time), Class: "cancel", Title: "cancellation requested at " + e.Time.UTC().Format(time.RFC3339Nano)})
		default:
			id, ok := stream.ScheduledEventID(e)
			if !ok {
				continue
			}
			o, ok := open[id]
			if !ok {
				continue
			}
			class := outcomeClass(e.Type)
			if o.row < len(t.Rows) && e.Type != stream.ActivityTaskStarted {
				if isUndo(t.Rows[o.row].Class) {
					class += " undo"
				}
				ends[o.row] = rowEnd{at: e.Time, class: class, what: string(e.Type)}
			}
		}
	}
	for _, o := range open {
		r := &t.Rows[o.row]
		stop, class, what, open := end, r.Class, "", true
		if re, ok := ends[o.row]; ok {
			stop, class, what, open = re.at, re.class, re.what, re.open
			if stop.After(end) {
				stop = end
			}
		}
		r.X = x(o.start)
		r.W = max(x(stop)-r.X, tlMinBar)
		r.Class = class
		if open {
			r.Title = fmt.Sprintf("%s: open for %s", r.Label, roundDuration(stop.Sub(o.start)))
			if what != "" {
				r.Title += ", " + what
			}
		} else {
			r.Title = fmt.Sprintf("%s: %s after %s", r.Label, what, roundDuration(stop.Sub(o.start)))
		}
		if r.Attempts > 1 {
			r.Title += fmt.Sprintf(", %d attempts", r.Attempts)
		}
	}
	for i := range t.Rows {
		t.Rows[i].Y = tlTop + i*tlRowH
		t.Rows[i].TextY = t.Rows[i].Y + 15
		t.Rows[i].AttemptsAt = t.Rows[i].X + t.Rows[i].W + 4
	}
	t.Width = tlLabel + tlChart + 40
	t.Height = tlTop + len(t.Rows)*tlRowH + 8
	for i := 0; i <= 4; i++ {
		at := time.Duration(int64(span) * int64(i) / 4)
		t.Ticks = append(t.Ticks, tlTick{X: tlLabel + tlChart*i/4, Label: "+" + at.Round(roundFor(span)).String()})
	}
	return t
}

// roundDuration keeps three or four significant digits.
func roundDuration(d time.Duration) string { return d.Round(roundFor(d) / 10).String() }

func isUndo(class string) bool { return len(class) >= 4 && class[len(class)-4:] == "undo" }

func outcomeClass(t stream.EventType) string {
	switch t {
	case stream.ActivityTaskCompleted, stream.CompensationStepCompleted:
		return "completed"
	case stream.ActivityTaskFailed, stream.ActivityTaskTimedOut, stream.CompensationStepFailed:
		return "failed"
	case stream.ActivityTaskCanceled:
		return "canceled"
	}
	return "pending"
}

// roundFor picks a rounding that keeps tick labels short.
func roundFor(span time.Duration) time.Duration {
	switch {
	case span < 10*time.Millisecond:
		return 10 * time.Microsecond
	case span < 10*time.Second:
		return time.Millisecond
	case span < 10*time.Minute:
		return time.Second
	}
	return time.Minute
}
