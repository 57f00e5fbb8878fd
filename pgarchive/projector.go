package pgarchive

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsaga/saga/stream"
)

// Apply projects a batch of history commits in one transaction: each
// commit and its events are inserted once (a commit delivered again
// changes nothing), then the row of each saga the batch touches is
// computed again from every commit the projection holds of it. Sagas are
// locked in id order, so that nodes projecting the same saga at once
// (the projector consumer is shared) take turns, and the later one sees
// the earlier one's commits: the row never goes back. A saga whose
// commits arrived with a gap (its earlier commit is still on its way)
// gets the row of the part without the gap; the missing commit completes
// it when it comes.
func (s *Store) Apply(ctx context.Context, commits []stream.StoredCommit) error {
	if len(commits) == 0 {
		return nil
	}
	if err := s.ensureMigrated(ctx); err != nil {
		return err
	}
	bySaga := map[string][]stream.StoredCommit{}
	for _, c := range commits {
		bySaga[c.Commit.SagaID] = append(bySaga[c.Commit.SagaID], c)
	}
	ids := make([]string, 0, len(bySaga))
	for id := range bySaga {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		for _, id := range ids {
			b.Queue("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", id)
		}
		for _, id := range ids {
			for _, sc := range bySaga[id] {
				data := sc.Data // the bytes as stored, so that the archive is the history
				if len(data) == 0 {
					var err error
					if data, err = sc.Commit.Encode(); err != nil {
						return fmt.Errorf("pgarchive: encode commit of %s at %d: %w", id, sc.Seq, err)
					}
				}
				b.Queue(`INSERT INTO saga_commits (saga_id, seq, first_event_id, data) VALUES ($1, $2, $3, $4)
					ON CONFLICT DO NOTHING`, id, int64(sc.Seq), int64(sc.Commit.FirstEventID()), data)
				for _, e := range sc.Commit.Events {
					b.Queue(`INSERT INTO saga_events (saga_id, event_id, seq, type, category, time, attributes)
						VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`,
						id, int64(e.ID), int64(sc.Seq), string(e.Type), string(e.Category), e.Time, jsonAttrs(e.Attrs))
				}
			}
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("pgarchive: insert commits: %w", err)
		}
		return refreshSagas(ctx, tx, ids)
	})
}

// refreshSagas computes the rows of sagas from the commits the projection
// holds: one read for all of them, one batch of upserts. A saga is read
// from the start of the run its row describes (run_seq): a later run
// that started since is among those commits, and the fold goes on to it.
func refreshSagas(ctx context.Context, tx pgx.Tx, ids []string) error {
	rows, err := tx.Query(ctx, `SELECT c.saga_id, c.seq, c.data FROM saga_commits c LEFT JOIN saga_sagas s ON s.saga_id = c.saga_id
		WHERE c.saga_id = ANY($1) AND c.seq >= coalesce(s.run_seq, 0) ORDER BY c.saga_id, c.first_event_id`, ids)
	if err != nil {
		return fmt.Errorf("pgarchive: read commits: %w", err)
	}
	bySaga := map[string][]stream.StoredCommit{}
	for rows.Next() {
		var id string
		var seq int64
		var data []byte
		if err := rows.Scan(&id, &seq, &data); err != nil {
			rows.Close()
			return fmt.Errorf("pgarchive: read commits: %w", err)
		}
		c, err := stream.DecodeCommit(data)
		if err != nil {
			rows.Close()
			return fmt.Errorf("pgarchive: commit of %s at %d: %w", id, seq, err)
		}
		bySaga[id] = append(bySaga[id], stream.StoredCommit{Seq: uint64(seq), Commit: c})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("pgarchive: read commits: %w", err)
	}
	b := &pgx.Batch{}
	for _, id := range ids {
		st, _ := stream.Fold(bySaga[id]) // a gap: the part before it, for now
		if !st.Exists() {
			continue // the first commit is still on its way
		}
		queueRow(b, id, rowOf(st))
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("pgarchive: project sagas: %w", err)
	}
	return nil
}

// queueRow queues the upsert of a saga's row; a row never goes back to
// fewer events.
func queueRow(b *pgx.Batch, id string, r Row) {
	b.Queue(`INSERT INTO saga_sagas (saga_id, workflow_type, version, status, compensation, started_at, updated_at,
			closed_at, input, output, error, open_timers, next_timer_at, events, last_seq, run, run_seq)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
		ON CONFLICT (saga_id) DO UPDATE SET workflow_type = EXCLUDED.workflow_type, version = EXCLUDED.version,
			status = EXCLUDED.status, compensation = EXCLUDED.compensation, started_at = EXCLUDED.started_at,
			updated_at = EXCLUDED.updated_at, closed_at = EXCLUDED.closed_at, input = EXCLUDED.input,
			output = EXCLUDED.output, error = EXCLUDED.error, open_timers = EXCLUDED.open_timers,
			next_timer_at = EXCLUDED.next_timer_at, events = EXCLUDED.events, last_seq = EXCLUDED.last_seq,
			run = EXCLUDED.run, run_seq = EXCLUDED.run_seq
		WHERE saga_sagas.events <= EXCLUDED.events`,
		id, r.WorkflowType, r.Version, string(r.Status), r.Compensation, r.StartedAt, r.UpdatedAt, r.ClosedAt,
		r.input, r.output, r.errorJSON, r.OpenTimers, r.NextTimerAt, int64(r.Events), int64(r.LastSeq), int64(r.Run), int64(r.runSeq))
}

