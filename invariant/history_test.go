package invariant_test

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/stream"
)

// t0 is when the hand-made histories start.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// ev is an event of a hand-made history, at an offset from t0; its id is
// given by its place.
type ev struct {
	typ   stream.EventType
	attrs any
	at    time.Duration
}

// hist builds a history the way the engine appends one: commits of
// events with contiguous ids, at rising stream sequences.
type hist struct {
	id      string
	commits []stream.StoredCommit
	next    uint64
	seq     uint64
}

func newHist(id string) *hist { return &hist{id: id} }

// commit appends one commit of evs.
func (h *hist) commit(evs ...ev) *hist {
	c := &stream.Commit{SagaID: h.id, WorkflowType: "order", Decided: true}
	for _, e := range evs {
		c.Events = append(c.Events, stream.Event{ID: h.next, SagaID: h.id, Type: e.typ, Category: stream.CategoryOf(e.typ), Time: t0.Add(e.at), Attrs: e.attrs})
		h.next++
	}
	h.seq += 3 // other sagas' commits sit in between on the stream
	h.commits = append(h.commits, stream.StoredCommit{Seq: h.seq, Commit: c})
	return h
}

func (h *hist) history() invariant.History {
	return invariant.History{SagaID: h.id, Commits: h.commits}
}

// The events, as the engine records them.
func started(typ string) ev {
	return ev{typ: stream.WorkflowExecutionStarted, attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: typ, Version: 1}}
}
func scheduled(act string) ev {
	return ev{typ: stream.ActivityTaskScheduled, attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: act}}
}
func attempt(id uint64, n int) ev {
	return ev{typ: stream.ActivityTaskStarted, attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: id, Attempt: n, Node: "n1"}}
}
func completed(id uint64) ev {
	return ev{typ: stream.ActivityTaskCompleted, attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: id}}
}
func failed(id uint64, attempts int) ev {
	return ev{typ: stream.ActivityTaskFailed, attrs: &stream.ActivityTaskFailedAttrs{ScheduledEventID: id, Attempts: attempts, Failure: &stream.Failure{Kind: "Permanent", Message: "no"}}}
}
func canceledActivity(id uint64) ev {
	return ev{typ: stream.ActivityTaskCanceled, attrs: &stream.ActivityTaskCanceledAttrs{ScheduledEventID: id}}
}
func register(step, act string) ev {
	return ev{typ: stream.MarkerRecorded, attrs: &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation,
		Compensation: &stream.CompensationRegistration{Step: step, ActivityType: act}}}
}
func undo(step, act string, registered uint64) ev {
	return ev{typ: stream.CompensationStepScheduled, attrs: &stream.CompensationStepScheduledAttrs{
		CompensationRegistration: stream.CompensationRegistration{Step: step, ActivityType: act}, RegisteredEventID: registered}}
}
func undone(id uint64, step string) ev {
	return ev{typ: stream.CompensationStepCompleted, attrs: &stream.CompensationStepCompletedAttrs{ScheduledEventID: id, Step: step}}
}
func undoFailed(id uint64, step string) ev {
	return ev{typ: stream.CompensationStepFailed, attrs: &stream.CompensationStepFailedAttrs{ScheduledEventID: id, Step: step, Attempts: 1,
		Failure: &stream.Failure{Kind: "Permanent", Message: "cannot undo"}}}
}
func timerCreated(d time.Duration, at time.Duration) ev {
	return ev{typ: stream.TimerCreated, attrs: &stream.TimerCreatedAttrs{Duration: d}, at: at}
}
func timerFired(id uint64, at time.Duration) ev {
	return ev{typ: stream.TimerFired, attrs: &stream.TimerFiredAttrs{StartedEventID: id}, at: at}
}
func timerCanceled(id uint64, at time.Duration) ev {
	return ev{typ: stream.TimerCanceled, attrs: &stream.TimerCanceledAttrs{StartedEventID: id}, at: at}
}
func signal(name, msgID string, inboxSeq uint64, at time.Duration) ev {
	return ev{typ: stream.SignalReceived, attrs: &stream.SignalReceivedAttrs{Name: name, MsgID: msgID, InboxSeq: inboxSeq, InboxEpoch: 7}, at: at}
}
func cancelRequested() ev {
	return ev{typ: stream.WorkflowExecutionCancelRequested, attrs: &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest}}
}
func workflowCompleted(at time.Duration) ev {
	return ev{typ: stream.WorkflowExecutionCompleted, attrs: &stream.WorkflowExecutionCompletedAttrs{}, at: at}
}
func workflowFailed(o *stream.CompensationOutcome, at time.Duration) ev {
	return ev{typ: stream.WorkflowExecutionFailed, attrs: &stream.WorkflowExecutionFailedAttrs{Failure: &stream.Failure{Kind: "Permanent", Message: "ship failed"}, Compensation: o}, at: at}
}
func workflowCanceled(o *stream.CompensationOutcome) ev {
	return ev{typ: stream.WorkflowExecutionCanceled, attrs: &stream.WorkflowExecutionCanceledAttrs{Compensation: o}}
}
func blocked() ev {
	return ev{typ: stream.WorkflowExecutionBlocked, attrs: &stream.WorkflowExecutionBlockedAttrs{Reason: stream.BlockedNonDeterminism}}
}

