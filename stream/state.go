package stream

import (
	"fmt"
	"time"
)

// Status is where a saga stands.
type Status string

// Saga statuses.
const (
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCanceled  Status = "canceled"
	StatusTimedOut  Status = "timed_out"
	// StatusBlocked: the engine found it cannot replay the saga safely
	// (non-determinism, unknown workflow type, a panic in workflow code)
	// and stopped driving it. Nothing was failed or lost.
	StatusBlocked Status = "blocked"
)

// Terminal reports whether the status is final.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCanceled || s == StatusTimedOut
}

// State is a saga folded from its history: what describe shows and what a
// writer checks before appending.
type State struct {
	SagaID       string
	WorkflowType string
	Version      int
	RequestID    string
	Status       Status
	Input        Payload
	Output       Payload
	Failure      *Failure
	// Blocked is set while Status is StatusBlocked.
	Blocked   *WorkflowExecutionBlockedAttrs
	StartedAt time.Time
	UpdatedAt time.Time
	ClosedAt  time.Time
	// NextEventID is the id the next appended event gets.
	NextEventID uint64
	// LastSeq is the stream sequence of the last commit: the expected
	// sequence of the next append.
	LastSeq uint64
	// OpenActivities are the scheduled activities (compensation steps
	// included) without a result yet, by scheduled event id.
	OpenActivities map[uint64]OpenActivity
	// RunTimeout is the saga's run timeout; 0: none.
	RunTimeout time.Duration
	// CancelRequested is the saga's cancellation request, once there is
	// one, at event CancelRequestedEventID.
	CancelRequested        *WorkflowExecutionCancelRequestedAttrs
	CancelRequestedEventID uint64
	// RunTimedOut is set once the run timeout's cancellation is recorded.
	RunTimedOut bool
	// CompensationSteps are the compensation steps scheduled so far, in
	// order, and Compensation how the compensation ended, once the saga
	// did.
	CompensationSteps []CompensationStep
	Compensation      *CompensationOutcome
	// Timers are the saga's workflow timers by the id of their
	// TimerCreated event: when each fires, and whether it is still open.
	Timers map[uint64]TimerState
	// LastInboxSeq is the inbox sequence of the last signal recorded, in
	// the inbox created at LastInboxEpoch: signals are moved in inbox
	// order, so one of that inbox at or below it is recorded.
	LastInboxSeq   uint64
	LastInboxEpoch int64
	// Signals counts the signals recorded.
	Signals int
}

// TimerState is a workflow timer and where it stands.
type TimerState struct {
	FireAt time.Time
	Open   bool
}

// Compensation step statuses.
const (
	StepScheduled = "scheduled"
	StepCompleted = "completed"
	StepFailed    = "failed"
)

// CompensationStep is one scheduled compensation and where it stands.
type CompensationStep struct {
	Step             string   `json:"step"`
	ActivityType     string   `json:"activity_type"`
	ScheduledEventID uint64   `json:"scheduled_event_id"`
	Status           string   `json:"status"`
	Failure          *Failure `json:"error,omitempty"`
}

// OpenActivity is a scheduled activity without a result yet.
type OpenActivity struct {
	*ActivityTaskScheduledAttrs
	ScheduledAt time.Time
	// Step is set for a compensation step: the step it undoes.
	Step string
}

// IsCompensation reports whether the activity is a compensation step.
func (a OpenActivity) IsCompensation() bool { return a.Step != "" }

// CancelReaches reports whether the saga's cancellation, if requested,
// reaches the activity: one scheduled before the request and not in a
// context the cancellation does not reach (compensations never are).
func (s *State) CancelReaches(scheduledEventID uint64) bool {
	a, open := s.OpenActivities[scheduledEventID]
	return open && s.CancelRequested != nil && !a.Detached && !a.IsCompensation() && scheduledEventID < s.CancelRequestedEventID
}

// Task is the task that runs the activity's given attempt.
func (a OpenActivity) Task(sagaID string, scheduledEventID uint64, attempt int) ActivityTask {
	return ActivityTask{SagaID: sagaID, ScheduledEventID: scheduledEventID, ActivityType: a.ActivityType,
		Input: a.Input, Options: a.Options, ScheduledAt: a.ScheduledAt, Attempt: attempt}
}

// SignalRecorded reports whether the signal at seq of the inbox created at
// epoch is in the history.
func (s *State) SignalRecorded(epoch int64, seq uint64) bool {
	// A history without an epoch was written before epochs were recorded:
	// its sequence is taken as the current inbox's.
	return (s.LastInboxEpoch == epoch || s.LastInboxEpoch == 0) && s.LastInboxSeq >= seq
}

// Exists reports whether the saga has any history.
func (s *State) Exists() bool { return s.LastSeq > 0 }

