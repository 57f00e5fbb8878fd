package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// TaskHeaderFunc returns the headers of a task message of a saga (its
// trace context): a new header each call, to which the publication adds
// its own.
type TaskHeaderFunc func(sagaID string) nats.Header

type taskHeaderKey struct{}

// WithTaskHeaders returns a context under which the tasks published carry
// the headers f returns.
func WithTaskHeaders(ctx context.Context, f TaskHeaderFunc) context.Context {
	return context.WithValue(ctx, taskHeaderKey{}, f)
}

func taskHeader(ctx context.Context, sagaID string) nats.Header {
	if f, ok := ctx.Value(taskHeaderKey{}).(TaskHeaderFunc); ok && f != nil {
		return f(sagaID)
	}
	return nil
}

// ActivityTask asks a node to run one scheduled activity. It is derived
// from an ActivityTaskScheduled event and carries everything needed to run
// the activity without reading the history.
type ActivityTask struct {
	SagaID           string          `msgpack:"saga_id"`
	ScheduledEventID uint64          `msgpack:"scheduled_event_id"`
	ActivityType     string          `msgpack:"activity_type"`
	Input            Payload         `msgpack:"input"`
	Options          ActivityOptions `msgpack:"options"`
	ScheduledAt      time.Time       `msgpack:"scheduled_at"`
	// Attempt is the attempt this task is for, from 1: a task derived from
	// the history is attempt 1; a retry after a backoff timer carries the
	// next attempt. How many attempts started is recorded by the worker.
	Attempt int `msgpack:"attempt"`
	// Rederived marks a task queued again by an operator's wake rather than
	// derived once from its scheduling event: a node checks the history
	// before running it, since the activity may have closed meanwhile.
	Rederived bool `msgpack:"rederived,omitempty"`
}

// TaskFor derives the first attempt's task of a scheduled activity.
func TaskFor(e Event) (ActivityTask, bool) {
	switch a := e.Attrs.(type) {
	case *ActivityTaskScheduledAttrs:
		return OpenActivity{ActivityTaskScheduledAttrs: a, ScheduledAt: e.Time}.Task(e.SagaID, e.ID, 1), true
	case *CompensationStepScheduledAttrs:
		return OpenActivity{ActivityTaskScheduledAttrs: a.Activity(), ScheduledAt: e.Time, Step: a.Step}.Task(e.SagaID, e.ID, 1), true
	}
	return ActivityTask{}, false
}

// PublishTask puts an activity task on the task stream, unless a task of
// the same activity is queued already (then it does nothing, and queued is
// false; QueuedTask tells which one is there): the
// publication expects its subject, one per activity, to be empty. A task
// is removed only once its outcome is in the history or its retry is
// handed to a timer, so a scheduling commit dispatched again, however
// late, never queues a second task for an activity that still runs. The
// Nats-Msg-Id (saga, scheduled event, attempt) makes a retried publish a
// duplicate within the window.
func (s *Store) PublishTask(ctx context.Context, t ActivityTask) (queued bool, err error) {
	if err := ValidateID("activity type", t.ActivityType); err != nil {
		return false, err
	}
	if t.Attempt < 1 {
		t.Attempt = 1
	}
	data, err := Marshal(&t)
	if err != nil {
		return false, err
	}
	if limit := s.maxMsgSize(); len(data) > limit {
		return false, fmt.Errorf("%w: task of %d bytes, the limit is %d", ErrTooLarge, len(data), limit)
	}
	msg := &nats.Msg{Subject: s.cfg.TaskSubject(t.ActivityType, t.SagaID, t.ScheduledEventID), Data: data, Header: taskHeader(ctx, t.SagaID)}
	msgID := t.SagaID + ":act:" + strconv.FormatUint(t.ScheduledEventID, 10) + ":" + strconv.Itoa(t.Attempt)
	if t.Rederived {
		// A task queued again replaces one that went (deleted, set aside)
		// perhaps within the duplicate window: its own id, so that the
		// window does not swallow it; the expected sequence still keeps it
		// from doubling a task that is there.
		msgID += ":rederived:" + nuid.Next()
	}
	_, err = s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.cfg.TaskStream()),
		jetstream.WithExpectLastSequencePerSubject(0))
	if err = mapError(err); errors.Is(err, ErrConcurrency) {
		return false, nil // queued already
	}
	if err != nil {
		return false, fmt.Errorf("publish task %s: %w", msgID, err)
	}
	return true, nil
}

// QueuedTask returns the task queued for a scheduled activity and its
// stream sequence; found false when none is.
func (s *Store) QueuedTask(ctx context.Context, activityType, sagaID string, scheduledEventID uint64) (t ActivityTask, seq uint64, found bool, err error) {
	// The task stream serves no direct gets: its leader answers.
	tasks, err := s.js.Stream(ctx, s.cfg.TaskStream())
	if err != nil {
		return ActivityTask{}, 0, false, fmt.Errorf("read queued task: %w", mapError(err))
	}
	msg, err := tasks.GetLastMsgForSubject(ctx, s.cfg.TaskSubject(activityType, sagaID, scheduledEventID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ActivityTask{}, 0, false, nil
	}
	if err != nil {
		return ActivityTask{}, 0, false, fmt.Errorf("read queued task: %w", mapError(err))
	}
	t, err = s.DecodeTask(msg.Data)
	return t, msg.Sequence, err == nil, err
}

// TaskDelivered reports whether the task at seq was delivered to a node:
// its type's consumer delivers in stream order, so a task past the last
// delivered sequence has not been. Without the consumer (no node runs
// the type yet), nothing was delivered.
func (s *Store) TaskDelivered(ctx context.Context, activityType string, seq uint64) (bool, error) {
	c, err := s.js.Consumer(ctx, s.cfg.TaskStream(), ActivityTaskConsumer(activityType))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read consumer of %s: %w", activityType, mapError(err))
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("read consumer of %s: %w", activityType, mapError(err))
	}
	return info.Delivered.Stream >= seq, nil
}