// failedOrder is the order saga of examples/order failing at ship-order
// on its second attempt, after a timer and a signal, and compensating
// last registered first, as the engine records it.
func failedOrder(id string) *hist {
	return newHist(id).
		commit(started("order")).
		commit(scheduled("reserve-inventory")).                                                 // 1
		commit(attempt(1, 1), completed(1), register("reserve-inventory", "release-inventory"), // 2-4
													scheduled("process-payment")). // 5
		commit(attempt(5, 1), completed(5), register("process-payment", "refund-payment"), // 6-8
																timerCreated(time.Second, 100*time.Millisecond)). // 9
		commit(signal("go", "m-1", 11, 500*time.Millisecond)).                                                    // 10
		commit(timerFired(9, 1100*time.Millisecond), scheduled("ship-order")).                                    // 11-12
		commit(attempt(12, 2), failed(12, 2), undo("process-payment", "refund-payment", 8)).                      // 13-15
		commit(attempt(15, 1), undone(15, "process-payment"), undo("reserve-inventory", "release-inventory", 4)). // 16-18
		commit(attempt(18, 1), undone(18, "reserve-inventory"),                                                   // 19-20
			workflowFailed(&stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}, 2*time.Second)) // 21
}

// completedOrder is the order saga completing.
func completedOrder(id string) *hist {
	return newHist(id).
		commit(started("order")).
		commit(scheduled("reserve-inventory")).
		commit(attempt(1, 1), completed(1), register("reserve-inventory", "release-inventory"), scheduled("process-payment")).
		commit(attempt(5, 1), completed(5), workflowCompleted(time.Second))
}

// rules returns the rules of the violations, in order, without repeats.
func rules(vs []invariant.Violation) []invariant.Rule {
	var out []invariant.Rule
	for _, v := range vs {
		if !slices.Contains(out, v.Rule) {
			out = append(out, v.Rule)
		}
	}
	return out
}

