package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

// openArchive opens the archive of histories "replay-check --from
// archive" reads. It is nil in a binary built without Postgres settings;
// the file that wires package pgarchive into the command line sets it.
// The returned function releases the source.
var openArchive func(ctx context.Context, pgURL string) (replaycheck.Source, func(), error)

// runReplayCheck replays recorded histories against the workflow code of
// this binary (env.Registry) and reports every saga it would not
// reproduce. It starts no node and writes nothing, so it can run in CI
// against the production streams before a deploy: it exits 0 when every
// checked saga replays, 1 when some would not (or the check could not
// run).
func runReplayCheck(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("replay-check", env)
	var conn connFlags
	conn.register(fs, env)
	wfType := fs.String("type", "", "check only the sagas of this workflow type")
	since := fs.String("since", "", "check only the sagas started within this duration (24h) or since this RFC 3339 time")
	from := fs.String("from", "stream", `where histories come from: "stream" (the engine's history streams) or "archive"`)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	limit := fs.Int("limit", 0, "check at most N matching sagas (0: all)")
	deadlock := fs.Duration("deadlock-timeout", replaycheck.DefaultDeadlockTimeout, "how long the code of one saga may take to settle after an input")
	shards := fs.Int("history-shards", 1, "number of history streams, as the nodes run with")
	pgURL := fs.String("pg-url", env.Getenv("SAGA_PG_URL"), "Postgres URL of the archive, for --from archive (env SAGA_PG_URL)")
	var keys codecFlags
	keys.register(fs)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	codec, err := keys.codec()
	if err != nil {
		return err
	}
	filter := replaycheck.Filter{Type: *wfType, Limit: *limit}
	switch {
	case *limit < 0:
		return fmt.Errorf("%w: --limit must be 0 (all) or more, got %d", errUsage, *limit)
	case *deadlock <= 0:
		return fmt.Errorf("%w: --deadlock-timeout must be positive, got %s", errUsage, *deadlock)
	case *shards < 1:
		return fmt.Errorf("%w: --history-shards must be at least 1, got %d", errUsage, *shards)
	case *from != "stream" && *from != "archive":
		return fmt.Errorf(`%w: --from must be "stream" or "archive", got %q`, errUsage, *from)
	}
	if *since != "" {
		t, err := parseSince(*since, time.Now())
		if err != nil {
			return err
		}
		filter.Since = t
	}
	if *wfType != "" {
		if err := stream.ValidateID("workflow type", *wfType); err != nil {
			return fmt.Errorf("%w: --type: %w", errUsage, err)
		}
		// Every saga of a type this binary does not have would be skipped:
		// a check that passes by checking nothing is a typo's doing.
		if _, ok := env.Registry.Workflow(*wfType); !ok {
			return fmt.Errorf("%w: --type %s: this binary has no workflow %s (it has: %s)", errUsage, *wfType, *wfType, strings.Join(env.Registry.WorkflowNames(), ", "))
		}
	}

	var src replaycheck.Source
	if *from == "archive" {
		a, closeArchive, err := archiveSource(ctx, *pgURL)
		if err != nil {
			return err
		}
		defer closeArchive()
		src = a
	} else {
		nc, err := conn.connect("replay-check")
		if err != nil {
			return err
		}
		defer nc.Close()
		st, err := stream.Open(nc, stream.Config{Prefix: conn.prefix, HistoryShards: *shards})
		if err != nil {
			return err
		}
		defer st.Close()
		src = replaycheck.NewStreamSource(st)
	}

	rep, err := replaycheck.Check(ctx, src, env.Registry, replaycheck.Options{Filter: filter, DeadlockTimeout: *deadlock, Codec: codec})
	if err != nil {
		return err
	}
	if *asJSON {
		err = writeJSON(env.Stdout, rep)
	} else {
		err = writeReplayReport(env.Stdout, rep)
	}
	if err != nil {
		return err
	}
	return rep.Err()
}

// archiveSource opens the archive, or says why there is none.
func archiveSource(ctx context.Context, pgURL string) (replaycheck.Source, func(), error) {
	switch {
	case openArchive == nil:
		return nil, nil, fmt.Errorf("%w: the binary was built without Postgres settings", replaycheck.ErrNoArchiveSource)
	case pgURL == "":
		return nil, nil, fmt.Errorf("%w: --pg-url not set (nor SAGA_PG_URL)", replaycheck.ErrNoArchiveSource)
	}
	return openArchive(ctx, pgURL)
}

// parseSince reads --since: a duration back from now, or a time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%w: --since must not be negative, got %s", errUsage, s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: --since takes a duration (24h) or an RFC 3339 time, got %q", errUsage, s)
	}
	return t, nil
}

// writeReplayReport prints the summary, then one line per saga that
// would not replay.
func writeReplayReport(w io.Writer, r *replaycheck.Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "checked %s%s: ", plural(r.Checked, "saga"), ofTypes(r.Types))
	switch {
	case r.Checked == 0:
		b.WriteString("nothing to replay\n")
	case r.NotReplayable() == 0:
		b.WriteString("all replay\n")
	case r.NewerCode == 0:
		fmt.Fprintf(&b, "%d would not replay\n", r.NotReplayable())
	default:
		fmt.Fprintf(&b, "%d would not replay (%d failed, %d written by newer code)\n", r.NotReplayable(), r.Failed, r.NewerCode)
	}
	if r.Skipped > 0 {
		fmt.Fprintf(&b, "skipped %s of types this binary does not have: %s\n", plural(r.Skipped, "saga"), typeCounts(r.SkippedTypes))
	}
	if len(r.Failures) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SAGA\tTYPE\tVERSION\tKIND\tERROR")
		for _, f := range r.Failures {
			typ := f.Type
			if typ == "" {
				typ = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", f.SagaID, typ, f.Version, f.Kind, firstLine(f.Error))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ofTypes is "", " of type order" or " of types approval (2), order (3)".
func ofTypes(counts map[string]int) string {
	switch len(counts) {
	case 0:
		return ""
	case 1:
		for name := range counts {
			return " of type " + name
		}
	}
	return " of types " + typeCounts(counts)
}

// typeCounts is "approval (2), order (3)", sorted by type.
func typeCounts(counts map[string]int) string {
	names := slices.Sorted(maps.Keys(counts))
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s (%d)", n, counts[n])
	}
	return strings.Join(parts, ", ")
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
