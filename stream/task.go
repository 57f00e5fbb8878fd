package stream

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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
}

// TaskFor derives the task of a scheduled activity.
func TaskFor(e Event) (ActivityTask, bool) {
	a, ok := e.Attrs.(*ActivityTaskScheduledAttrs)
	if !ok {
		return ActivityTask{}, false
	}
	return ActivityTask{
		SagaID:           e.SagaID,
		ScheduledEventID: e.ID,
		ActivityType:     a.ActivityType,
		Input:            a.Input,
		Options:          a.Options,
		ScheduledAt:      e.Time,
	}, true
}

// PublishTask puts an activity task on the task stream. Its Nats-Msg-Id
// names the scheduled event, which never changes once committed, so
// publishing the same task again within the duplicate window is a no-op.
func (s *Store) PublishTask(ctx context.Context, t ActivityTask) error {
	if err := ValidateID("activity type", t.ActivityType); err != nil {
		return err
	}
	data, err := Marshal(&t)
	if err != nil {
		return err
	}
	if limit := s.maxMsgSize(); len(data) > limit {
		return fmt.Errorf("%w: task of %d bytes, the limit is %d", ErrTooLarge, len(data), limit)
	}
	msg := &nats.Msg{Subject: s.cfg.TaskSubject(t.ActivityType), Data: data}
	msgID := t.SagaID + ":act:" + strconv.FormatUint(t.ScheduledEventID, 10)
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(s.cfg.TaskStream())); err != nil {
		return fmt.Errorf("publish task %s: %w", msgID, mapError(err))
	}
	return nil
}

// DecodeTask decodes an untrusted task message.
func (s *Store) DecodeTask(data []byte) (ActivityTask, error) {
	var t ActivityTask
	if len(data) > int(s.cfg.MaxMsgSize) {
		return t, fmt.Errorf("%w: task of %d bytes", ErrTooLarge, len(data))
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
	return t, nil
}