func check(t *testing.T, opts invariant.Options, hs ...*hist) invariant.Report {
	t.Helper()
	var hists []invariant.History
	for _, h := range hs {
		hists = append(hists, h.history())
	}
	r, err := invariant.CheckHistories(hists, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestWellFormedHistoriesPass(t *testing.T) {
	running := newHist("running").commit(started("order")).commit(scheduled("reserve-inventory")).
		commit(timerCreated(time.Hour, 0))
	r := check(t, invariant.Options{
		Acked: invariant.Acked{Starts: []string{"f", "c", "c", "running"}, Signals: []invariant.SignalAck{{SagaID: "f", Name: "go", MsgID: "m-1"}}},
	}, failedOrder("f"), completedOrder("c"), running)
	if len(r.Violations) > 0 {
		t.Fatalf("violations in well-formed histories:\n%s", r)
	}
	want := map[string]int{string(stream.WorkflowExecutionFailed): 1, string(stream.WorkflowExecutionCompleted): 1, invariant.StatusRunning: 1}
	if r.Sagas != 3 || r.Ended != 2 || !maps.Equal(r.ByStatus, want) {
		t.Fatalf("counts: %d sagas, %d ended, by status %v", r.Sagas, r.Ended, r.ByStatus)
	}
	// ship-order's outcome came from its second attempt.
	if r.ExtraAttempts != 1 || r.Outcomes != 7 || r.TimersFired != 1 || r.Signals != 1 {
		t.Fatalf("figures: %d extra attempts, %d outcomes, %d timers fired, %d signals", r.ExtraAttempts, r.Outcomes, r.TimersFired, r.Signals)
	}
	if r.Err() != nil {
		t.Fatalf("Err: %v", r.Err())
	}
}

// Each case breaks one invariant in an otherwise well-formed history and
// expects exactly the rules listed, with details naming what broke.
func TestEachBrokenInvariantIsReported(t *testing.T) {
	cases := []struct {
		name   string
		hists  func() []*hist
		opts   invariant.Options
		want   []invariant.Rule
		detail string
	}{
		{
			name: "no history",
			hists: func() []*hist {
				return []*hist{newHist("x")}
			},
			want: []invariant.Rule{invariant.RuleHistory}, detail: "no history",
		},
		{
			name: "gap in event ids between commits",
			hists: func() []*hist {
				h := completedOrder("x")
				h.commits[2].Commit.Events = h.commits[2].Commit.Events[1:] // event 2 lost
				return []*hist{h}
			},
			// The attempt of event 2 is gone with it, which outcome rules
			// do not mind: only the ids are wrong.
			want: []invariant.Rule{invariant.RuleContiguousIDs}, detail: "event 3 ActivityTaskCompleted (commit at stream sequence 9) where event 2 was due",
		},
		{
			name: "event ids repeated",
			hists: func() []*hist {
				h := completedOrder("x")
				last := h.commits[3].Commit
				for i := range last.Events {
					last.Events[i].ID -= 2
				}
				return []*hist{h}
			},
			want: []invariant.Rule{invariant.RuleContiguousIDs}, detail: "event 4 ActivityTaskStarted (commit at stream sequence 12) where event 6 was due",
		},
		{
			name: "commit sequences not rising",
			hists: func() []*hist {
				h := completedOrder("x")
				h.commits[2].Seq, h.commits[3].Seq = h.commits[3].Seq, h.commits[2].Seq
				return []*hist{h}
			},
			want: []invariant.Rule{invariant.RuleContiguousIDs}, detail: "sequences must rise",
		},
		{
			name: "first event not the start",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(scheduled("reserve-inventory")).commit(started("order"))}
			},
			want: []invariant.Rule{invariant.RuleStartFirst}, detail: "the first event is 0 ActivityTaskScheduled",
		},
		{
			name: "second start",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(started("order"))}
			},
			want: []invariant.Rule{invariant.RuleStartFirst}, detail: "a second WorkflowExecutionStarted at event 1",
		},
		{
			name: "two terminal events",
			hists: func() []*hist {
				return []*hist{completedOrder("x").commit(workflowFailed(nil, 0))}
			},
			want: []invariant.Rule{invariant.RuleTerminalLast}, detail: "a second terminal event: 9 WorkflowExecutionFailed after 8 WorkflowExecutionCompleted",
		},
		{
			name: "event after the end",
			hists: func() []*hist {
				return []*hist{completedOrder("x").commit(signal("late", "", 3, time.Minute))}
			},
			want: []invariant.Rule{invariant.RuleTerminalLast}, detail: "events after the terminal event 8 WorkflowExecutionCompleted: 9 SignalReceived",
		},
		{
			name: "not ended when required",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(blocked())}
			},
			opts: invariant.Options{RequireEnded: true},
			want: []invariant.Rule{invariant.RuleEnded}, detail: "has not ended: blocked, its last event is 1 WorkflowExecutionBlocked",
		},
		{
			name: "activity completed twice",
			hists: func() []*hist {
				h := completedOrder("x")
				h.commits[3].Commit.Events = slices.Insert(h.commits[3].Commit.Events, 2, stream.Event{Type: stream.ActivityTaskCompleted,
					Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1}})
				renumber(h)
				return []*hist{h}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "event 8 ActivityTaskCompleted is a second outcome of activity reserve-inventory (event 1): the first is event 3",
		},
		{
			name: "outcome of nothing scheduled",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(completed(7))}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "event 1 ActivityTaskCompleted names event 7, which scheduled nothing before it",
		},
		{
			name: "activity outcome for a compensation step",
			hists: func() []*hist {
				h := failedOrder("x")
				h.commits[8].Commit.Events[1] = stream.Event{ID: 20, Type: stream.ActivityTaskCompleted, Time: t0,
					Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 18}}
				return []*hist{h}
			},
			// The step then has no outcome of its own, and the recorded
			// compensation outcome counts one step too many.
			want:   []invariant.Rule{invariant.RuleOneOutcome, invariant.RuleCompensationOutcome},
			detail: "event 20 ActivityTaskCompleted names event 18, which scheduled compensation step reserve-inventory",
		},
		{
			name: "attempt without its outcome",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(scheduled("a")).commit(attempt(1, 1))}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "event 2 ActivityTaskStarted of activity a (event 1) is not followed by its outcome",
		},
		{
			name: "attempt after its outcome",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(scheduled("a")).commit(attempt(1, 1), completed(1)).commit(attempt(1, 2))}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "event 4 ActivityTaskStarted of activity a (event 1) comes after its outcome at event 3",
		},
		{
			name: "ended with an activity open",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(scheduled("a")).commit(workflowCompleted(0))}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "activity a scheduled at event 1 has no outcome in the ended saga",
		},
		{
			name: "ended with a compensation step open",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(register("s", "undo-s")).commit(undo("s", "undo-s", 1)).
					commit(workflowFailed(&stream.CompensationOutcome{Status: stream.CompensationCompleted}, 0))}
			},
			want: []invariant.Rule{invariant.RuleOneOutcome}, detail: "compensation step s scheduled at event 2 has no outcome in the ended saga",
		},
		{
			name: "compensation in registration order",
			hists: func() []*hist {
				h := failedOrder("x")
				// Undo reserve-inventory (registered first) first.
				swapAttrs(h, 15, 18)
				h.commits[7].Commit.Events[1].Attrs = &stream.CompensationStepCompletedAttrs{ScheduledEventID: 15, Step: "reserve-inventory"}
				h.commits[8].Commit.Events[1].Attrs = &stream.CompensationStepCompletedAttrs{ScheduledEventID: 18, Step: "process-payment"}
				return []*hist{h}
			},
			want:   []invariant.Rule{invariant.RuleCompensationLIFO},
			detail: "event 15 schedules step reserve-inventory (registered at event 4) before step process-payment (registered later, at event 8): compensations run last registered first",
		},
		{
			name: "compensation run twice",
			hists: func() []*hist {
				h := failedOrder("x")
				h.commits[7].Commit.Events[2].Attrs = h.commits[6].Commit.Events[2].Attrs // registered at 8 again
				h.commits[8].Commit.Events[1].Attrs = &stream.CompensationStepCompletedAttrs{ScheduledEventID: 18, Step: "process-payment"}
				return []*hist{h}
			},
			// reserve-inventory is then left undone, which the recorded
			// outcome does not say.
			want:   []invariant.Rule{invariant.RuleCompensationLIFO, invariant.RuleCompensationOutcome},
			detail: "event 18 runs the compensation registered at event 8 a second time (first at event 15)",
		},
		{
			name: "sequential compensation overlapping",
			hists: func() []*hist {
				return []*hist{overlapping("x")}
			},
			want: []invariant.Rule{invariant.RuleCompensationLIFO}, detail: "event 4 schedules step a while the step scheduled at event 3 is still running: compensation runs one step at a time",
		},
		{
			name: "compensation after a step failed for good",
			hists: func() []*hist {
				h := failedOrder("x")
				h.commits[7].Commit.Events[1] = undoFailed(15, "process-payment").event(17)
				h.commits[8].Commit.Events[2].Attrs = &stream.WorkflowExecutionFailedAttrs{Compensation: &stream.CompensationOutcome{
					Status: stream.CompensationFailed, Completed: 1, FailedSteps: []string{"process-payment"}}}
				return []*hist{h}
			},
			want: []invariant.Rule{invariant.RuleCompensationLIFO}, detail: "event 18 schedules step reserve-inventory after a compensation step failed for good at event 17",
		},
		{
			name: "compensation outcome miscounted",
			hists: func() []*hist {
				h := failedOrder("x")
				h.commits[8].Commit.Events[2].Attrs = &stream.WorkflowExecutionFailedAttrs{Compensation: &stream.CompensationOutcome{
					Status: stream.CompensationCompleted, Completed: 1}}
				return []*hist{h}
			},
			want: []invariant.Rule{invariant.RuleCompensationOutcome}, detail: "event 21 WorkflowExecutionFailed records 1 compensation steps completed, the history 2",
		},
		{
			name: "compensation outcome missing the steps not run",
			hists: func() []*hist {
				// Registered, never run, and the end says all is done.
				return []*hist{newHist("x").commit(started("order")).commit(register("s", "undo-s")).
					commit(workflowFailed(&stream.CompensationOutcome{Status: stream.CompensationCompleted}, 0))}
			},
			want: []invariant.Rule{invariant.RuleCompensationOutcome}, detail: "records steps not run [], the history leaves [s] not run",
		},
		{
			name: "timer fired twice",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(timerCreated(time.Second, 0)).
					commit(timerFired(1, time.Second)).commit(timerFired(1, 2*time.Second))}
			},
			want: []invariant.Rule{invariant.RuleTimerOnce}, detail: "event 3 TimerFired closes the timer of event 1 again: event 2 TimerFired closed it",
		},
		{
			name: "timer fired after it was canceled",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(timerCreated(time.Second, 0)).
					commit(timerCanceled(1, 0)).commit(timerFired(1, time.Second))}
			},
			want: []invariant.Rule{invariant.RuleTimerOnce}, detail: "event 3 TimerFired closes the timer of event 1 again: event 2 TimerCanceled closed it",
		},
		{
			name: "timer fired that was never created",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(timerFired(0, time.Second))}
			},
			want: []invariant.Rule{invariant.RuleTimerOnce}, detail: "event 1 TimerFired names event 0, which created no timer before it",
		},
		{
			name: "timer open in an ended saga",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(timerCreated(time.Hour, 0), workflowCompleted(0))}
			},
			want: []invariant.Rule{invariant.RuleTimerOnce}, detail: "the timer of event 1 is open in the ended saga",
		},
		{
			name: "timer fired early",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(timerCreated(2*time.Second, 300*time.Millisecond)).
					commit(timerFired(1, 2299*time.Millisecond))}
			},
			want: []invariant.Rule{invariant.RuleTimerNotEarly}, detail: "1ms before its due time",
		},
		{
			name: "signal msg id recorded twice",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(signal("go", "m-1", 4, 0)).commit(signal("go", "m-1", 5, 0))}
			},
			want: []invariant.Rule{invariant.RuleSignalOnce}, detail: `event 2 records signal go with msg id "m-1", which event 1 recorded already`,
		},
		{
			name: "inbox message recorded in two sagas",
			hists: func() []*hist {
				return []*hist{
					newHist("x").commit(started("order")).commit(signal("go", "", 4, 0)),
					newHist("y").commit(started("order")).commit(signal("go", "", 4, 0)),
				}
			},
			want: []invariant.Rule{invariant.RuleSignalOnce}, detail: "event 1 records inbox message 4 (inbox epoch 7), which saga x recorded already",
		},
		{
			name: "inbox message recorded twice in one saga",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(signal("go", "", 4, 0)).commit(signal("go", "", 4, 0))}
			},
			want: []invariant.Rule{invariant.RuleSignalOnce}, detail: "event 2 records inbox message 4 (inbox epoch 7), which event 1 recorded already",
		},
		{
			name: "signals out of inbox order",
			hists: func() []*hist {
				return []*hist{newHist("x").commit(started("order")).commit(signal("a", "", 9, 0)).commit(signal("b", "", 8, 0))}
			},
			want: []invariant.Rule{invariant.RuleSignalOrder}, detail: "event 2 records inbox message 8 after event 1 recorded inbox message 9",
		},
		{
			name: "acknowledged start without a history",
			hists: func() []*hist {
				return []*hist{completedOrder("x")}
			},
			opts: invariant.Options{Acked: invariant.Acked{Starts: []string{"x", "lost"}}},
			want: []invariant.Rule{invariant.RuleAckedStart}, detail: "its start was acknowledged, but the streams hold no history of it",
		},
		{
			name: "acknowledged signal not recorded",
			hists: func() []*hist {
				return []*hist{failedOrder("x")}
			},
			opts: invariant.Options{Acked: invariant.Acked{Signals: []invariant.SignalAck{
				{SagaID: "x", Name: "go", MsgID: "m-1"}, {SagaID: "x", Name: "go", MsgID: "m-2"}}}},
			want: []invariant.Rule{invariant.RuleAckedSignal}, detail: `signal go (msg id "m-2") was acknowledged, but no SignalReceived records it`,
		},
		{
			name: "acknowledged signal recorded under another name",
			hists: func() []*hist {
				return []*hist{failedOrder("x")}
			},
			opts: invariant.Options{Acked: invariant.Acked{Signals: []invariant.SignalAck{{SagaID: "x", Name: "stop", MsgID: "m-1"}}}},
			want: []invariant.Rule{invariant.RuleAckedSignal}, detail: `the history records msg id "m-1" as signal go`,
		},
		{
			name: "acknowledged signal to a saga without a history",
			hists: func() []*hist {
				return nil
			},
			opts: invariant.Options{Acked: invariant.Acked{Signals: []invariant.SignalAck{{SagaID: "nobody", Name: "go", MsgID: "m-1"}}}},
			want: []invariant.Rule{invariant.RuleAckedSignal}, detail: "the saga has no history",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := check(t, tc.opts, tc.hists()...)
			if got := rules(r.Violations); !slices.Equal(got, tc.want) {
				t.Fatalf("rules %v, want %v:\n%s", got, tc.want, r)
			}
			if !strings.Contains(r.Violations[0].Detail, tc.detail) {
				t.Fatalf("first violation %q does not say %q", r.Violations[0].Detail, tc.detail)
			}
			if !errors.Is(r.Err(), invariant.ErrViolated) {
				t.Fatalf("Err %v does not match ErrViolated", r.Err())
			}
		})
	}
}

