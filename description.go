package saga

import (
	"sort"
	"time"

	"github.com/jetsaga/saga/stream"
)

// Status is where a saga stands: running, completed, failed, canceled,
// timed_out or blocked.
type Status = stream.Status

// Saga statuses.
const (
	StatusRunning   = stream.StatusRunning
	StatusCompleted = stream.StatusCompleted
	StatusFailed    = stream.StatusFailed
	StatusCanceled  = stream.StatusCanceled
	StatusTimedOut  = stream.StatusTimedOut
	StatusBlocked   = stream.StatusBlocked
)

// Description is a saga's state as describe shows it.
type Description struct {
	ID      string         `json:"id"`
	Type    string         `json:"type"`
	Version int            `json:"version"`
	Status  Status         `json:"status"`
	Input   stream.Payload `json:"input,omitempty"`
	Output  stream.Payload `json:"output,omitempty"`
	// Error is the saga's failure, or for a blocked saga what blocked it.
	Error     *StructuredError `json:"error,omitempty"`
	Blocked   *BlockedInfo     `json:"blocked,omitempty"`
	StartedAt time.Time        `json:"started_at"`
	UpdatedAt time.Time        `json:"updated_at"`
	ClosedAt  *time.Time       `json:"closed_at,omitempty"`
	// Events counts the saga's events, every run's.
	Events uint64 `json:"events"`
	// Run is the saga's current run: 1, and one more each time its
	// workflow continued as new (ContinueAsNew). The description is the
	// run's: its input, status and dates are the latest run's.
	Run uint32 `json:"run"`
	// RunEvents and RunBytes measure the run's history: what a node reads
	// and replays when it meets the saga anew, and what the fleet's
	// history limits bound.
	RunEvents uint64 `json:"run_events"`
	RunBytes  int64  `json:"run_bytes"`
	// ContinuedFrom links the run to the one it continues; nil for the
	// first run.
	ContinuedFrom     *RunLink          `json:"continued_from,omitempty"`
	PendingActivities []PendingActivity `json:"pending_activities,omitempty"`
	// CancelRequested is the saga's cancellation request, once there is
	// one.
	CancelRequested *CancelRequest `json:"cancel_requested,omitempty"`
	// Compensation says where the saga's compensation stands, once a
	// compensation step was scheduled or the saga ended with an outcome.
	Compensation *CompensationInfo `json:"compensation,omitempty"`
	// Warning points at a reason a running saga may not progress, such as
	// a workflow type that no node has registered.
	Warning string `json:"warning,omitempty"`

	failure *stream.Failure
}

// BlockedInfo says why the engine stopped driving a saga.
type BlockedInfo struct {
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	AtEventID uint64 `json:"at_event_id"`
	Node      string `json:"node,omitempty"`
}

// RunLink locates the run a run continues.
type RunLink struct {
	// Run is the previous run's number.
	Run uint32 `json:"run"`
	// EndEventID is its WorkflowExecutionContinuedAsNew, the event before
	// this run's start; StartEventID its WorkflowExecutionStarted, and
	// StartSeq the stream sequence of the commit holding that.
	EndEventID   uint64 `json:"end_event_id"`
	StartEventID uint64 `json:"start_event_id"`
	StartSeq     uint64 `json:"start_seq"`
}

// PendingActivity is a scheduled activity without a result yet.
type PendingActivity struct {
	ScheduledEventID uint64 `json:"scheduled_event_id"`
	ActivityType     string `json:"activity_type"`
	// CompensationStep is set for a compensation: the step it undoes.
	CompensationStep string `json:"compensation_step,omitempty"`
}

// CancelRequest is a request to cancel the saga, as recorded.
type CancelRequest struct {
	// Cause is "request" (a client asked) or "run_timeout".
	Cause    string `json:"cause"`
	Reason   string `json:"reason,omitempty"`
	Identity string `json:"identity,omitempty"`
	EventID  uint64 `json:"event_id"`
}

// compensationRunning is the status of a compensation whose steps are
// open in a saga that has not ended: no outcome is recorded yet.
const compensationRunning = "running"

