package invariant_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/stream"
)

// continued ends the hist's run with continue-as-new and starts the next
// run in the same commit, linked as the engine links it: the run before
// started at event prevStart, in the commit at sequence prevSeq.
func (h *hist) continued(run uint32, prevStart, prevSeq, inboxSeq uint64, carried ...stream.CarriedSignal) *hist {
	end := h.next
	var epoch int64
	if inboxSeq > 0 {
		epoch = 7
	}
	return h.commit(
		ev{typ: stream.WorkflowExecutionContinuedAsNew, attrs: &stream.WorkflowExecutionContinuedAsNewAttrs{NextRun: run}},
		ev{typ: stream.WorkflowExecutionStarted, attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", Version: 1,
			Continued: &stream.RunContinuation{Run: run, PreviousEventID: end, PreviousStartEventID: prevStart, PreviousStartSeq: prevSeq,
				LastInboxSeq: inboxSeq, LastInboxEpoch: epoch, Signals: carried}}},
	)
}

// looped is a saga of three runs: each schedules and completes an
// activity; run 1 records two signals and passes the second on.
func looped(id string) *hist {
	return newHist(id).
		commit(started("order")).                                             // 0, seq 3
		commit(scheduled("a")).                                               // 1
		commit(attempt(1, 1), completed(1), signal("go", "m-1", 11, 0)).      // 2-4
		commit(signal("go", "m-2", 12, 0)).                                   // 5
		continued(2, 0, 3, 12, stream.CarriedSignal{Name: "go", EventID: 5}). // 6-7, seq 15
		commit(scheduled("a")).                                               // 8
		commit(attempt(8, 1), completed(8), timerCreated(time.Hour, 0)).      // 9-11
		commit(timerCanceled(11, 0)).                                         // 12
		continued(3, 7, 15, 12).                                              // 13-14, seq 27
		commit(scheduled("a")).                                               // 15
		commit(attempt(15, 1), completed(15), workflowCompleted(time.Second)) // 16-18
}

func TestContinuedHistoriesPass(t *testing.T) {
	r := check(t, invariant.Options{RequireEnded: true}, looped("loop"))
	if r.Err() != nil || r.Runs != 3 || r.Ended != 1 || r.Outcomes != 3 || r.Signals != 2 {
		t.Fatalf("%v (%d runs, %d outcomes)", r.Err(), r.Runs, r.Outcomes)
	}
}

func TestBrokenRunsAreReported(t *testing.T) {
	for name, c := range map[string]struct {
		h    *hist
		rule invariant.Rule
		in   string
	}{
		"a second start without continue-as-new": {
			newHist("x").commit(started("order")).commit(started("order")).commit(workflowCompleted(0)),
			invariant.RuleStartFirst, "a second WorkflowExecutionStarted at event 1",
		},
		"continue-as-new as the last event": {
			newHist("x").commit(started("order")).commit(ev{typ: stream.WorkflowExecutionContinuedAsNew, attrs: &stream.WorkflowExecutionContinuedAsNewAttrs{NextRun: 2}}),
			invariant.RuleRuns, "is not followed by the next run's",
		},
		"a run linked to the wrong start": {
			newHist("x").commit(started("order")).continued(2, 0, 99, 0).commit(workflowCompleted(0)),
			invariant.RuleRuns, "links run 2 to a run that started at event 0 (sequence 99)",
		},
		"a run numbered wrong": {
			newHist("x").commit(started("order")).continued(3, 0, 3, 0).commit(workflowCompleted(0)),
			invariant.RuleRuns, "starts run 3",
		},
		"an inbox position lost": {
			newHist("x").commit(started("order")).commit(signal("go", "m-1", 11, 0)).continued(2, 0, 3, 0).commit(workflowCompleted(0)),
			invariant.RuleRuns, "at inbox position 0 (epoch 0), the history had reached 11 (epoch 7)",
		},
		"a signal passed on that was never recorded": {
			newHist("x").commit(started("order")).continued(2, 0, 3, 0, stream.CarriedSignal{Name: "go", EventID: 0}).commit(workflowCompleted(0)),
			invariant.RuleRuns, "passes on signal go of event 0",
		},
		"an activity left open by the run that continued": {
			newHist("x").commit(started("order")).commit(scheduled("a")).continued(2, 0, 3, 0).commit(workflowCompleted(0)),
			invariant.RuleOneOutcome, "activity a scheduled at event 1 has no outcome",
		},
		"a timer left open by the run that continued": {
			newHist("x").commit(started("order")).commit(timerCreated(time.Hour, 0)).continued(2, 0, 3, 0).commit(workflowCompleted(0)),
			invariant.RuleTimerOnce, "the timer of event 1 is open",
		},
		"a run that ended and went on": {
			newHist("x").commit(started("order")).commit(workflowCompleted(0)).continued(2, 0, 3, 0).commit(workflowCompleted(0)),
			invariant.RuleTerminalLast, "a second terminal event",
		},
		"a second run whose signal repeats the first run's": {
			newHist("x").commit(started("order")).commit(signal("go", "m-1", 11, 0)).continued(2, 0, 3, 11).
				commit(signal("go", "m-1", 11, 0)).commit(workflowCompleted(0)),
			invariant.RuleSignalOnce, "which event 1 recorded already",
		},
	} {
		r := check(t, invariant.Options{}, c.h)
		got := r.Of(c.rule)
		if len(got) == 0 || !strings.Contains(got[0].Detail, c.in) {
			t.Errorf("%s: got %v, want %s with %q", name, r.Violations, c.rule, c.in)
		}
		if others := slices.DeleteFunc(rules(r.Violations), func(x invariant.Rule) bool { return x == c.rule }); len(others) > 0 && c.rule != invariant.RuleTerminalLast {
			t.Errorf("%s: other rules broken too: %v", name, r.Violations)
		}
	}
}
