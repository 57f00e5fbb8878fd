package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// attemptRecord is what the engine records of an activity's attempts, so
// that attempts are counted as they start, not inferred from deliveries (a
// task given back by a draining node, or redelivered after a NATS outage,
// is a delivery, not an attempt). It lives in the activities bucket under
// <sagaID>.<scheduled event id> while the activity is open.
type attemptRecord struct {
	// Started counts the attempts that started.
	Started int `msgpack:"started"`
	// TaskSeq is the task stream sequence of the message that started the
	// last of them: a redelivery of that message follows it, another
	// message for the same attempt is a stale duplicate.
	TaskSeq uint64    `msgpack:"task_seq"`
	Node    string    `msgpack:"node"`
	At      time.Time `msgpack:"at"`
	// TimedOut is set by the schedule-to-start timeout, which claims the
	// record before recording its outcome: no attempt may start after it.
	TimedOut bool `msgpack:"timed_out,omitempty"`
}

// attemptStore reads and writes attempt records.
//
// Writing a record costs a JetStream write, so not every attempt is
// recorded before it starts: the first delivery of a task for attempt 1,
// when more attempts are allowed and no schedule-to-start timeout applies,
// runs without one (the task message itself says that no attempt started
// before). Every other start is recorded first: redeliveries, retries, the
// last allowed attempt, and an activity a timeout may claim. A delivery
// that gives back a task it did not start records that too. The one
// inference left: a task redelivered after its first delivery ended with
// no trace (the node crashed) counts that delivery as an attempt, so a
// crash may cost an attempt that never ran, never the reverse.
type attemptStore struct {
	js     jetstream.JetStream
	bucket string
	// purgeTTL is how long the marker of a removed record stays.
	purgeTTL time.Duration

	mu sync.Mutex
	kv jetstream.KeyValue // bound on first use: the node creates the bucket when it starts
}

// bound returns the bucket; errBucketMissing when nobody created it yet.
func (a *attemptStore) bound(ctx context.Context) (jetstream.KeyValue, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.kv != nil {
		return a.kv, nil
	}
	kv, err := a.js.KeyValue(ctx, a.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("%w: %s", errBucketMissing, a.bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("bind bucket %s: %w", a.bucket, err)
	}
	a.kv = kv
	return kv, nil
}

// errBucketMissing: the activities bucket does not exist; no node started
// with this prefix yet, so no attempt was ever recorded.
var errBucketMissing = errors.New("activities bucket missing")

func attemptKey(sagaID string, scheduledEventID uint64) string {
	return sagaID + "." + strconv.FormatUint(scheduledEventID, 10)
}

// get returns the activity's record and its revision; found false when it
// has none.
func (a *attemptStore) get(ctx context.Context, sagaID string, scheduledEventID uint64) (rec attemptRecord, rev uint64, found bool, err error) {
	kv, err := a.bound(ctx)
	if errors.Is(err, errBucketMissing) {
		return attemptRecord{}, 0, false, nil
	}
	if err != nil {
		return attemptRecord{}, 0, false, err
	}
	entry, err := kv.Get(ctx, attemptKey(sagaID, scheduledEventID))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
		return attemptRecord{}, 0, false, nil
	case err != nil:
		return attemptRecord{}, 0, false, fmt.Errorf("read attempts of %s: %w", attemptKey(sagaID, scheduledEventID), err)
	}
	if err := stream.Unmarshal(entry.Value(), &rec); err != nil {
		return attemptRecord{}, 0, false, fmt.Errorf("attempts of %s: %w", entry.Key(), err)
	}
	return rec, entry.Revision(), true, nil
}

// errRecordMoved means another writer changed the record since it was read.
var errRecordMoved = errors.New("attempt record changed by another writer")

// put writes the record if it is still at rev (found false: if there is
// none). A record changed meanwhile gives errRecordMoved.
func (a *attemptStore) put(ctx context.Context, sagaID string, scheduledEventID uint64, rec attemptRecord, rev uint64, found bool) error {
	data, err := stream.Marshal(&rec)
	if err != nil {
		return err
	}
	kv, err := a.bound(ctx)
	if err != nil {
		return err
	}
	key := attemptKey(sagaID, scheduledEventID)
	if found {
		_, err = kv.Update(ctx, key, data, rev)
	} else {
		_, err = kv.Create(ctx, key, data)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
		return fmt.Errorf("%s: %w", key, errRecordMoved)
	case err != nil && errors.Is(stream.MapError(err), stream.ErrConcurrency):
		return fmt.Errorf("%s: %w", key, errRecordMoved)
	case err != nil:
		return fmt.Errorf("record attempts of %s: %w", key, err)
	}
	return nil
}

// remove drops the record of an activity that closed. Best effort: a record
// left behind only takes room.
func (a *attemptStore) remove(ctx context.Context, sagaID string, scheduledEventID uint64) {
	if kv, err := a.bound(ctx); err == nil {
		_ = kv.Purge(ctx, attemptKey(sagaID, scheduledEventID), jetstream.PurgeTTL(a.purgeTTL))
	}
}
