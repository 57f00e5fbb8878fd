package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// Snapshots of sagas' folded state (docs/snapshots.md): the dispatcher
// writes one when a commit reaches a multiple of the node's interval, and
// lookups of sagas the node does not hold start from the latest one.

// snapshotWriteTimeout bounds the writing of one snapshot, which holds up
// the acknowledgement of the commit that led to it.
const snapshotWriteTimeout = 2 * time.Second

// snapshotWritePause is how long a node writes no snapshot after a write
// got no answer in time (a bucket it may not write to, say), rather than
// hold up a commit at every interval.
const snapshotWritePause = time.Minute

// snapshotPutAttempts bounds the writes of a snapshot that keep meeting
// another writer's.
const snapshotPutAttempts = 3

// snapshotHeaderRoom is what a snapshot's headers may take of the
// server's max_payload.
const snapshotHeaderRoom = 4096

// errSnapshotRaced: other writers replaced the saga's snapshot at every
// attempt.
var errSnapshotRaced = errors.New("the saga's snapshot kept changing under this write")

// snapshotAfter writes a snapshot of the saga once the dispatched commit
// reaches a multiple of the node's snapshot interval (the commit spans an
// event id k×interval, k ≥ 1). It is best effort: a snapshot that cannot
// be written is logged and counted, and readers fold more of the history
// until the next one.
func (n *Node) snapshotAfter(ctx context.Context, sagaID string, commit *stream.Commit) {
	interval := n.opts.Snapshots.Interval
	if n.snapshots == nil || !reachesMultiple(commit.FirstEventID(), commit.NextEventID()-1, interval) {
		return
	}
	if time.Now().UnixNano() < n.snapshotWritesPausedUntil.Load() {
		return
	}
	writeCtx, cancel := context.WithTimeout(ctx, snapshotWriteTimeout)
	defer cancel()
	wrote, err := n.writeSnapshot(writeCtx, sagaID, commit.NextEventID()-1)
	switch {
	case err != nil && ctx.Err() != nil:
		// The node is stopping: the redelivered commit writes it.
	case err != nil:
		n.stats.snapshotWriteFailures.Add(1)
		log := n.log.With("saga_id", sagaID, "at_event", commit.NextEventID()-1, "err", err)
		if !errors.Is(err, context.DeadlineExceeded) {
			log.Warn("snapshot not written; readers fold more of the history until the next one")
			return
		}
		n.snapshotWritesPausedUntil.Store(time.Now().Add(snapshotWritePause).UnixNano())
		log.Warn("snapshot write got no answer in time (may this node write the snapshots bucket?); writing none for a while",
			"pause", snapshotWritePause)
	case wrote:
		n.stats.snapshotsWritten.Add(1)
	}
}

// reachesMultiple reports whether events first..last include a positive
// multiple of interval (0: never).
func reachesMultiple(first, last uint64, interval int) bool {
	if interval <= 0 {
		return false
	}
	k := last / uint64(interval)
	return k >= 1 && k*uint64(interval) >= first
}

// writeSnapshot stores the saga's state, as the node's lookup has it (up
// to at least lastEventID), as its latest snapshot. wrote is false when
// the bucket already holds one as recent.
func (n *Node) writeSnapshot(ctx context.Context, sagaID string, lastEventID uint64) (wrote bool, err error) {
	var (
		data   []byte
		seq    uint64
		encErr error
	)
	// Encoded under the saga's lock: the state is the view's own.
	err = n.withState(ctx, sagaID, lastEventID, func(st *stream.State) {
		seq = st.LastSeq
		data, encErr = stream.EncodeSnapshot(st)
	})
	if err != nil {
		return false, fmt.Errorf("fold the state: %w", err)
	}
	if encErr != nil {
		return false, fmt.Errorf("encode: %w", encErr)
	}
	if limit := int(n.nc.MaxPayload()) - snapshotHeaderRoom; len(data) > limit {
		return false, fmt.Errorf("%w: snapshot of %d bytes, the server takes %d", stream.ErrTooLarge, len(data), limit)
	}
	return putSnapshot(ctx, n.snapshots, sagaID, seq, data)
}

// putSnapshot stores data, a snapshot taken at stream sequence seq, as the
// saga's latest, unless the latest is as recent: a snapshot never goes
// back, whatever order writers race in. The write names the revision it
// compared with, so that a writer that raced another looks again.
func putSnapshot(ctx context.Context, kv jetstream.KeyValue, sagaID string, seq uint64, data []byte) (wrote bool, err error) {
	for range snapshotPutAttempts {
		entry, err := kv.Get(ctx, sagaID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			_, err = kv.Create(ctx, sagaID, data)
		case err != nil:
			return false, fmt.Errorf("read the latest: %w", stream.MapError(err))
		default:
			// One that is damaged, or another saga's, is replaced.
			if have, ok := stream.SnapshotSeq(sagaID, entry.Value()); ok && have >= seq {
				return false, nil
			}
			_, err = kv.Update(ctx, sagaID, data, entry.Revision())
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("store: %w", stream.MapError(err))
		}
		return true, nil
	}
	return false, errSnapshotRaced
}

// stateFromSnapshot runs fn on the state of a saga the node does not hold,
// folded from its latest snapshot and the commits after it, read up to at
// least eventID: a lookup that would otherwise read and fold a long
// history whole. The state is not cached (the view keeps every event, for
// replay). done is false when there is no snapshot to start from, or it
// does not continue the history: the caller then reads the history.
func (n *Node) stateFromSnapshot(ctx context.Context, sagaID string, eventID uint64, fn func(*stream.State)) (done bool, err error) {
	opts := stream.LoadOptions{SkipChecksum: n.opts.Snapshots.SkipChecksum, Logger: n.log}
	st, rejected, err := n.store.LatestSnapshot(ctx, sagaID, opts)
	if err != nil {
		st = nil // the bucket did not answer: the history decides
	}
	if st != nil {
		if _, err := n.store.ContinueSnapshot(ctx, st); err != nil {
			// Whatever else went wrong, the history read says it the way
			// the node knows how to take it (archived, unreadable,
			// unavailable).
			if errors.Is(err, stream.ErrSnapshotMismatch) {
				rejected = err
			}
			st = nil
		}
	}
	if rejected != nil {
		n.stats.snapshotsRejected.Add(1)
		stream.LogRejectedSnapshot(n.log, sagaID, rejected)
	}
	if st == nil {
		return false, nil
	}
	if st.NextEventID <= eventID {
		return true, n.confirmBehind(ctx, sagaID, &behindError{have: st.LastSeq})
	}
	n.stats.snapshotLoads.Add(1)
	fn(st)
	return true, nil
}
