package stream

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// EventType names what happened. The names are the reference manual's,
// plus the compensation events and WorkflowExecutionBlocked, which records
// that the engine stopped driving a saga it cannot replay safely.
type EventType string

// Event types.
const (
	WorkflowExecutionStarted         EventType = "WorkflowExecutionStarted"
	WorkflowExecutionCompleted       EventType = "WorkflowExecutionCompleted"
	WorkflowExecutionFailed          EventType = "WorkflowExecutionFailed"
	WorkflowExecutionTimedOut        EventType = "WorkflowExecutionTimedOut"
	WorkflowExecutionCanceled        EventType = "WorkflowExecutionCanceled"
	WorkflowExecutionCancelRequested EventType = "WorkflowExecutionCancelRequested"
	WorkflowExecutionBlocked         EventType = "WorkflowExecutionBlocked"
	WorkflowExecutionUnblocked       EventType = "WorkflowExecutionUnblocked"
	// WorkflowExecutionContinuedAsNew ends a run whose code asked to
	// continue as new; the next run's WorkflowExecutionStarted follows it
	// in the same commit.
	WorkflowExecutionContinuedAsNew EventType = "WorkflowExecutionContinuedAsNew"

	ActivityTaskScheduled EventType = "ActivityTaskScheduled"
	ActivityTaskStarted   EventType = "ActivityTaskStarted"
	ActivityTaskCompleted EventType = "ActivityTaskCompleted"
	ActivityTaskFailed    EventType = "ActivityTaskFailed"
	ActivityTaskTimedOut  EventType = "ActivityTaskTimedOut"
	ActivityTaskCanceled  EventType = "ActivityTaskCanceled"

	TimerCreated  EventType = "TimerCreated"
	TimerFired    EventType = "TimerFired"
	TimerCanceled EventType = "TimerCanceled"

	SignalReceived EventType = "SignalReceived"

	MarkerRecorded EventType = "MarkerRecorded"

	CompensationStepScheduled EventType = "CompensationStepScheduled"
	CompensationStepCompleted EventType = "CompensationStepCompleted"
	CompensationStepFailed    EventType = "CompensationStepFailed"
)

// Category groups event types, as in the reference manual.
type Category string

// Event categories.
const (
	CategoryWorkflow     Category = "Workflow"
	CategoryActivity     Category = "Activity"
	CategoryTimer        Category = "Timer"
	CategorySignal       Category = "Signal"
	CategoryMarker       Category = "Marker"
	CategoryCompensation Category = "Compensation"
)

// Role says how replay treats an event.
type Role int

const (
	// RoleCommand events record a decision of the workflow code: replay
	// checks that the code makes the same decision again.
	RoleCommand Role = iota + 1
	// RoleInput events are facts from outside the code (a start, an
	// activity's result): replay feeds them to the code.
	RoleInput
	// RoleInfo events are kept for people and tools; replay skips them.
	RoleInfo
)

type eventSpec struct {
	category Category
	role     Role
	newAttrs func() any
}