// Apply folds the next commit into the state. It refuses a commit that
// does not continue the history (ids not following on, no start event
// first), which only a writer outside the engine can produce.
func (s *State) Apply(sc StoredCommit) error {
	c := sc.Commit
	if c.FirstEventID() != s.NextEventID {
		return fmt.Errorf("%w: commit at stream sequence %d starts at event %d, expected %d", ErrCodec, sc.Seq, c.FirstEventID(), s.NextEventID)
	}
	if s.NextEventID == 0 && c.Events[0].Type != WorkflowExecutionStarted {
		return fmt.Errorf("%w: history starts with %s, not %s", ErrCodec, c.Events[0].Type, WorkflowExecutionStarted)
	}
	for _, e := range c.Events {
		s.applyEvent(e)
	}
	s.LastSeq = sc.Seq
	return nil
}

func (s *State) applyEvent(e Event) {
	s.NextEventID = e.ID + 1
	s.UpdatedAt = e.Time
	if s.SagaID == "" {
		s.SagaID = e.SagaID
	}
	if s.Status == StatusBlocked && RoleOf(e.Type) == RoleCommand {
		// The engine decided again: whatever blocked the saga is resolved.
		s.Status, s.Blocked = StatusRunning, nil
	}
	switch a := e.Attrs.(type) {
	case *WorkflowExecutionStartedAttrs:
		s.WorkflowType, s.Version, s.Input, s.RequestID = a.WorkflowType, a.Version, a.Input, a.RequestID
		s.Status, s.StartedAt, s.RunTimeout = StatusRunning, e.Time, a.RunTimeout
		s.OpenActivities = map[uint64]OpenActivity{}
		s.Timers = map[uint64]TimerState{}
	case *WorkflowExecutionCompletedAttrs:
		s.Status, s.Output, s.ClosedAt = StatusCompleted, a.Output, e.Time
	case *WorkflowExecutionFailedAttrs:
		s.Status, s.Failure, s.ClosedAt, s.Compensation = StatusFailed, a.Failure, e.Time, a.Compensation
	case *WorkflowExecutionCanceledAttrs:
		s.Status, s.ClosedAt, s.Compensation = StatusCanceled, e.Time, a.Compensation
	case *WorkflowExecutionTimedOutAttrs:
		s.Status, s.ClosedAt, s.Compensation = StatusTimedOut, e.Time, a.Compensation
	case *WorkflowExecutionCancelRequestedAttrs:
		if s.CancelRequested == nil {
			s.CancelRequested, s.CancelRequestedEventID = a, e.ID
		}
		s.RunTimedOut = s.RunTimedOut || a.Cause == CancelByRunTimeout
	case *WorkflowExecutionBlockedAttrs:
		if !s.Status.Terminal() {
			s.Status, s.Blocked = StatusBlocked, a
		}
	case *WorkflowExecutionUnblockedAttrs:
		if s.Status == StatusBlocked {
			s.Status, s.Blocked = StatusRunning, nil
		}
	case *ActivityTaskScheduledAttrs:
		if !a.Canceled {
			s.OpenActivities[e.ID] = OpenActivity{ActivityTaskScheduledAttrs: a, ScheduledAt: e.Time}
		}
	case *ActivityTaskCompletedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
	case *ActivityTaskFailedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
	case *ActivityTaskTimedOutAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
	case *ActivityTaskCanceledAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
	case *TimerCreatedAttrs:
		s.Timers[e.ID] = TimerState{FireAt: a.FireAt(e.Time), Open: true}
	case *TimerFiredAttrs:
		s.closeTimer(a.StartedEventID)
	case *TimerCanceledAttrs:
		s.closeTimer(a.StartedEventID)
	case *SignalReceivedAttrs:
		if a.InboxEpoch != s.LastInboxEpoch && s.LastInboxEpoch != 0 {
			s.LastInboxEpoch, s.LastInboxSeq = a.InboxEpoch, a.InboxSeq // a new inbox numbers anew
		} else {
			s.LastInboxEpoch, s.LastInboxSeq = a.InboxEpoch, max(s.LastInboxSeq, a.InboxSeq)
		}
		s.Signals++
	case *CompensationStepScheduledAttrs:
		s.OpenActivities[e.ID] = OpenActivity{ActivityTaskScheduledAttrs: a.Activity(), ScheduledAt: e.Time, Step: a.Step}
		s.CompensationSteps = append(s.CompensationSteps, CompensationStep{Step: a.Step, ActivityType: a.ActivityType, ScheduledEventID: e.ID, Status: StepScheduled})
	case *CompensationStepCompletedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
		s.compensationStep(a.ScheduledEventID, StepCompleted, nil)
	case *CompensationStepFailedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
		s.compensationStep(a.ScheduledEventID, StepFailed, a.Failure)
	}
}

func (s *State) closeTimer(id uint64) {
	if t, ok := s.Timers[id]; ok {
		t.Open = false
		s.Timers[id] = t
	}
}

func (s *State) compensationStep(scheduledEventID uint64, status string, failure *Failure) {
	for i := range s.CompensationSteps {
		if c := &s.CompensationSteps[i]; c.ScheduledEventID == scheduledEventID && c.Status == StepScheduled {
			c.Status, c.Failure = status, failure
		}
	}
}

// Fold folds a whole history into a new State.
func Fold(commits []StoredCommit) (*State, error) {
	s := &State{}
	for _, sc := range commits {
		if err := s.Apply(sc); err != nil {
			return s, err
		}
	}
	return s, nil
}
