package pgarchive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jetsaga/saga/stream"
)

// DefaultRetention is how long an ended saga stays in the streams before
// it is archived.
const DefaultRetention = 7 * 24 * time.Hour

// ArchiveResult says what one Archive did.
type ArchiveResult struct {
	Archived []string
	// Skipped are sagas not archived, with why: their projection is not
	// complete yet (it catches up, and the next run archives them), or a
	// read failed.
	Skipped map[string]string
}

// Archive moves ended sagas closed before olderThan, at most limit, from
// the streams to the archive. For each, the projection's commits are
// first checked against the history in the stream, commit by commit
// (same count, same sequences, same content, the last one ending the
// saga); only then is the subject replaced by an archive marker
// (stream.Store.Archive) and the row marked archived. The saga is then
// read, described, listed and replayed from here; its id is never started
// again, since the marker keeps its subject from being empty.
func (s *Store) Archive(ctx context.Context, hist *stream.Store, olderThan time.Time, limit int) (ArchiveResult, error) {
	res := ArchiveResult{Skipped: map[string]string{}}
	if err := s.ensureMigrated(ctx); err != nil {
		return res, err
	}
	// Keyset over the candidates, oldest first, so that sagas skipped
	// (their projection behind) do not hide the ones after them.
	var afterClosed time.Time
	var afterID string
	for scanned := 0; len(res.Archived) < limit && scanned < 10*limit; {
		rows, err := s.pool.Query(ctx, `SELECT saga_id, closed_at FROM saga_sagas
			WHERE closed_at IS NOT NULL AND archived_at IS NULL AND closed_at < $1 AND (closed_at, saga_id) > ($2, $3)
			ORDER BY closed_at, saga_id LIMIT $4`, olderThan, afterClosed, afterID, limit)
		if err != nil {
			return res, fmt.Errorf("pgarchive: archive candidates: %w", err)
		}
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id, &afterClosed); err != nil {
				rows.Close()
				return res, err
			}
			ids = append(ids, id)
			afterID = id
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return res, err
		}
		if len(ids) == 0 {
			break
		}
		scanned += len(ids)
		for _, id := range ids {
			reason, err := s.archiveOne(ctx, hist, id)
			switch {
			case err != nil:
				return res, err
			case reason != "":
				res.Skipped[id] = reason
			default:
				res.Archived = append(res.Archived, id)
			}
			if len(res.Archived) == limit {
				break
			}
		}
	}
	return res, nil
}

// archiveOne archives one saga, or says why not.
func (s *Store) archiveOne(ctx context.Context, hist *stream.Store, id string) (skipped string, err error) {
	streamCommits, err := hist.ReadLatest(ctx, id)
	if errors.Is(err, stream.ErrArchived) {
		// Archived by an earlier run that stopped before marking the row.
		return "", s.markArchived(ctx, id)
	}
	if err != nil {
		return "read the stream: " + err.Error(), nil
	}
	if len(streamCommits) == 0 {
		return "the stream holds no history", nil
	}
	last := streamCommits[len(streamCommits)-1].Commit
	if !stream.IsTerminal(last.Events[len(last.Events)-1].Type) {
		return "the saga has not ended", nil
	}
	ours, err := s.Commits(ctx, id)
	if err != nil {
		return "read the projection: " + err.Error(), nil
	}
	if len(ours) != len(streamCommits) {
		return fmt.Sprintf("the projection holds %d commits, the stream %d", len(ours), len(streamCommits)), nil
	}
	for i := range ours {
		if ours[i].Seq != streamCommits[i].Seq || !bytes.Equal(ours[i].Data, streamCommits[i].Data) {
			return fmt.Sprintf("commit %d differs from the stream's", i), nil
		}
	}
	lastSeq := streamCommits[len(streamCommits)-1].Seq
	if done, err := hist.Dispatched(ctx, id, lastSeq); err != nil || !done {
		// Its last commit's effects (a timer to delete, say) first.
		return fmt.Sprintf("the dispatcher has not handled its last commit yet (%v)", err), nil
	}
	if err := hist.Archive(ctx, id, lastSeq, time.Now()); err != nil {
		return "replace by the archive marker: " + err.Error(), nil
	}
	return "", s.markArchived(ctx, id)
}

func (s *Store) markArchived(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, "UPDATE saga_sagas SET archived_at = now() WHERE saga_id = $1 AND archived_at IS NULL", id); err != nil {
		return fmt.Errorf("pgarchive: mark %s archived: %w", id, err)
	}
	return nil
}