// eventSpecs is the one table of event types: category, replay role and
// attribute type. An event type missing here does not decode.
var eventSpecs = map[EventType]eventSpec{
	WorkflowExecutionStarted:         {CategoryWorkflow, RoleInput, func() any { return new(WorkflowExecutionStartedAttrs) }},
	WorkflowExecutionCompleted:       {CategoryWorkflow, RoleCommand, func() any { return new(WorkflowExecutionCompletedAttrs) }},
	WorkflowExecutionFailed:          {CategoryWorkflow, RoleCommand, func() any { return new(WorkflowExecutionFailedAttrs) }},
	WorkflowExecutionCanceled:        {CategoryWorkflow, RoleCommand, func() any { return new(WorkflowExecutionCanceledAttrs) }},
	WorkflowExecutionTimedOut:        {CategoryWorkflow, RoleCommand, func() any { return new(WorkflowExecutionTimedOutAttrs) }},
	WorkflowExecutionCancelRequested: {CategoryWorkflow, RoleInput, func() any { return new(WorkflowExecutionCancelRequestedAttrs) }},
	WorkflowExecutionBlocked:         {CategoryWorkflow, RoleInfo, func() any { return new(WorkflowExecutionBlockedAttrs) }},
	WorkflowExecutionUnblocked:       {CategoryWorkflow, RoleInfo, func() any { return new(WorkflowExecutionUnblockedAttrs) }},
	WorkflowExecutionContinuedAsNew:  {CategoryWorkflow, RoleCommand, func() any { return new(WorkflowExecutionContinuedAsNewAttrs) }},
	ActivityTaskScheduled:            {CategoryActivity, RoleCommand, func() any { return new(ActivityTaskScheduledAttrs) }},
	ActivityTaskStarted:              {CategoryActivity, RoleInfo, func() any { return new(ActivityTaskStartedAttrs) }},
	ActivityTaskCompleted:            {CategoryActivity, RoleInput, func() any { return new(ActivityTaskCompletedAttrs) }},
	ActivityTaskFailed:               {CategoryActivity, RoleInput, func() any { return new(ActivityTaskFailedAttrs) }},
	ActivityTaskTimedOut:             {CategoryActivity, RoleInput, func() any { return new(ActivityTaskTimedOutAttrs) }},
	ActivityTaskCanceled:             {CategoryActivity, RoleInput, func() any { return new(ActivityTaskCanceledAttrs) }},
	MarkerRecorded:                   {CategoryMarker, RoleCommand, func() any { return new(MarkerRecordedAttrs) }},
	TimerCreated:                     {CategoryTimer, RoleCommand, func() any { return new(TimerCreatedAttrs) }},
	TimerFired:                       {CategoryTimer, RoleInput, func() any { return new(TimerFiredAttrs) }},
	TimerCanceled:                    {CategoryTimer, RoleCommand, func() any { return new(TimerCanceledAttrs) }},
	SignalReceived:                   {CategorySignal, RoleInput, func() any { return new(SignalReceivedAttrs) }},
	CompensationStepScheduled:        {CategoryCompensation, RoleCommand, func() any { return new(CompensationStepScheduledAttrs) }},
	CompensationStepCompleted:        {CategoryCompensation, RoleInput, func() any { return new(CompensationStepCompletedAttrs) }},
	CompensationStepFailed:           {CategoryCompensation, RoleInput, func() any { return new(CompensationStepFailedAttrs) }},
}

// CategoryOf returns the category of an event type, or "" if the type is
// unknown.
func CategoryOf(t EventType) Category { return eventSpecs[t].category }

// RoleOf returns how replay treats an event type; 0 for an unknown type.
func RoleOf(t EventType) Role { return eventSpecs[t].role }

// Event is one immutable history record.
type Event struct {
	// ID is 0-based and contiguous within the saga.
	ID       uint64
	SagaID   string
	Type     EventType
	Category Category
	Time     time.Time
	// Attrs points to the attribute struct of Type, for example
	// *ActivityTaskScheduledAttrs.
	Attrs any
}

func (e Event) String() string { return fmt.Sprintf("event %d %s", e.ID, e.Type) }

// Failure is an error as history stores it: kind, message, key/value
// context and the chain of causes. The root package converts it to and
// from saga.Error.
type Failure struct {
	Kind         string            `msgpack:"kind" json:"kind"`
	Message      string            `msgpack:"message" json:"message"`
	Context      map[string]string `msgpack:"context,omitempty" json:"context,omitempty"`
	NonRetryable bool              `msgpack:"non_retryable,omitempty" json:"non_retryable,omitempty"`
	Cause        *Failure          `msgpack:"cause,omitempty" json:"cause,omitempty"`
}

// Bounds of a recorded failure: each text (message or context value) is
// cut at maxFailureText bytes, at most maxFailureContext context entries
// are kept, and causes deeper than maxFailureDepth are dropped, so that no
// error can make its commit too large to store.
const (
	maxFailureText    = 4 << 10
	maxFailureContext = 32
	maxFailureDepth   = 8
)

// maxFailureBytes bounds a recorded failure as a whole: the bounds above
// allow more (8 levels of 32 context entries), and a failure must leave
// room in its commit.
const maxFailureBytes = 64 << 10

// Bounded returns f cut to the bounds above, or to its Summary when it is
// still larger than maxFailureBytes; f itself is not changed.
func (f *Failure) Bounded() *Failure {
	b := f.bounded(0)
	if data, err := Marshal(b); err != nil || len(data) > maxFailureBytes {
		return f.Summary()
	}
	return b
}