// overlapping is a saga that schedules its second compensation step
// before the first has its outcome.
func overlapping(id string) *hist {
	return newHist(id).commit(started("trip")).
		commit(register("a", "undo"), register("b", "undo")).                // 1, 2
		commit(undo("b", "undo", 2)).                                        // 3
		commit(undo("a", "undo", 1)).                                        // 4
		commit(attempt(3, 1), undone(3, "b"), attempt(4, 1), undone(4, "a"), // 5-8
			workflowFailed(&stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}, 0))
}

// event gives e the id it takes in place of another.
func (e ev) event(id uint64) stream.Event {
	return stream.Event{ID: id, Type: e.typ, Category: stream.CategoryOf(e.typ), Time: t0.Add(e.at), Attrs: e.attrs}
}

// renumber gives the events of h contiguous ids again after an edit.
func renumber(h *hist) {
	var next uint64
	for _, c := range h.commits {
		for i := range c.Commit.Events {
			c.Commit.Events[i].ID = next
			next++
		}
	}
}

// swapAttrs swaps the attributes of two events of h.
func swapAttrs(h *hist, a, b uint64) {
	var pa, pb *stream.Event
	for _, c := range h.commits {
		for i := range c.Commit.Events {
			switch c.Commit.Events[i].ID {
			case a:
				pa = &c.Commit.Events[i]
			case b:
				pb = &c.Commit.Events[i]
			}
		}
	}
	pa.Attrs, pb.Attrs = pb.Attrs, pa.Attrs
}

