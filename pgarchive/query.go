package pgarchive

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jetsaga/saga/stream"
)

// Filter selects sagas for List. Zero fields select everything.
type Filter struct {
	Status stream.Status
	Type   string
	// Since keeps sagas started at or after it; Until, before it.
	Since time.Time
	Until time.Time
	// IDPrefix keeps sagas whose id starts with it.
	IDPrefix string
	// Compensation keeps sagas whose compensation is in that state
	// (running, completed, failed, skipped).
	Compensation string
	// WaitingOnTimer keeps running sagas with an open timer.
	WaitingOnTimer bool
	// Limit bounds the page: default 100, at most 1,000.
	Limit int
	// After is the cursor of the previous page's last row.
	After string
}

// maxPage bounds one page of List.
const maxPage = 1000

// ErrBadCursor: a cursor List did not make.
var ErrBadCursor = errors.New("pgarchive: invalid cursor")

// ErrBadFilter: a filter value no saga can have.
var ErrBadFilter = errors.New("pgarchive: invalid filter")

func (f Filter) validate() error {
	switch f.Status {
	case "", stream.StatusRunning, stream.StatusCompleted, stream.StatusFailed, stream.StatusCanceled, stream.StatusTimedOut, stream.StatusBlocked:
	default:
		return fmt.Errorf("%w: status %q", ErrBadFilter, f.Status)
	}
	switch f.Compensation {
	case "", "running", stream.CompensationCompleted, stream.CompensationFailed, stream.CompensationSkipped:
	default:
		return fmt.Errorf("%w: compensation %q is not running, completed, failed or skipped", ErrBadFilter, f.Compensation)
	}
	if f.Limit < 0 || f.Limit > maxPage {
		return fmt.Errorf("%w: limit %d is not 0 to %d", ErrBadFilter, f.Limit, maxPage)
	}
	if f.Type != "" {
		if err := stream.ValidateID("workflow type", f.Type); err != nil {
			return fmt.Errorf("%w: %w", ErrBadFilter, err)
		}
	}
	return nil
}

// List returns sagas newest first (by start time, then id), a page at a
// time: next is the cursor of the next page, empty after the last. Pages
// are found by keyset (no OFFSET), on indexes that fit each filter.
func (s *Store) List(ctx context.Context, f Filter) (rows []Row, next string, err error) {
	if err := f.validate(); err != nil {
		return nil, "", err
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, maxPage)
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Status != "" {
		where = append(where, "status = "+arg(string(f.Status)))
	}
	where = f.where(where, arg)
	if f.After != "" {
		at, id, err := decodeCursor(f.After)
		if err != nil {
			return nil, "", err
		}
		where = append(where, fmt.Sprintf("(started_at, saga_id) < (%s, %s)", arg(at), arg(id)))
	}
	q := "SELECT " + rowColumns + " FROM saga_sagas"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY started_at DESC, saga_id DESC LIMIT " + arg(limit+1)
	pgRows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("pgarchive: list: %w", err)
	}
	rows, err = pgx.CollectRows(pgRows, scanRow)
	if err != nil {
		return nil, "", fmt.Errorf("pgarchive: list: %w", err)
	}
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next = encodeCursor(last.StartedAt, last.SagaID)
	}
	return rows, next, nil
}

// where adds the conditions of every field but Status and After.
func (f Filter) where(where []string, arg func(any) string) []string {
	if f.Type != "" {
		where = append(where, "workflow_type = "+arg(f.Type))
	}
	if !f.Since.IsZero() {
		where = append(where, "started_at >= "+arg(f.Since))
	}
	if !f.Until.IsZero() {
		where = append(where, "started_at < "+arg(f.Until))
	}
	if f.IDPrefix != "" {
		where = append(where, "starts_with(saga_id, "+arg(f.IDPrefix)+")")
	}
	if f.Compensation != "" {
		where = append(where, "compensation = "+arg(f.Compensation))
	}
	if f.WaitingOnTimer {
		where = append(where, "open_timers > 0", "status = 'running'")
	}
	return where
}

// CountByStatus counts the sagas the filter selects, ignoring its Status,
// Limit and After, per status: the counts a list shows beside its page.
func (s *Store) CountByStatus(ctx context.Context, f Filter) (map[stream.Status]int, error) {
	f.Status = ""
	if err := f.validate(); err != nil {
		return nil, err
	}
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	where := f.where(nil, arg)
	q := "SELECT status, count(*) FROM saga_sagas"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " GROUP BY status"
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("pgarchive: count: %w", err)
	}
	counts := map[stream.Status]int{}
	var status string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		counts[stream.Status(status)] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgarchive: count: %w", err)
	}
	return counts, nil
}

const rowColumns = `saga_id, workflow_type, version, status, compensation, started_at, updated_at, closed_at,
	open_timers, next_timer_at, events, last_seq, archived_at, error, run`

func scanRow(row pgx.CollectableRow) (Row, error) {
	var r Row
	var status string
	var events, lastSeq int64
	var run int32
	var errJSON []byte
	err := row.Scan(&r.SagaID, &r.WorkflowType, &r.Version, &status, &r.Compensation, &r.StartedAt, &r.UpdatedAt,
		&r.ClosedAt, &r.OpenTimers, &r.NextTimerAt, &events, &lastSeq, &r.ArchivedAt, &errJSON, &run)
	r.Status, r.Events, r.LastSeq, r.Run = stream.Status(status), uint64(events), uint64(lastSeq), uint32(run)
	if len(errJSON) > 0 {
		r.Error = json.RawMessage(errJSON)
	}
	return r, err
}

func encodeCursor(at time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(at.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("%w: %v", ErrBadCursor, err)
	}
	at, id, ok := strings.Cut(string(raw), "|")
	t, err := time.Parse(time.RFC3339Nano, at)
	if !ok || err != nil {
		return time.Time{}, "", fmt.Errorf("%w: %q", ErrBadCursor, c)
	}
	return t, id, nil
}

// Saga returns a saga's row.
func (s *Store) Saga(ctx context.Context, id string) (Row, error) {
	rows, err := s.pool.Query(ctx, "SELECT "+rowColumns+" FROM saga_sagas WHERE saga_id = $1", id)
	if err != nil {
		return Row{}, fmt.Errorf("pgarchive: read %s: %w", id, err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanRow)
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return Row{}, fmt.Errorf("pgarchive: read %s: %w", id, err)
	}
	return r, nil
}

// Commits returns a saga's history as the projection holds it: the
// commits as they were appended, in order. ErrNotFound when it holds
// none.
func (s *Store) Commits(ctx context.Context, id string) ([]stream.StoredCommit, error) {
	commits, err := readCommits(ctx, s.pool, id)
	if err != nil {
		return nil, err
	}
	if len(commits) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return commits, nil
}

// History returns a saga's events as the projection holds them.
func (s *Store) History(ctx context.Context, id string) ([]stream.Event, error) {
	commits, err := s.Commits(ctx, id)
	if err != nil {
		return nil, err
	}
	var events []stream.Event
	for _, c := range commits {
		events = append(events, c.Commit.Events...)
	}
	return events, nil
}

// State folds a saga's history as the projection holds it.
func (s *Store) State(ctx context.Context, id string) (*stream.State, error) {
	commits, err := s.Commits(ctx, id)
	if err != nil {
		return nil, err
	}
	return stream.Fold(commits)
}