// Summary is f cut to what always fits a message: its kind, whether it
// is retryable, and its message, without context or causes.
func (f *Failure) Summary() *Failure {
	if f == nil {
		return nil
	}
	msg := f.Error()
	if len(msg) > maxFailureText {
		msg = cut(msg)
	}
	return &Failure{Kind: f.Kind, Message: msg, NonRetryable: f.NonRetryable}
}

func (f *Failure) bounded(depth int) *Failure {
	if f == nil {
		return nil
	}
	c := *f
	c.Message = cut(f.Message)
	if len(f.Context) > 0 {
		c.Context = make(map[string]string, min(len(f.Context), maxFailureContext))
		for k, v := range f.Context {
			if len(c.Context) == maxFailureContext {
				break
			}
			c.Context[cut(k)] = cut(v)
		}
	}
	if depth+1 >= maxFailureDepth {
		if f.Cause != nil {
			c.Message += " (further causes dropped)"
		}
		c.Cause = nil
	} else {
		c.Cause = f.Cause.bounded(depth + 1)
	}
	return &c
}

func cut(s string) string {
	if len(s) <= maxFailureText {
		return s
	}
	return s[:maxFailureText] + fmt.Sprintf("... (%d bytes cut)", len(s)-maxFailureText)
}

func (f *Failure) Error() string {
	msg := f.Message
	if msg == "" {
		msg = f.Kind
	}
	if f.Cause != nil {
		if c := f.Cause.Error(); !strings.Contains(msg, c) {
			return msg + ": " + c
		}
	}
	return msg
}

// RetryPolicy says how an activity is retried. Zero fields mean the
// engine's defaults.
type RetryPolicy struct {
	InitialInterval    time.Duration `msgpack:"initial_interval,omitempty" json:"initial_interval,omitempty"`
	BackoffCoefficient float64       `msgpack:"backoff_coefficient,omitempty" json:"backoff_coefficient,omitempty"`
	MaximumInterval    time.Duration `msgpack:"maximum_interval,omitempty" json:"maximum_interval,omitempty"`
	// MaximumAttempts counts the first attempt; 1 means no retries.
	MaximumAttempts int `msgpack:"maximum_attempts,omitempty" json:"maximum_attempts,omitempty"`
	// NonRetryableErrorKinds lists error kinds that are never retried.
	NonRetryableErrorKinds []string `msgpack:"non_retryable_error_kinds,omitempty" json:"non_retryable_error_kinds,omitempty"`
}

// ActivityOptions travel with a scheduled activity. They are resolved
// (defaults filled in) before they are recorded, so that a later change of
// the defaults does not change a recorded saga.
type ActivityOptions struct {
	StartToCloseTimeout time.Duration `msgpack:"start_to_close_timeout" json:"start_to_close_timeout"`
	// ScheduleToStartTimeout bounds the wait from scheduling to the first
	// attempt's start (no node runs the type, a backlog, a lost task); 0:
	// no bound. Whole seconds, rounded up: it runs on a durable timer.
	ScheduleToStartTimeout time.Duration `msgpack:"schedule_to_start_timeout,omitempty" json:"schedule_to_start_timeout,omitempty"`
	// HeartbeatTimeout bounds the time between two heartbeats of an
	// attempt: past it, the attempt counts as timed out (its node died,
	// say) and the next one starts, long before StartToCloseTimeout would
	// tell. 0: no bound. Whole seconds, rounded up: it runs on a durable
	// timer.
	HeartbeatTimeout time.Duration `msgpack:"heartbeat_timeout,omitempty" json:"heartbeat_timeout,omitempty"`
	RetryPolicy      RetryPolicy   `msgpack:"retry_policy" json:"retry_policy"`
}

