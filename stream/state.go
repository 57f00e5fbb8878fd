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
// writer checks before appending. A saga that continued as new is folded
// to its latest run: every field describes that run, except NextEventID,
// LastSeq and the inbox position, which are the saga's.
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
	// Signals counts the signals the run recorded.
	Signals int

	// Run is the run's number: 1 for the first, one more at each
	// continue-as-new.
	Run uint32
	// RunStartEventID is the id of the run's WorkflowExecutionStarted and
	// RunStartSeq the stream sequence of the commit holding it: a reader
	// of the latest run reads from there.
	RunStartEventID uint64
	RunStartSeq     uint64
	// ContinuedFrom links the run to the one it continues; nil for the
	// first run.
	ContinuedFrom *RunContinuation
	// RunBytes is the size of the run's commits as stored (the commit
	// that starts the run counted whole), for the history limit.
	RunBytes int64
}

// RunEvents is the number of events in the run: what the history limit
// bounds.
func (s *State) RunEvents() uint64 { return s.NextEventID - s.RunStartEventID }

// NewCommit returns a commit of events that continues the history the
// state folds, with the run position every reader of the last commit
// relies on: the state's run, or the run the events start.
func (s *State) NewCommit(events []Event, decided bool) *Commit {
	c := &Commit{SagaID: s.SagaID, WorkflowType: s.WorkflowType, Decided: decided, Events: events}
	if s.Run > 1 {
		c.Run = RunPosition{Run: s.Run, StartEventID: s.RunStartEventID, StartSeq: s.RunStartSeq}
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*WorkflowExecutionStartedAttrs); ok && a.Continued != nil {
			c.Run = RunPosition{Run: a.Continued.Run, StartEventID: e.ID}
		}
	}
	return c
}

// InboxAfter is the inbox position (see LastInboxSeq) once events, which
// continue the history, are recorded.
func (s *State) InboxAfter(events []Event) (seq uint64, epoch int64) {
	seq, epoch = s.LastInboxSeq, s.LastInboxEpoch
	for _, e := range events {
		if a, ok := e.Attrs.(*SignalReceivedAttrs); ok {
			seq, epoch = nextInboxPosition(seq, epoch, a)
		}
	}
	return seq, epoch
}

// nextInboxPosition is the inbox position after the signal a.
func nextInboxPosition(seq uint64, epoch int64, a *SignalReceivedAttrs) (uint64, int64) {
	if a.InboxEpoch != epoch && epoch != 0 {
		return a.InboxSeq, a.InboxEpoch // a new inbox numbers anew
	}
	return max(seq, a.InboxSeq), a.InboxEpoch
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
	// ScheduledSeq is the stream sequence of the commit that scheduled
	// it: while the dispatcher holds that commit, its first attempt may
	// be running on it (eager activities).
	ScheduledSeq uint64
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
//
// A new State may also begin with the commit that starts a later run (a
// read of the latest run, see Store.ReadRun): the events of the run
// before, which that commit ends, are then skipped.
func (s *State) Apply(sc StoredCommit) error {
	c := sc.Commit
	events := c.Events
	if s.LastSeq == 0 && s.NextEventID == 0 && c.FirstEventID() > 0 {
		i := c.StartsRun()
		if i < 0 {
			return fmt.Errorf("%w: history read from stream sequence %d, event %d, where no run starts", ErrCodec, sc.Seq, c.FirstEventID())
		}
		events = events[i:]
		s.NextEventID = events[0].ID
	}
	if events[0].ID != s.NextEventID {
		return fmt.Errorf("%w: commit at stream sequence %d starts at event %d, expected %d", ErrCodec, sc.Seq, c.FirstEventID(), s.NextEventID)
	}
	if s.NextEventID == 0 && events[0].Type != WorkflowExecutionStarted {
		return fmt.Errorf("%w: history starts with %s, not %s", ErrCodec, events[0].Type, WorkflowExecutionStarted)
	}
	for _, e := range events {
		s.applyEvent(e, sc.Seq)
	}
	s.LastSeq = sc.Seq
	s.RunBytes += int64(c.EncodedSize())
	return nil
}

func (s *State) applyEvent(e Event, seq uint64) {
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
		s.startRun(e, a, seq)
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
			s.OpenActivities[e.ID] = OpenActivity{ActivityTaskScheduledAttrs: a, ScheduledAt: e.Time, ScheduledSeq: seq}
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
		s.LastInboxSeq, s.LastInboxEpoch = nextInboxPosition(s.LastInboxSeq, s.LastInboxEpoch, a)
		s.Signals++
	case *CompensationStepScheduledAttrs:
		s.OpenActivities[e.ID] = OpenActivity{ActivityTaskScheduledAttrs: a.Activity(), ScheduledAt: e.Time, ScheduledSeq: seq, Step: a.Step}
		s.CompensationSteps = append(s.CompensationSteps, CompensationStep{Step: a.Step, ActivityType: a.ActivityType, ScheduledEventID: e.ID, Status: StepScheduled})
	case *CompensationStepCompletedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
		s.compensationStep(a.ScheduledEventID, StepCompleted, nil)
	case *CompensationStepFailedAttrs:
		delete(s.OpenActivities, a.ScheduledEventID)
		s.compensationStep(a.ScheduledEventID, StepFailed, a.Failure)
	}
}

// startRun begins a run: the saga's first, or one that continues the
// run before it, whose state it replaces. What belongs to the saga rather
// than the run (its id, its next event and sequence, its inbox position)
// goes on.
func (s *State) startRun(e Event, a *WorkflowExecutionStartedAttrs, seq uint64) {
	*s = State{
		SagaID: s.SagaID, NextEventID: s.NextEventID, LastSeq: s.LastSeq, LastInboxSeq: s.LastInboxSeq, LastInboxEpoch: s.LastInboxEpoch,
		WorkflowType: a.WorkflowType, Version: a.Version, Input: a.Input, RequestID: a.RequestID,
		Status: StatusRunning, StartedAt: e.Time, UpdatedAt: e.Time, RunTimeout: a.RunTimeout,
		OpenActivities: map[uint64]OpenActivity{}, Timers: map[uint64]TimerState{},
		Run: 1, RunStartEventID: e.ID, RunStartSeq: seq,
	}
	if c := a.Continued; c != nil {
		s.Run, s.ContinuedFrom = c.Run, c
		// Read from the run's start alone, the state knows the inbox
		// position from here; read from the saga's start, it is the same.
		s.LastInboxSeq, s.LastInboxEpoch = c.LastInboxSeq, c.LastInboxEpoch
		if c.CancelRequested != nil {
			s.CancelRequested, s.CancelRequestedEventID = c.CancelRequested, e.ID
		}
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

// LatestRun returns the events of the latest run of a history, from its
// WorkflowExecutionStarted on: all of them for a saga that never
// continued as new, and for a history that holds no start.
func LatestRun(events []Event) []Event {
	for i := len(events) - 1; i >= 0; i-- {
		if events[i].Type == WorkflowExecutionStarted {
			return events[i:]
		}
	}
	return events
}

// RunEventsOf returns the events of the latest run the commits hold (a
// read of the whole history, or of the latest run: see Store.ReadRun).
func RunEventsOf(commits []StoredCommit) []Event {
	var events []Event
	for _, sc := range commits {
		events = append(events, sc.Commit.Events...)
	}
	return LatestRun(events)
}
