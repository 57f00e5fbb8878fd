package invariant

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// Rule names one invariant. Its value is stable, for logs and reports.
type Rule string

// The invariants, in the order the report lists them for one saga.
const (
	// RuleHistory: the saga has a history, and every commit of it decodes
	// and names the saga.
	RuleHistory Rule = "history"
	// RuleContiguousIDs: event ids run 0, 1, 2, … without gap or repeat
	// across the saga's commits, and the commits' stream sequences rise.
	RuleContiguousIDs Rule = "contiguous_ids"
	// RuleStartFirst: the first event is WorkflowExecutionStarted, and
	// every other one starts a run: it follows a
	// WorkflowExecutionContinuedAsNew.
	RuleStartFirst Rule = "start_first"
	// RuleRuns: a run that continued as new ends with
	// WorkflowExecutionContinuedAsNew, followed in the same commit by the
	// next run's start, numbered one more, which links back to it (the
	// event that ended the run, the previous run's start and its commit's
	// sequence) and carries the inbox position the history reached and
	// only signals the saga recorded.
	RuleRuns Rule = "runs"
	// RuleTerminalLast: at most one terminal event (WorkflowExecution
	// Completed, Failed, Canceled or TimedOut), in the last run, and
	// nothing after it.
	RuleTerminalLast Rule = "terminal_last"
	// RuleEnded: with Options.RequireEnded, the saga has ended.
	RuleEnded Rule = "ended"
	// RuleOneOutcome: every outcome names an activity or compensation step
	// scheduled before it, of its kind; none gets two; an
	// ActivityTaskStarted comes right before its activity's outcome; and
	// in an ended saga every compensation step, and every activity the
	// saga's cancellation did not reach, has its outcome.
	RuleOneOutcome Rule = "one_outcome"
	// RuleCompensationLIFO: each CompensationStepScheduled runs the latest
	// registration not yet run, with the registered step and activity;
	// none runs twice; sequential compensation runs one step at a time;
	// and none registered before a step that failed for good runs after
	// it, unless the workflow continues after failures.
	RuleCompensationLIFO Rule = "compensation_lifo"
	// RuleCompensationOutcome: the compensation outcome a failed, canceled
	// or timed-out saga's last event records agrees with its steps: the
	// completed count, the failed steps in order, the steps not run, the
	// status.
	RuleCompensationOutcome Rule = "compensation_outcome"
	// RuleTimerOnce: every TimerFired and TimerCanceled names a timer
	// created before it and still open; and an ended saga has no open
	// timer (the engine cancels them as the saga ends).
	RuleTimerOnce Rule = "timer_once"
	// RuleTimerNotEarly: no timer fired before its due time, the
	// TimerCreated event's time plus its duration, to the millisecond the
	// engine keeps due times to.
	RuleTimerNotEarly Rule = "timer_not_early"
	// RuleAckedStart: every acknowledged start has a history.
	RuleAckedStart Rule = "acked_start"
	// RuleAckedSignal: every acknowledged signal is recorded in its saga
	// under its name (once: a second record is RuleSignalOnce).
	RuleAckedSignal Rule = "acked_signal"
	// RuleSignalOnce: no saga records one msg id twice, and no inbox
	// message (inbox epoch and sequence) is recorded twice in any saga.
	RuleSignalOnce Rule = "signal_once"
	// RuleSignalOrder: a saga records the signals of one inbox in rising
	// inbox sequence (the order the inbox stored them).
	RuleSignalOrder Rule = "signal_order"
	// RuleProjection: the Postgres projection equals the history
	// (pgarchive.Store.Verify found no mismatch).
	RuleProjection Rule = "projection"
)

// Acked is what the system acknowledged to its clients during a run.
type Acked struct {
	// Starts are saga ids whose start was acknowledged. An id may appear
	// more than once: idempotent retries are acknowledged again.
	Starts []string
	// Signals are the signals whose publish was acknowledged (by a
	// JetStream PubAck or by the API). Only signals the engine should
	// record belong here: one sent to a saga that did not exist or had
	// ended is set aside as a dead letter, by design.
	Signals []SignalAck
}

// SignalAck is one acknowledged signal.
type SignalAck struct {
	SagaID string
	Name   string
	// MsgID is the signal's de-duplication id (Nats-Msg-Id, or the API's
	// msg_id): unique per logical signal, and required here, since it is
	// how the history's SignalReceived is found.
	MsgID string
}