// WorkflowExecutionStartedAttrs opens every history.
type WorkflowExecutionStartedAttrs struct {
	WorkflowType string  `msgpack:"workflow_type" json:"workflow_type"`
	Version      int     `msgpack:"version" json:"version"`
	Input        Payload `msgpack:"input" json:"input"`
	// RequestID identifies the start request, so that a client retrying its
	// own start recognises the history it created.
	RequestID string `msgpack:"request_id" json:"request_id"`
	// RunTimeout bounds the saga's run from its start: past it, the saga
	// is canceled, compensates and ends timed_out. 0: no bound. A run
	// that continues as new passes it on: each run has the same bound.
	RunTimeout time.Duration `msgpack:"run_timeout,omitempty" json:"run_timeout,omitempty"`
	// Continued is set on the start of every run but the first: it links
	// the run to the one it continues and carries what it inherits.
	Continued *RunContinuation `msgpack:"continued,omitempty" json:"continued,omitempty"`
}

// RunContinuation starts a run that continues the one before it
// (continue-as-new). Its WorkflowExecutionStarted directly follows the
// previous run's WorkflowExecutionContinuedAsNew, in the same commit.
type RunContinuation struct {
	// Run is this run's number: the first run is 1, so the first
	// continuation is 2.
	Run uint32 `msgpack:"run" json:"run"`
	// PreviousEventID is the WorkflowExecutionContinuedAsNew that ended the
	// previous run: the event just before this run's start.
	PreviousEventID uint64 `msgpack:"previous_event_id" json:"previous_event_id"`
	// PreviousStartEventID and PreviousStartSeq locate the previous run's
	// start: its WorkflowExecutionStarted, and the stream sequence of the
	// commit that holds it. A reader walks back run by run with them.
	PreviousStartEventID uint64 `msgpack:"previous_start_event_id" json:"previous_start_event_id"`
	PreviousStartSeq     uint64 `msgpack:"previous_start_seq" json:"previous_start_seq"`
	// LastInboxSeq and LastInboxEpoch are the inbox position of the
	// signals recorded so far (see State.LastInboxSeq): a reader of this
	// run alone still knows which inbox messages the saga took.
	LastInboxSeq   uint64 `msgpack:"last_inbox_seq,omitempty" json:"last_inbox_seq,omitempty"`
	LastInboxEpoch int64  `msgpack:"last_inbox_epoch,omitempty" json:"last_inbox_epoch,omitempty"`
	// Signals are the signals the previous run recorded and its code had
	// not taken, in the order they were recorded: this run's code
	// receives them first.
	Signals []CarriedSignal `msgpack:"signals,omitempty" json:"signals,omitempty"`
	// CancelRequested is a cancellation requested after the previous
	// run's code decided to continue: this run starts canceled.
	CancelRequested *WorkflowExecutionCancelRequestedAttrs `msgpack:"cancel_requested,omitempty" json:"cancel_requested,omitempty"`
}

// CarriedSignal is a signal a run recorded and passed on, untaken, to the
// run that continues it.
type CarriedSignal struct {
	Name  string  `msgpack:"name" json:"name"`
	Input Payload `msgpack:"input,omitempty" json:"input,omitempty"`
	// EventID is the SignalReceived that recorded it.
	EventID uint64 `msgpack:"event_id" json:"event_id"`
}

// WorkflowExecutionContinuedAsNewAttrs ends a run whose code returned
// saga.ContinueAsNew. The input of the next run is on its
// WorkflowExecutionStarted, the event after this one, which every reader
// of a run reads; it is not repeated here, so that the two events fit in
// one commit with an input as large as a start's.
type WorkflowExecutionContinuedAsNewAttrs struct {
	// NextRun is the number of the run that follows.
	NextRun uint32 `msgpack:"next_run" json:"next_run"`
}

// WorkflowExecutionCompletedAttrs carries the workflow's output.
type WorkflowExecutionCompletedAttrs struct {
	Output Payload `msgpack:"output" json:"output"`
}

// WorkflowExecutionFailedAttrs carries the error the workflow returned,
// and how the compensation that followed ended.
type WorkflowExecutionFailedAttrs struct {
	Failure      *Failure             `msgpack:"failure" json:"failure"`
	Compensation *CompensationOutcome `msgpack:"compensation,omitempty" json:"compensation,omitempty"`
}

// Causes of a cancellation request.
const (
	// CancelByRequest: a client, the API or the command line asked.
	CancelByRequest = "request"
	// CancelByRunTimeout: the saga's run timeout passed.
	CancelByRunTimeout = "run_timeout"
)

