package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderArchived marks the message an archived saga leaves on its
// subject: its history moved to the archive (the Postgres projection),
// and the subject keeps this marker alone, so that the saga's id is never
// started again (a start expects an empty subject). Its value is when the
// saga was archived; its body is empty.
const HeaderArchived = "Saga-Archived"

// ErrArchived: the saga's history left the streams for the archive. It
// matches ErrNotFound too: the streams do not hold the saga.
var ErrArchived = &archivedError{}

type archivedError struct{}

func (*archivedError) Error() string {
	return "saga archived: its history is in the archive, not in the streams"
}

func (*archivedError) Is(target error) bool { return target == ErrNotFound }

// IsArchiveMarker reports whether a history message is an archive marker.
func IsArchiveMarker(h nats.Header) bool { return h.Get(HeaderArchived) != "" }

// Archive replaces a saga's history in the streams by an archive marker,
// once the caller has its history elsewhere: the marker is appended after
// the history's last commit (at lastSeq: a saga that moved on since is
// ErrConcurrency), then every message of the subject but the marker is
// purged. The saga's snapshots are purged first: they hold its state
// (inputs and outputs included), which must leave the streams with its
// history; a saga whose snapshots cannot be purged is not archived.
// Archiving a saga archived already completes what is left.
func (s *Store) Archive(ctx context.Context, sagaID string, lastSeq uint64, at time.Time) error {
	if err := ValidateID("saga id", sagaID); err != nil {
		return err
	}
	if err := s.purgeSnapshots(ctx, sagaID); err != nil {
		return fmt.Errorf("archive %s: purge its snapshots: %w", sagaID, err)
	}
	subject := s.cfg.HistorySubject(sagaID)
	streamName := s.cfg.HistoryStream(s.cfg.Shard(sagaID))
	msg := &nats.Msg{Subject: subject, Header: nats.Header{HeaderArchived: {at.UTC().Format(time.RFC3339Nano)}}}
	_, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(streamName), jetstream.WithExpectLastSequencePerSubject(lastSeq),
		jetstream.WithMsgID(sagaID+":archived"))
	if err = mapError(err); errors.Is(err, ErrConcurrency) {
		// Marked by an earlier try? Then finish; else the saga moved on.
		msgs, _, gerr := s.directGet(ctx, streamName, directGetRequest{LastBySubj: subject})
		if gerr != nil || len(msgs) == 0 || !IsArchiveMarker(msgs[0].Header) {
			return fmt.Errorf("archive %s: %w", sagaID, err)
		}
	} else if err != nil {
		return fmt.Errorf("archive %s: %w", sagaID, err)
	}
	st, err := s.js.Stream(ctx, streamName)
	if err != nil {
		return fmt.Errorf("archive %s: %w", sagaID, mapError(err))
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(subject), jetstream.WithPurgeKeep(1)); err != nil {
		return fmt.Errorf("archive %s: purge: %w", sagaID, mapError(err))
	}
	return nil
}

// Dispatched reports whether the dispatcher has handled every commit of
// the saga's history shard up to seq: a history is archived only once
// every effect of its last commit was carried out.
func (s *Store) Dispatched(ctx context.Context, sagaID string, seq uint64) (bool, error) {
	c, err := s.js.Consumer(ctx, s.cfg.HistoryStream(s.cfg.Shard(sagaID)), DispatcherConsumer)
	if err != nil {
		return false, fmt.Errorf("read the dispatcher of %s: %w", sagaID, mapError(err))
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, fmt.Errorf("read the dispatcher of %s: %w", sagaID, mapError(err))
	}
	return info.AckFloor.Stream >= seq, nil
}