// What the engine does by design is not a violation.
func TestWhatTheEngineAllowsPasses(t *testing.T) {
	t.Run("canceled saga leaves an activity its cancellation reached", func(t *testing.T) {
		// b's attempt saw the cancellation; a's did not heartbeat.
		h := newHist("x").commit(started("order")).commit(scheduled("a"), scheduled("b")).commit(cancelRequested()).
			commit(attempt(2, 1), canceledActivity(2)).commit(workflowCanceled(nil))
		if r := check(t, invariant.Options{}, h); len(r.Violations) > 0 || r.Outcomes != 1 {
			t.Fatal(r)
		}
	})
	t.Run("an activity canceled as it was scheduled", func(t *testing.T) {
		// Canceled before its first decision: the code scheduled a step and
		// saw the cancellation in one decision; the engine never runs it.
		a := scheduled("a")
		a.attrs.(*stream.ActivityTaskScheduledAttrs).Canceled = true
		h := newHist("x").commit(started("order")).commit(cancelRequested()).commit(a, workflowCanceled(nil))
		if r := check(t, invariant.Options{}, h); len(r.Violations) > 0 {
			t.Fatal(r)
		}
		// It must never have an outcome.
		h = newHist("x").commit(started("order")).commit(cancelRequested()).commit(a).commit(attempt(2, 1), completed(2)).commit(workflowCanceled(nil))
		r := check(t, invariant.Options{}, h)
		if len(r.Violations) == 0 || !strings.Contains(r.Violations[0].Detail, "canceled as it was scheduled") {
			t.Fatalf("an outcome of an activity canceled as it was scheduled: %s", r)
		}
	})
	t.Run("but not one scheduled after the request", func(t *testing.T) {
		h := newHist("x").commit(started("order")).commit(cancelRequested()).commit(scheduled("a")).
			commit(workflowCanceled(nil))
		if got := rules(check(t, invariant.Options{}, h).Violations); !slices.Equal(got, []invariant.Rule{invariant.RuleOneOutcome}) {
			t.Fatalf("rules %v", got)
		}
	})
	t.Run("abandoned activities when allowed", func(t *testing.T) {
		h := newHist("x").commit(started("order")).commit(scheduled("a")).commit(workflowCompleted(0))
		if r := check(t, invariant.Options{AllowAbandonedActivities: true}, h); len(r.Violations) > 0 {
			t.Fatal(r)
		}
	})
	t.Run("parallel compensation in one commit", func(t *testing.T) {
		h := newHist("x").commit(started("trip")).
			commit(register("a", "undo"), register("b", "undo")).
			commit(undo("b", "undo", 2), undo("a", "undo", 1)).
			commit(attempt(3, 1), undone(3, "b")).
			commit(attempt(4, 3), undone(4, "a"),
				workflowFailed(&stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}, 0))
		opts := invariant.Options{Compensation: map[string]saga.CompensationOptions{"trip": {Parallel: true}}}
		r := check(t, opts, h)
		if len(r.Violations) > 0 {
			t.Fatal(r)
		}
		if r.ExtraAttempts != 2 {
			t.Fatalf("%d extra attempts, want 2", r.ExtraAttempts)
		}
		// Parallel or not, LIFO holds, and batches are one commit each.
		if got := rules(check(t, opts, overlapping("y")).Violations); !slices.Equal(got, []invariant.Rule{invariant.RuleCompensationLIFO}) {
			t.Fatalf("a parallel batch over two commits: rules %v", got)
		}
		// The batch in registration order: a before b.
		h.commits[2].Commit.Events[0].Attrs, h.commits[2].Commit.Events[1].Attrs = h.commits[2].Commit.Events[1].Attrs, h.commits[2].Commit.Events[0].Attrs
		if got := rules(check(t, opts, h).Violations); !slices.Contains(got, invariant.RuleCompensationLIFO) {
			t.Fatalf("a parallel batch in registration order: rules %v", got)
		}
	})
	t.Run("continue after a failed step", func(t *testing.T) {
		h := newHist("x").commit(started("trip")).
			commit(register("a", "undo"), register("b", "undo")).
			commit(undo("b", "undo", 2)).
			commit(attempt(3, 1), undoFailed(3, "b"), undo("a", "undo", 1)).
			commit(attempt(6, 1), undone(6, "a"), workflowFailed(&stream.CompensationOutcome{
				Status: stream.CompensationFailed, Completed: 1, FailedSteps: []string{"b"}}, 0))
		opts := invariant.Options{Compensation: map[string]saga.CompensationOptions{"trip": {ContinueAfterFailure: true}}}
		if r := check(t, opts, h); len(r.Violations) > 0 {
			t.Fatal(r)
		}
		if got := rules(check(t, invariant.Options{}, h).Violations); !slices.Equal(got, []invariant.Rule{invariant.RuleCompensationLIFO}) {
			t.Fatalf("without the option: rules %v", got)
		}
	})
	t.Run("compensation stopped at a failed step", func(t *testing.T) {
		// The undo of c fails for good: a and b are not run, and the last
		// event lists them, last registered first.
		h := newHist("x").commit(started("trip")).
			commit(register("a", "undo"), register("b", "undo"), register("c", "undo")).
			commit(undo("c", "undo", 3)).
			commit(attempt(4, 1), undoFailed(4, "c"), workflowFailed(&stream.CompensationOutcome{
				Status: stream.CompensationFailed, FailedSteps: []string{"c"}, NotRun: []string{"b", "a"}}, 0))
		if r := check(t, invariant.Options{}, h); len(r.Violations) > 0 {
			t.Fatal(r)
		}
	})
	t.Run("timer due within the millisecond the engine keeps", func(t *testing.T) {
		h := newHist("x").commit(started("order")).commit(timerCreated(time.Second, 1500*time.Microsecond)).
			commit(timerFired(1, time.Second+time.Millisecond))
		if r := check(t, invariant.Options{}, h); len(r.Violations) > 0 {
			t.Fatal(r)
		}
	})
	t.Run("unblocked saga is running", func(t *testing.T) {
		h := newHist("x").commit(started("order")).commit(blocked()).commit(scheduled("a"))
		r := check(t, invariant.Options{}, h)
		if len(r.Violations) > 0 || len(r.Blocked) != 0 {
			t.Fatalf("blocked %v: %s", r.Blocked, r)
		}
		h.commit(blocked())
		if r := check(t, invariant.Options{}, h); !slices.Equal(r.Blocked, []string{"x"}) {
			t.Fatalf("blocked %v", r.Blocked)
		}
	})
}