// WorkflowExecutionCancelRequestedAttrs records a request to cancel the
// saga: the workflow's context is done from this event on, and the saga
// compensates and ends canceled (timed_out when the cause is its run
// timeout).
type WorkflowExecutionCancelRequestedAttrs struct {
	// Cause is CancelByRequest or CancelByRunTimeout.
	Cause  string `msgpack:"cause" json:"cause"`
	Reason string `msgpack:"reason,omitempty" json:"reason,omitempty"`
	// Identity says who asked: a client's or a node's name.
	Identity string `msgpack:"identity,omitempty" json:"identity,omitempty"`
}

// WorkflowExecutionCanceledAttrs ends a canceled saga, after its
// compensation.
type WorkflowExecutionCanceledAttrs struct {
	Reason       string               `msgpack:"reason,omitempty" json:"reason,omitempty"`
	Compensation *CompensationOutcome `msgpack:"compensation,omitempty" json:"compensation,omitempty"`
}

// WorkflowExecutionTimedOutAttrs ends a saga that ran past its run
// timeout, after its compensation.
type WorkflowExecutionTimedOutAttrs struct {
	RunTimeout   time.Duration        `msgpack:"run_timeout" json:"run_timeout"`
	Compensation *CompensationOutcome `msgpack:"compensation,omitempty" json:"compensation,omitempty"`
}

// Compensation outcomes.
const (
	// CompensationCompleted: every registered compensation completed.
	CompensationCompleted = "completed"
	// CompensationFailed: a compensation failed for good; the steps it
	// and those not run undo need an operator.
	CompensationFailed = "failed"
	// CompensationSkipped: the workflow code discarded its compensations.
	CompensationSkipped = "skipped"
)

// CompensationOutcome says how the compensation of a saga that did not
// complete ended. It is recorded with the saga's last event; a saga with
// nothing registered to undo records none.
type CompensationOutcome struct {
	// Status is CompensationCompleted, CompensationFailed or
	// CompensationSkipped.
	Status string `msgpack:"status" json:"status"`
	// Completed counts the compensation steps that completed.
	Completed int `msgpack:"completed" json:"completed"`
	// FailedSteps name the steps whose compensation failed for good, in
	// the order they were tried, and Failure is the first one's error.
	FailedSteps []string `msgpack:"failed_steps,omitempty" json:"failed_steps,omitempty"`
	Failure     *Failure `msgpack:"failure,omitempty" json:"failure,omitempty"`
	// NotRun name the steps registered for compensation that were not
	// undone (after a failure, or discarded), last registered first.
	NotRun []string `msgpack:"not_run,omitempty" json:"not_run,omitempty"`
}

// Reasons a saga is blocked.
const (
	BlockedNonDeterminism    = "nondeterminism"
	BlockedPanic             = "panic"
	BlockedHistoryUnreadable = "history_unreadable"
	BlockedDeadlock          = "deadlock"
	BlockedCommitTooLarge    = "commit_too_large"
	// BlockedHistoryTooLong: the run's history reached the fleet's history
	// limit (see HistoryLimits); its code's next decision was not
	// appended.
	BlockedHistoryTooLong = "history_too_long"
)

// WorkflowExecutionBlockedAttrs records why the engine stopped driving a
// saga. The saga is not failed: once the cause is fixed (for example new
// code deployed) it can be woken and continues from its history.
type WorkflowExecutionBlockedAttrs struct {
	Reason  string `msgpack:"reason" json:"reason"`
	Message string `msgpack:"message" json:"message"`
	// AtEventID is the event replay stopped at, when there is one.
	AtEventID uint64 `msgpack:"at_event_id" json:"at_event_id"`
	// Node names the node that found the problem.
	Node string `msgpack:"node" json:"node"`
}

// WorkflowExecutionUnblockedAttrs records that a node replayed a blocked
// saga successfully (after a fix was deployed and the saga woken, say):
// the engine drives it again.
type WorkflowExecutionUnblockedAttrs struct {
	Node string `msgpack:"node" json:"node"`
}