// Options say what to check.
type Options struct {
	// Histories reads the engine's history streams; required by Check.
	// Its Config must name the engine's prefix and history shard count.
	Histories *stream.Store
	// IDs are the sagas to check; nil: every saga the streams hold. The
	// sagas Acked names are checked too.
	IDs []string
	// Acked, when not empty, is checked against the histories.
	Acked Acked
	// Projection, when set, must equal the histories (pgarchive Verify);
	// it also provides the histories of archived sagas. Call Check once
	// the projector has caught up.
	Projection *pgarchive.Store
	// RequireEnded makes a saga that has not ended a violation.
	RequireEnded bool
	// Compensation gives, by workflow type, the compensation options its
	// definition sets (saga.WithCompensationOptions). Histories do not
	// record them; a type not named here is checked against the
	// defaults: one step at a time, stopping at the first that fails for
	// good.
	Compensation map[string]saga.CompensationOptions
	// AllowAbandonedActivities accepts an ended saga with activities that
	// have no outcome, for workflows that may end without waiting for an
	// activity (a Select that moved on, a parallel branch that failed).
	// Without it, only activities the saga's cancellation reached may be
	// left open: the engine ends a canceled saga without waiting for them.
	AllowAbandonedActivities bool
	// Concurrency bounds the sagas Check reads at once; 0: 8.
	Concurrency int
	// SetAside are the signals the engine set aside in the dead-letter
	// stream (a signal to a saga that had ended, say): an acknowledged
	// signal must be recorded once or set aside, never lost. Check reads
	// them from the dead-letter stream itself; CheckHistories takes them
	// from here.
	SetAside []SignalAck
}

// ErrInvalidOptions means Options that cannot be checked against.
var ErrInvalidOptions = errors.New("invariant: invalid options")

// ErrViolated is matched by Report.Err when some invariant is broken.
var ErrViolated = errors.New("invariants violated")

func (o Options) validate(needStore bool) error {
	if needStore && o.Histories == nil {
		return fmt.Errorf("%w: Histories is required", ErrInvalidOptions)
	}
	for i, s := range o.Acked.Signals {
		if s.SagaID == "" || s.MsgID == "" {
			return fmt.Errorf("%w: acknowledged signal %d (%+v) needs a saga id and a msg id", ErrInvalidOptions, i, s)
		}
	}
	if o.Concurrency < 0 {
		return fmt.Errorf("%w: Concurrency %d is negative", ErrInvalidOptions, o.Concurrency)
	}
	return nil
}

// Violation is one broken invariant.
type Violation struct {
	SagaID string
	Rule   Rule
	// Detail says precisely what broke: the event ids, what was expected,
	// what was found.
	Detail string
}

func (v Violation) String() string { return fmt.Sprintf("saga %s: %s: %s", v.SagaID, v.Rule, v.Detail) }

// StatusRunning is the ByStatus key of the sagas that have not ended.
const StatusRunning = "running"

// Report is the outcome of a check.
type Report struct {
	// Sagas counts the histories checked, Ended those that ended. Runs
	// counts their runs: more than Sagas when some continued as new.
	Sagas, Ended, Runs int
	// ByStatus counts ended sagas by terminal event type
	// ("WorkflowExecutionCompleted", …), and the others as "running".
	ByStatus map[string]int
	// ExtraAttempts counts the attempts beyond the first of the
	// activities and compensation steps that have their outcome, as the
	// history records them: the attempt number on ActivityTaskStarted, or
	// the attempts on a failure. Attempts count when they start, so
	// retries after failures count, and so do attempts a crash cut short
	// (see docs/architecture.md, "Attempts").
	ExtraAttempts int
	// Outcomes counts the outcomes recorded (activities and compensation
	// steps), TimersFired the TimerFired events, Signals the
	// SignalReceived events: how much the check had to look at.
	Outcomes, TimersFired, Signals int
	// SignalsSetAside counts the acknowledged signals the engine set aside
	// in the dead-letter stream instead of recording them.
	SignalsSetAside int
	// Blocked lists the sagas the engine blocked (counted as running).
	Blocked []string
	// Archived lists the sagas whose history left the streams for the
	// archive and that were not checked, for want of a Projection to read
	// them from.
	Archived []string
	// Violations are in saga id order, each saga's in history order.
	Violations []Violation
}

// Of returns the violations of one rule.
func (r Report) Of(rule Rule) []Violation {
	var out []Violation
	for _, v := range r.Violations {
		if v.Rule == rule {
			out = append(out, v)
		}
	}
	return out
}

// Err is nil when no invariant is broken, else an error matching
// ErrViolated that carries the summary.
func (r Report) Err() error {
	if len(r.Violations) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrViolated, r.String())
}

// shownViolations is how many violations String lists.
const shownViolations = 10

// String summarises the report and lists its first violations.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d sagas, %d ended", r.Sagas, r.Ended)
	if len(r.ByStatus) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.ByStatus)) {
			parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(k, "WorkflowExecution"), r.ByStatus[k]))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "; %d outcomes, %d extra attempts, %d timers fired, %d signals", r.Outcomes, r.ExtraAttempts, r.TimersFired, r.Signals)
	if len(r.Blocked) > 0 {
		fmt.Fprintf(&b, "; %d blocked", len(r.Blocked))
	}
	if len(r.Archived) > 0 {
		fmt.Fprintf(&b, "; %d archived, not checked", len(r.Archived))
	}
	fmt.Fprintf(&b, "; %d violations", len(r.Violations))
	for i, v := range r.Violations {
		if i == shownViolations {
			fmt.Fprintf(&b, "\n  … and %d more", len(r.Violations)-shownViolations)
			break
		}
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return b.String()
}