func TestInvalidOptions(t *testing.T) {
	for _, opts := range []invariant.Options{
		{Acked: invariant.Acked{Signals: []invariant.SignalAck{{SagaID: "x", Name: "go"}}}},
		{Concurrency: -1},
	} {
		if _, err := invariant.CheckHistories(nil, opts); !errors.Is(err, invariant.ErrInvalidOptions) {
			t.Fatalf("%+v: %v", opts, err)
		}
	}
	h := completedOrder("x").history()
	if _, err := invariant.CheckHistories([]invariant.History{h, h}, invariant.Options{}); !errors.Is(err, invariant.ErrInvalidOptions) {
		t.Fatalf("two histories of one saga: %v", err)
	}
}

func TestReportString(t *testing.T) {
	var hs []*hist
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"} {
		hs = append(hs, newHist(id).commit(started("order")).commit(completed(9)))
	}
	s := check(t, invariant.Options{}, hs...).String()
	for _, want := range []string{"12 sagas, 0 ended (running 12)", "12 violations", "saga a: one_outcome: event 1 ActivityTaskCompleted names event 9", "… and 2 more"} {
		if !strings.Contains(s, want) {
			t.Fatalf("report does not say %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "saga k:") {
		t.Fatalf("report lists more than 10 violations:\n%s", s)
	}
}