// ActivityTaskScheduledAttrs is the decision to run an activity.
type ActivityTaskScheduledAttrs struct {
	ActivityType string          `msgpack:"activity_type" json:"activity_type"`
	Input        Payload         `msgpack:"input" json:"input"`
	Options      ActivityOptions `msgpack:"options" json:"options"`
	// Detached is set for an activity scheduled in a context that the
	// saga's cancellation does not reach (see saga.NewDisconnectedContext):
	// its heartbeats never report a cancellation.
	Detached bool `msgpack:"detached,omitempty" json:"detached,omitempty"`
	// Canceled is set for an activity the code canceled in the decision
	// that scheduled it (the saga's cancellation, applied in the same
	// decision, reached it). It is recorded, so that replay meets it where
	// the code issued it, but it is never run: it was never open.
	Canceled bool `msgpack:"canceled,omitempty" json:"canceled,omitempty"`
}

// ActivityTaskStartedAttrs records the attempt that produced the result
// that follows it. It is written together with that result, not when the
// attempt began, so that an attempt costs no extra append.
type ActivityTaskStartedAttrs struct {
	ScheduledEventID uint64 `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Attempt          int    `msgpack:"attempt" json:"attempt"`
	Node             string `msgpack:"node" json:"node"`
}

// ActivityTaskCompletedAttrs carries an activity's result.
type ActivityTaskCompletedAttrs struct {
	ScheduledEventID uint64  `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Result           Payload `msgpack:"result" json:"result"`
}

// ActivityTaskFailedAttrs carries the error of an activity's last attempt.
type ActivityTaskFailedAttrs struct {
	ScheduledEventID uint64   `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Failure          *Failure `msgpack:"failure" json:"failure"`
	Attempts         int      `msgpack:"attempts" json:"attempts"`
}

// ActivityTaskTimedOutAttrs says the last attempt ran out of time.
type ActivityTaskTimedOutAttrs struct {
	ScheduledEventID uint64   `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Failure          *Failure `msgpack:"failure" json:"failure"`
	Attempts         int      `msgpack:"attempts" json:"attempts"`
}

// ActivityTaskCanceledAttrs records that an activity stopped because the
// saga was canceled: its attempt saw the cancellation at a heartbeat, or
// no attempt was running when it was seen.
type ActivityTaskCanceledAttrs struct {
	ScheduledEventID uint64 `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Attempts         int    `msgpack:"attempts" json:"attempts"`
}

// TimerCreatedAttrs is the decision to wait: the timer fires Duration
// after the event's time. Whole seconds, rounded up: it runs on a durable
// timer.
type TimerCreatedAttrs struct {
	Duration time.Duration `msgpack:"duration" json:"duration"`
}

// TimerFiredAttrs records that a timer's time came.
type TimerFiredAttrs struct {
	StartedEventID uint64 `msgpack:"started_event_id" json:"started_event_id"`
}

// TimerCanceledAttrs records that the workflow stopped waiting for a timer
// (its context was canceled) before it fired.
type TimerCanceledAttrs struct {
	StartedEventID uint64 `msgpack:"started_event_id" json:"started_event_id"`
}

// SignalReceivedAttrs records a signal, moved from the inbox stream into
// the saga's history.
type SignalReceivedAttrs struct {
	Name  string  `msgpack:"name" json:"name"`
	Input Payload `msgpack:"input,omitempty" json:"input,omitempty"`
	// InboxSeq is the signal's sequence in the inbox stream: the same
	// message moved twice is recorded once.
	InboxSeq uint64 `msgpack:"inbox_seq" json:"inbox_seq"`
	// InboxEpoch is when the inbox stream was created (Unix nanoseconds):
	// a stream deleted and created again numbers from 1 anew.
	InboxEpoch int64 `msgpack:"inbox_epoch,omitempty" json:"inbox_epoch,omitempty"`
	// MsgID is the sender's Nats-Msg-Id, if it gave one.
	MsgID string `msgpack:"msg_id,omitempty" json:"msg_id,omitempty"`
}

// FireAt is when a timer created at created fires.
func (a *TimerCreatedAttrs) FireAt(created time.Time) time.Time { return created.Add(a.Duration) }

// Marker names.
const (
	MarkerSideEffect = "side_effect"
	MarkerVersion    = "version"
	// MarkerCompensation registers the undo of a step that succeeded.
	MarkerCompensation = "compensation"
)

// CompensationRegistration is the undo of a step: the activity that
// compensates it, with its input and options.
type CompensationRegistration struct {
	// Step names the step the compensation undoes.
	Step         string          `msgpack:"step" json:"step"`
	ActivityType string          `msgpack:"activity_type" json:"activity_type"`
	Input        Payload         `msgpack:"input" json:"input"`
	Options      ActivityOptions `msgpack:"options" json:"options"`
}

// CompensationStepScheduledAttrs is the decision to run a registered
// compensation. It runs as an activity: its task, attempts and retries are
// an activity's.
type CompensationStepScheduledAttrs struct {
	CompensationRegistration `msgpack:",inline"`
	// RegisteredEventID is the marker that registered it.
	RegisteredEventID uint64 `msgpack:"registered_event_id" json:"registered_event_id"`
}

// Activity returns the compensation as the activity it runs as.
func (a *CompensationStepScheduledAttrs) Activity() *ActivityTaskScheduledAttrs {
	return &ActivityTaskScheduledAttrs{ActivityType: a.ActivityType, Input: a.Input, Options: a.Options, Detached: true}
}

// CompensationStepCompletedAttrs records a compensation that completed.
type CompensationStepCompletedAttrs struct {
	ScheduledEventID uint64  `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Step             string  `msgpack:"step" json:"step"`
	Result           Payload `msgpack:"result" json:"result"`
}

