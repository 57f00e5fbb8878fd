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
	Error             *StructuredError  `json:"error,omitempty"`
	Blocked           *BlockedInfo      `json:"blocked,omitempty"`
	StartedAt         time.Time         `json:"started_at"`
	UpdatedAt         time.Time         `json:"updated_at"`
	ClosedAt          *time.Time        `json:"closed_at,omitempty"`
	Events            uint64            `json:"events"`
	PendingActivities []PendingActivity `json:"pending_activities,omitempty"`
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

// PendingActivity is a scheduled activity without a result yet.
type PendingActivity struct {
	ScheduledEventID uint64 `json:"scheduled_event_id"`
	ActivityType     string `json:"activity_type"`
}

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
		failure:   st.Failure,
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
		d.PendingActivities = append(d.PendingActivities, PendingActivity{ScheduledEventID: id, ActivityType: a.ActivityType})
	}
	sort.Slice(d.PendingActivities, func(i, j int) bool {
		return d.PendingActivities[i].ScheduledEventID < d.PendingActivities[j].ScheduledEventID
	})
	return d
}