// CompensationInfo says where a saga's compensation stands.
type CompensationInfo struct {
	// Status is "running" while steps are open and the saga has not ended,
	// else the outcome: "completed", "failed" or "skipped" (see
	// stream.CompensationOutcome).
	Status string `json:"status"`
	// Steps are the compensation steps scheduled so far, in order.
	Steps []CompensationStepInfo `json:"steps,omitempty"`
	// FailedSteps name the steps whose undo failed for good, and NotRun
	// those registered whose undo never ran.
	FailedSteps []string `json:"failed_steps,omitempty"`
	NotRun      []string `json:"not_run,omitempty"`
	// NeedsOperator is set when the compensation failed: the failed and
	// not run steps are still in effect and must be undone by hand.
	NeedsOperator bool `json:"needs_operator"`
}

// CompensationStepInfo is one scheduled compensation.
type CompensationStepInfo struct {
	// Step names the step it undoes, ActivityType the undo.
	Step             string `json:"step"`
	ActivityType     string `json:"activity_type"`
	ScheduledEventID uint64 `json:"scheduled_event_id"`
	// Status is "scheduled", "completed" or "failed".
	Status string           `json:"status"`
	Error  *StructuredError `json:"error,omitempty"`
}

// DescribeState describes a saga from its folded history, read from
// anywhere (the streams, or an archive).
func DescribeState(st *stream.State) *Description { return newDescription(st) }

func newDescription(st *stream.State) *Description {
	d := &Description{
		ID:        st.SagaID,
		Type:      st.WorkflowType,
		Version:   st.Version,
		Status:    st.Status,
		Input:     st.Input,
		Output:    st.Output,
		StartedAt: st.StartedAt.UTC(),
		UpdatedAt: st.UpdatedAt.UTC(),
		Events:    st.NextEventID,
		Run:       max(st.Run, 1),
		RunEvents: st.RunEvents(),
		RunBytes:  st.RunBytes,
		failure:   st.Failure,
	}
	if c := st.ContinuedFrom; c != nil {
		d.ContinuedFrom = &RunLink{Run: c.Run - 1, EndEventID: c.PreviousEventID, StartEventID: c.PreviousStartEventID, StartSeq: c.PreviousStartSeq}
	}
	if !st.ClosedAt.IsZero() {
		t := st.ClosedAt.UTC()
		d.ClosedAt = &t
	}
	if st.Failure != nil {
		d.Error = structured(st.Failure)
	}
	if b := st.Blocked; b != nil {
		d.Blocked = &BlockedInfo{Reason: b.Reason, Message: b.Message, AtEventID: b.AtEventID, Node: b.Node}
		d.Error = &StructuredError{Kind: KindReplay, Message: b.Message, Context: map[string]string{"reason": b.Reason}}
	}
	for id, a := range st.OpenActivities {
		d.PendingActivities = append(d.PendingActivities, PendingActivity{ScheduledEventID: id, ActivityType: a.ActivityType, CompensationStep: a.Step})
	}
	sort.Slice(d.PendingActivities, func(i, j int) bool {
		return d.PendingActivities[i].ScheduledEventID < d.PendingActivities[j].ScheduledEventID
	})
	if c := st.CancelRequested; c != nil {
		d.CancelRequested = &CancelRequest{Cause: c.Cause, Reason: c.Reason, Identity: c.Identity, EventID: st.CancelRequestedEventID}
	}
	d.Compensation = newCompensationInfo(st)
	return d
}

func newCompensationInfo(st *stream.State) *CompensationInfo {
	if len(st.CompensationSteps) == 0 && st.Compensation == nil {
		return nil
	}
	c := &CompensationInfo{}
	open := false
	for _, s := range st.CompensationSteps {
		c.Steps = append(c.Steps, CompensationStepInfo{Step: s.Step, ActivityType: s.ActivityType, ScheduledEventID: s.ScheduledEventID, Status: s.Status, Error: structured(s.Failure)})
		switch s.Status {
		case stream.StepScheduled:
			open = true
		case stream.StepFailed:
			c.FailedSteps = append(c.FailedSteps, s.Step)
		}
	}
	o := st.Compensation
	switch {
	case open && !st.Status.Terminal():
		c.Status = compensationRunning
	case o != nil:
		c.Status, c.FailedSteps, c.NotRun = o.Status, o.FailedSteps, o.NotRun
	case len(c.FailedSteps) > 0:
		// The workflow ran its compensations (Compensate) and goes on:
		// the outcome is recorded only when the saga ends.
		c.Status = stream.CompensationFailed
	default:
		c.Status = stream.CompensationCompleted
	}
	c.NeedsOperator = c.Status == stream.CompensationFailed
	return c
}
