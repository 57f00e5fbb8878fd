package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

// pgFlag registers --pg-url, defaulting to SAGA_PG_URL.
func pgFlag(fs *flag.FlagSet, env Env) *string {
	return fs.String("pg-url", env.Getenv("SAGA_PG_URL"), "PostgreSQL URL of the projection (env SAGA_PG_URL); empty: none")
}

// openProjection opens the projection, or says clearly that none is set.
func openProjection(ctx context.Context, url, command string) (*pgarchive.Store, error) {
	if url == "" {
		return nil, fmt.Errorf("%s needs the Postgres projection: %w", command, pgarchive.ErrNotConfigured)
	}
	return pgarchive.Open(ctx, url)
}

// runMigrate applies the projection's schema migrations.
func runMigrate(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("migrate", env)
	url := pgFlag(fs, env)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	st, err := openProjection(ctx, *url, "migrate")
	if err != nil {
		return err
	}
	defer st.Close()
	v, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "projection schema at version %d\n", v)
	return nil
}

// runList lists sagas from the projection, newest first.
func runList(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("list", env)
	url := pgFlag(fs, env)
	status := fs.String("status", "", "only sagas with this status (running, completed, failed, canceled, timed_out, blocked)")
	typ := fs.String("type", "", "only sagas of this workflow type")
	since := fs.Duration("since", 0, "only sagas started within this long (e.g. 24h)")
	comp := fs.String("compensation", "", "only sagas whose compensation is running, completed, failed or skipped")
	timers := fs.Bool("waiting-on-timer", false, "only running sagas with an open timer")
	limit := fs.Int("limit", 100, "sagas per page (at most 1000)")
	after := fs.String("after", "", "the cursor a previous page printed, for the next page")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	switch stream.Status(*status) {
	case "", stream.StatusRunning, stream.StatusCompleted, stream.StatusFailed, stream.StatusCanceled, stream.StatusTimedOut, stream.StatusBlocked:
	default:
		return fmt.Errorf("%w: --status %q is not a saga status", errUsage, *status)
	}
	switch *comp {
	case "", "running", stream.CompensationCompleted, stream.CompensationFailed, stream.CompensationSkipped:
	default:
		return fmt.Errorf("%w: --compensation %q is not running, completed, failed or skipped", errUsage, *comp)
	}
	if *limit < 1 || *limit > 1000 {
		return fmt.Errorf("%w: --limit must be 1 to 1000", errUsage)
	}
	st, err := openProjection(ctx, *url, "list")
	if err != nil {
		return err
	}
	defer st.Close()
	f := pgarchive.Filter{Status: stream.Status(*status), Type: *typ, Compensation: *comp, WaitingOnTimer: *timers, Limit: *limit, After: *after}
	if *since > 0 {
		f.Since = time.Now().Add(-*since)
	}
	rows, next, err := st.List(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(env.Stdout, struct {
			Sagas []pgarchive.Row `json:"sagas"`
			Next  string          `json:"next,omitempty"`
		}{rows, next})
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tSTATUS\tCOMPENSATION\tSTARTED\tEVENTS")
	for _, r := range rows {
		comp := ""
		if r.Compensation != nil {
			comp = *r.Compensation
		}
		fmt.Fprintf(tw, "%s\t%s v%d\t%s\t%s\t%s\t%d\n", r.SagaID, r.WorkflowType, r.Version, r.Status, comp,
			r.StartedAt.UTC().Format(time.RFC3339), r.Events)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if next != "" {
		fmt.Fprintf(env.Stdout, "more: --after %s\n", next)
	}
	return nil
}

// fromProjection reads what the streams no longer hold from the
// projection, when there is one.
func fromProjection[T any](ctx context.Context, url string, fromStream T, streamErr error, read func(*pgarchive.Store) (T, error)) (T, error) {
	var zero T
	if url == "" || !isNotFound(streamErr) {
		return fromStream, streamErr
	}
	st, err := pgarchive.Open(ctx, url)
	if err != nil {
		return zero, errors.Join(streamErr, err)
	}
	defer st.Close()
	v, err := read(st)
	if errors.Is(err, pgarchive.ErrNotFound) {
		return zero, streamErr
	}
	return v, err
}

func isNotFound(err error) bool { return errors.Is(err, stream.ErrNotFound) }

// archiveReplaySource reads the histories replay-check checks from the
// projection: those the streams still hold and those they do not.
type archiveReplaySource struct{ st *pgarchive.Store }

func (a archiveReplaySource) SagaIDs(ctx context.Context, f replaycheck.Filter) ([]string, error) {
	ids, err := a.st.IDs(ctx, pgarchive.Filter{Type: f.Type, Since: f.Since})
	if err != nil {
		return nil, err
	}
	if f.Limit > 0 && len(ids) > f.Limit {
		ids = ids[:f.Limit]
	}
	return ids, nil
}

func (a archiveReplaySource) Events(ctx context.Context, id string) ([]stream.Event, error) {
	return a.st.Events(ctx, id)
}

func init() {
	openArchive = func(ctx context.Context, pgURL string) (replaycheck.Source, func(), error) {
		st, err := pgarchive.Open(ctx, pgURL)
		if err != nil {
			return nil, nil, err
		}
		return archiveReplaySource{st}, st.Close, nil
	}
}

// runArchive moves ended sagas older than the retention from the streams
// to the archive, after checking the projection holds each whole.
func runArchive(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("archive", env)
	var conn connFlags
	conn.register(fs, env)
	url := pgFlag(fs, env)
	olderThan := fs.Duration("older-than", pgarchive.DefaultRetention, "archive sagas that ended longer ago than this")
	limit := fs.Int("limit", 1000, "archive at most this many sagas")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *olderThan < 0 || *limit < 1 {
		return fmt.Errorf("%w: --older-than must not be negative, --limit must be positive", errUsage)
	}
	pg, err := openProjection(ctx, *url, "archive")
	if err != nil {
		return err
	}
	defer pg.Close()
	nc, err := conn.connect("archive")
	if err != nil {
		return err
	}
	defer nc.Close()
	hist, err := stream.Open(nc, stream.Config{Prefix: conn.prefix})
	if err != nil {
		return err
	}
	defer hist.Close()
	res, err := pg.Archive(ctx, hist, time.Now().Add(-*olderThan), *limit)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "archived %d sagas", len(res.Archived))
	if len(res.Skipped) > 0 {
		fmt.Fprintf(env.Stdout, "; %d not yet:", len(res.Skipped))
		for id, why := range res.Skipped {
			fmt.Fprintf(env.Stdout, "\n  %s: %s", id, why)
		}
	}
	fmt.Fprintln(env.Stdout)
	return nil
}
