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
	// Details are the latest heartbeat details of any attempt, recorded at
	// HeartbeatAt: the next attempt gets them.
	Details     stream.Payload `msgpack:"details,omitempty"`
	HeartbeatAt time.Time      `msgpack:"heartbeat_at,omitempty"`
	// Ended is the last attempt known to have ended (it returned, and its
	// outcome is being recorded or its retry waits), so that a heartbeat
	// timeout does not take its silence for a dead node.
	Ended int `msgpack:"ended,omitempty"`
	// GivenUp is the last attempt a heartbeat timeout gave up for dead:
	// its task is replaced by the next attempt's, and it starts nothing
	// more.
	GivenUp int `msgpack:"given_up,omitempty"`
	// CommitSeq is set when the attempt ran eagerly, on the delivery of
	// the history commit at this sequence that scheduled the activity:
	// while the dispatcher holds that commit, the commit owns the
	// activity.
	CommitSeq uint64 `msgpack:"commit_seq,omitempty"`
	// RetryAt is set when the next attempt waits on a retry timer due
	// then: the timer queues its task, and nothing else does meanwhile.
	RetryAt time.Time `msgpack:"retry_at,omitempty"`

	// written is when the server stored the record (not encoded): the
	// heartbeat timeout compares it with the server's time of firing, so
	// that no node's clock decides that another node is dead.
	written time.Time
}

// errAttemptGone: the attempt a heartbeat is for no longer runs as far as
// the record says (a later attempt started, or a timeout claimed it).
var errAttemptGone = errors.New("attempt no longer current")

// update applies change to the activity's record, read afresh, until it
// lands; change returns false to leave the record alone.
func (a *attemptStore) update(ctx context.Context, sagaID string, scheduledEventID uint64, change func(rec *attemptRecord, found bool) (bool, error)) error {
	for range 5 {
		rec, rev, found, err := a.get(ctx, sagaID, scheduledEventID)
		if err != nil {
			return err
		}
		ok, err := change(&rec, found)
		if err != nil || !ok {
			return err
		}
		err = a.put(ctx, sagaID, scheduledEventID, rec, rev, found)
		if !errors.Is(err, errRecordMoved) {
			return err
		}
	}
	return fmt.Errorf("%s: %w (5 times in a row)", attemptKey(sagaID, scheduledEventID), errRecordMoved)
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
	rec.written = entry.Created()
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