// RemoveTask deletes a queued task that nothing should run (a leftover for
// an attempt another task started), so that the right one can be queued.
func (s *Store) RemoveTask(ctx context.Context, seq uint64) error {
	tasks, err := s.js.Stream(ctx, s.cfg.TaskStream())
	if err != nil {
		return fmt.Errorf("remove task at %d: %w", seq, mapError(err))
	}
	if err := tasks.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("remove task at %d: %w", seq, mapError(err))
	}
	return nil
}

// WorkflowTask asks a node that runs the saga's workflow type to decide on
// new events. It carries the commit that needs the decision, so that a
// node whose cache is current (or that meets the saga for the first time,
// at its start) decides without reading the history.
type WorkflowTask struct {
	SagaID       string `msgpack:"saga_id"`
	WorkflowType string `msgpack:"workflow_type"`
	// Seq is the commit's stream sequence.
	Seq    uint64 `msgpack:"seq"`
	Commit []byte `msgpack:"commit"`
	// Wake asks the node to forget what it cached and replay the history
	// (an operator's wake, passed on by a node without the workflow).
	Wake bool `msgpack:"wake,omitempty"`
}

// PublishWakeTask asks a node that runs workflowType to wake the saga.
func (s *Store) PublishWakeTask(ctx context.Context, sagaID, workflowType string) error {
	data, err := Marshal(&WorkflowTask{SagaID: sagaID, WorkflowType: workflowType, Wake: true})
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: s.cfg.WorkflowTaskSubject(workflowType), Data: data, Header: taskHeader(ctx, sagaID)}
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(s.cfg.TaskStream())); err != nil {
		return fmt.Errorf("publish wake task for %s: %w", sagaID, mapError(err))
	}
	return nil
}

// PublishWorkflowTask puts a workflow task for the commit at seq on the
// task stream, de-duplicated by saga and sequence.
func (s *Store) PublishWorkflowTask(ctx context.Context, c *Commit, seq uint64, encoded []byte) error {
	t := WorkflowTask{SagaID: c.SagaID, WorkflowType: c.WorkflowType, Seq: seq, Commit: encoded}
	data, err := Marshal(&t)
	if err != nil {
		return err
	}
	if limit := s.maxMsgSize(); len(data) > limit {
		// The commit fits a message; with the envelope it may not. The
		// node then reads the commit from the history instead.
		t.Commit = nil
		if data, err = Marshal(&t); err != nil {
			return err
		}
	}
	msg := &nats.Msg{Subject: s.cfg.WorkflowTaskSubject(c.WorkflowType), Data: data, Header: taskHeader(ctx, c.SagaID)}
	msgID := c.SagaID + ":wt:" + strconv.FormatUint(seq, 10)
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.cfg.TaskStream())); err != nil {
		return fmt.Errorf("publish workflow task %s: %w", msgID, mapError(err))
	}
	return nil
}

// DecodeWorkflowTask decodes an untrusted workflow task and the commit it
// carries (nil when it carries none).
func (s *Store) DecodeWorkflowTask(data []byte) (WorkflowTask, *Commit, error) {
	var t WorkflowTask
	if len(data) > int(s.cfg.MaxMsgSize) {
		return t, nil, fmt.Errorf("%w: workflow task of %d bytes, this node's limit is %d", ErrUnsupported, len(data), s.cfg.MaxMsgSize)
	}
	if err := Unmarshal(data, &t); err != nil {
		return t, nil, err
	}
	if err := ValidateID("saga id", t.SagaID); err != nil {
		return t, nil, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	if err := ValidateID("workflow type", t.WorkflowType); err != nil {
		return t, nil, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	if len(t.Commit) == 0 {
		return t, nil, nil
	}
	c, err := decodeFor(t.SagaID, t.Commit)
	if err != nil {
		return t, nil, err
	}
	return t, c, nil
}

// DecodeTask decodes an untrusted task message.
func (s *Store) DecodeTask(data []byte) (ActivityTask, error) {
	var t ActivityTask
	if len(data) > int(s.cfg.MaxMsgSize) {
		return t, fmt.Errorf("%w: task of %d bytes, this node's limit is %d", ErrUnsupported, len(data), s.cfg.MaxMsgSize)
	}
	if err := Unmarshal(data, &t); err != nil {
		return t, err
	}
	if err := ValidateID("saga id", t.SagaID); err != nil {
		return t, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	if err := ValidateID("activity type", t.ActivityType); err != nil {
		return t, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	switch {
	case t.Attempt < 0:
		return t, fmt.Errorf("%w: task attempt %d", ErrCodec, t.Attempt)
	case t.Attempt == 0:
		t.Attempt = 1 // written before tasks carried their attempt
	}
	return t, nil
}