// CompensationStepFailedAttrs records a compensation that failed for good
// (its retries exhausted, a non-retryable error, a timeout).
type CompensationStepFailedAttrs struct {
	ScheduledEventID uint64   `msgpack:"scheduled_event_id" json:"scheduled_event_id"`
	Step             string   `msgpack:"step" json:"step"`
	Failure          *Failure `msgpack:"failure" json:"failure"`
	Attempts         int      `msgpack:"attempts" json:"attempts"`
}

// MarkerRecordedAttrs records a value the workflow code produced once and
// must see again on replay: a side effect's result, or the version chosen
// for a change.
type MarkerRecordedAttrs struct {
	Name string `msgpack:"name" json:"name"`
	// ChangeID names the change of a version marker.
	ChangeID string   `msgpack:"change_id,omitempty" json:"change_id,omitempty"`
	Data     Payload  `msgpack:"data,omitempty" json:"data,omitempty"`
	Failure  *Failure `msgpack:"failure,omitempty" json:"failure,omitempty"`
	// Compensation is what a compensation marker registers.
	Compensation *CompensationRegistration `msgpack:"compensation,omitempty" json:"compensation,omitempty"`
}

// ScheduledEventID returns the scheduled event an activity input refers to.
func ScheduledEventID(e Event) (uint64, bool) {
	switch a := e.Attrs.(type) {
	case *ActivityTaskStartedAttrs:
		return a.ScheduledEventID, true
	case *ActivityTaskCompletedAttrs:
		return a.ScheduledEventID, true
	case *ActivityTaskFailedAttrs:
		return a.ScheduledEventID, true
	case *ActivityTaskTimedOutAttrs:
		return a.ScheduledEventID, true
	case *ActivityTaskCanceledAttrs:
		return a.ScheduledEventID, true
	case *CompensationStepCompletedAttrs:
		return a.ScheduledEventID, true
	case *CompensationStepFailedAttrs:
		return a.ScheduledEventID, true
	}
	return 0, false
}

// IsTerminal reports whether an event type closes a saga.
func IsTerminal(t EventType) bool {
	switch t {
	case WorkflowExecutionCompleted, WorkflowExecutionFailed, WorkflowExecutionTimedOut, WorkflowExecutionCanceled:
		return true
	}
	return false
}

// eventJSON is the JSON form of an event, as the CLI and API print it.
type eventJSON struct {
	ID         uint64    `json:"id"`
	SagaID     string    `json:"saga_id"`
	Type       EventType `json:"type"`
	Category   Category  `json:"category"`
	Time       time.Time `json:"time"`
	Attributes any       `json:"attributes"`
}

// MarshalJSON writes the event with its attributes as JSON; payloads
// appear as the JSON of their values.
func (e Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(eventJSON{ID: e.ID, SagaID: e.SagaID, Type: e.Type, Category: e.Category, Time: e.Time.UTC(), Attributes: e.Attrs})
}