// readCommits returns a saga's commits as the projection holds them, in
// history order.
func readCommits(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, id string) ([]stream.StoredCommit, error) {
	rows, err := q.Query(ctx, "SELECT seq, data FROM saga_commits WHERE saga_id = $1 ORDER BY first_event_id", id)
	if err != nil {
		return nil, fmt.Errorf("pgarchive: read commits of %s: %w", id, err)
	}
	defer rows.Close()
	var out []stream.StoredCommit
	for rows.Next() {
		var seq int64
		var data []byte
		if err := rows.Scan(&seq, &data); err != nil {
			return nil, fmt.Errorf("pgarchive: read commits of %s: %w", id, err)
		}
		c, err := stream.DecodeCommit(data)
		if err != nil {
			return nil, fmt.Errorf("pgarchive: commit of %s at %d: %w", id, seq, err)
		}
		out = append(out, stream.StoredCommit{Seq: uint64(seq), Commit: c, Data: data})
	}
	return out, rows.Err()
}

// Row is a saga as the projection holds it.
type Row struct {
	SagaID       string        `json:"id"`
	WorkflowType string        `json:"type"`
	Version      int           `json:"version"`
	Status       stream.Status `json:"status"`
	// Compensation is running, completed, failed or skipped; empty when
	// nothing was registered to undo.
	Compensation *string    `json:"compensation,omitempty"`
	StartedAt    time.Time  `json:"started_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	ClosedAt     *time.Time `json:"closed_at,omitempty"`
	OpenTimers   int        `json:"open_timers"`
	NextTimerAt  *time.Time `json:"next_timer_at,omitempty"`
	Events       uint64     `json:"events"`
	LastSeq      uint64     `json:"last_seq"`
	// Run is the saga's latest run (continue-as-new), which the row
	// describes: 1 for a saga that never continued.
	Run        uint32     `json:"run"`
	ArchivedAt *time.Time `json:"archived_at,omitempty"`
	// Error is the saga's failure, as JSON.
	Error json.RawMessage `json:"error,omitempty"`

	input, output, errorJSON []byte
	runSeq                   uint64
}

// rowOf is the row of a saga's state.
func rowOf(st *stream.State) Row {
	r := Row{SagaID: st.SagaID, WorkflowType: st.WorkflowType, Version: st.Version, Status: st.Status,
		StartedAt: st.StartedAt, UpdatedAt: st.UpdatedAt, Events: st.NextEventID, LastSeq: st.LastSeq, Run: max(st.Run, 1), runSeq: st.RunStartSeq}
	if !st.ClosedAt.IsZero() {
		t := st.ClosedAt
		r.ClosedAt = &t
	}
	if c := compensationStatus(st); c != "" {
		r.Compensation = &c
	}
	for _, t := range st.Timers {
		if t.Open {
			r.OpenTimers++
			if r.NextTimerAt == nil || t.FireAt.Before(*r.NextTimerAt) {
				at := t.FireAt
				r.NextTimerAt = &at
			}
		}
	}
	r.input, r.output = payloadJSON(st.Input), payloadJSON(st.Output)
	if st.Failure != nil {
		r.errorJSON = jsonAttrs(st.Failure)
	} else if st.Blocked != nil {
		r.errorJSON = jsonAttrs(st.Blocked)
	}
	return r
}

// compensationStatus is where a saga's compensation stands: running while
// a step is open in a saga that has not ended, then its outcome.
func compensationStatus(st *stream.State) string {
	if st.Compensation != nil {
		return st.Compensation.Status
	}
	for _, c := range st.CompensationSteps {
		if c.Status == stream.StepScheduled && !st.Status.Terminal() {
			return "running"
		}
	}
	if len(st.CompensationSteps) > 0 {
		for _, c := range st.CompensationSteps {
			if c.Status == stream.StepFailed {
				return stream.CompensationFailed
			}
		}
		return stream.CompensationCompleted
	}
	return ""
}

// payloadJSON is a payload as jsonb, or nil when empty.
func payloadJSON(p stream.Payload) []byte {
	if len(p) == 0 {
		return nil
	}
	return jsonAttrs(p)
}

// jsonAttrs renders v as JSON Postgres takes: jsonb refuses the NUL
// character, which JSON strings may hold, so it becomes U+FFFD; what does
// not render is kept as the error that says so.
func jsonAttrs(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"unrenderable": err.Error()})
	}
	if strings.Contains(string(b), `\u0000`) {
		b = []byte(strings.ReplaceAll(string(b), `\u0000`, `\ufffd`))
	}
	return b
}
