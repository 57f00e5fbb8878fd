package pgarchive_test

// Benchmarks of the Postgres projection: how fast the projector keeps up
// with the engine, and how fast List answers on a large projection. Run
// them with
//
//	go test ./pgarchive -run '^$' -bench Projector -benchtime 2000x
//	go test ./pgarchive -run '^$' -bench List
//	go test ./pgarchive -run TestListUsesIndexes -v
//
// With -benchtime Nx, BenchmarkProjector runs N order sagas. The List
// benchmarks answer on 100,000 projected sagas; TestListUsesIndexes
// proves, on the same data, that each filter's plan reads an index.

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// BenchmarkProjector runs b.N order sagas (all completing) on one node and
// an embedded server, and measures the projection against the engine:
//
//   - live: the node projects as it runs the sagas. engine-events/s is
//     the events of the ended histories over the time until the last
//     ended; projected-events/s the same events over the time until the
//     projection held every one; lag-s how long after the engine the
//     projection finished.
//   - backlog: the node runs the sagas without a projection; then a second
//     node with one starts and drains the whole backlog:
//     backlog-events/s. engine-events/s is the engine's without a
//     projection, to compare with live's.
//
// ns/op is the whole run's time per saga.
func BenchmarkProjector(b *testing.B) {
	b.Run("live", func(b *testing.B) { benchProjector(b, false) })
	b.Run("backlog", func(b *testing.B) { benchProjector(b, true) })
}

// projectorInFlight bounds the sagas started and not yet ended, as
// integration's BenchmarkOrderSaga does, so that the engine runs at its
// pace rather than queueing every start at once.
const projectorInFlight = 256

// projectionPoll is how often the projection's event count is read: often
// enough for the figures over runs of seconds, seldom enough that the
// count does not compete with the projector for the machine.
const projectionPoll = 10 * time.Millisecond

func benchProjector(b *testing.B, backlog bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	srv := natstest.Start(b)
	store, err := pgarchive.Open(ctx, pgtest.Start(b).URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(store.Close)
	// The schema is made before the clock starts: its creation is no part
	// of the projector's throughput.
	if _, err := store.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	// The settings of integration's BenchmarkOrderSaga, so that
	// engine-events/s compares with its events/s.
	opts := worker.Options{Logger: natstest.Logger(), DisableAPI: true,
		WorkflowConcurrency: 128, ActivityConcurrency: 256, CacheSize: 4 * projectorInFlight}
	if !backlog {
		opts.Projection = store
	}
	node := startBenchNode(ctx, b, srv, reg, opts)
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()

	b.ResetTimer()
	start := time.Now()
	ended, events := runOrderSagas(ctx, b, srv.Conn(), cl, b.N)
	engine := ended.Sub(start)
	b.ReportMetric(float64(events)/engine.Seconds(), "engine-events/s")
	b.ReportMetric(float64(events)/float64(b.N), "events/saga")

	if !backlog {
		caughtUp := waitProjectedEvents(ctx, b, store, events)
		b.StopTimer()
		b.ReportMetric(float64(events)/caughtUp.Sub(start).Seconds(), "projected-events/s")
		b.ReportMetric(caughtUp.Sub(ended).Seconds(), "lag-s")
		checkProjectedSagas(ctx, b, store, b.N)
		return
	}

	// The node that ran the sagas stops, so that the second one drains the
	// backlog alone. The second has the same registry but finds no task:
	// every saga ended.
	if err := node.Stop(ctx); err != nil {
		b.Fatal(err)
	}
	drainStart := time.Now()
	opts.Projection = store
	startBenchNode(ctx, b, srv, reg, opts)
	caughtUp := waitProjectedEvents(ctx, b, store, events)
	b.StopTimer()
	b.ReportMetric(float64(events)/caughtUp.Sub(drainStart).Seconds(), "backlog-events/s")
	checkProjectedSagas(ctx, b, store, b.N)
}

// startBenchNode starts a node on its own connection, stopped when the
// benchmark ends.
func startBenchNode(ctx context.Context, b *testing.B, srv *natstest.Server, reg *saga.Registry, opts worker.Options) *worker.Node {
	b.Helper()
	node, err := worker.New(srv.Conn(), reg, opts)
	if err != nil {
		b.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = node.Stop(context.Background()) })
	return node
}

// runOrderSagas starts n order sagas, at most projectorInFlight at once,
// and returns once every one has ended: when the last ended, and how many
// events their histories hold. Each saga ends with a commit holding its
// terminal event, whose next event id is the length of its history: those
// commits are counted as they are published instead of waiting on each
// saga, as integration's BenchmarkOrderSaga does.
func runOrderSagas(ctx context.Context, b *testing.B, nc *nats.Conn, cl *saga.Client, n int) (ended time.Time, events int64) {
	b.Helper()
	done := make(chan struct{}, n)
	var failed, total atomic.Int64
	cfg := stream.Config{}.Defaults()
	for shard := range cfg.HistoryShards {
		sub, err := nc.Subscribe(cfg.HistoryFilter(shard), func(m *nats.Msg) {
			c, err := stream.DecodeCommit(m.Data)
			if err != nil {
				return
			}
			switch last := c.Events[len(c.Events)-1].Type; {
			case last == stream.WorkflowExecutionCompleted:
				total.Add(int64(c.NextEventID()))
				done <- struct{}{}
			case stream.IsTerminal(last) || last == stream.WorkflowExecutionBlocked:
				failed.Add(1)
				done <- struct{}{}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}

	window := make(chan struct{}, projectorInFlight)
	startErr := make(chan error, 1)
	go func() {
		for i := range n {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			in := order.Input{OrderID: fmt.Sprintf("o-%d", i), Items: []order.Item{{SKU: "sku", Qty: 1}}, Amount: 10}
			if _, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: fmt.Sprintf("bench-%d", i)}); err != nil {
				startErr <- err
				return
			}
		}
	}()
	for range n {
		select {
		case <-done:
			<-window
		case err := <-startErr:
			b.Fatal(err)
		case <-ctx.Done():
			b.Fatal("timed out waiting for the sagas to end")
		}
	}
	ended = time.Now()
	if failed.Load() > 0 {
		b.Fatalf("%d sagas did not complete", failed.Load())
	}
	return ended, total.Load()
}

// waitProjectedEvents polls the projection's event count until it holds
// want events, and returns when it did.
func waitProjectedEvents(ctx context.Context, b *testing.B, store *pgarchive.Store, want int64) time.Time {
	b.Helper()
	tick := time.NewTicker(projectionPoll)
	defer tick.Stop()
	for {
		var have int64
		if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM saga_events").Scan(&have); err != nil {
			b.Fatal(err)
		}
		switch {
		case have == want:
			return time.Now()
		case have > want:
			b.Fatalf("the projection holds %d events, more than the %d of the histories", have, want)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			b.Fatalf("the projection holds %d of %d events: %v", have, want, ctx.Err())
		}
	}
}

// checkProjectedSagas checks, off the clock, that the projection holds a
// completed row per saga: the event count alone would not see rows
// missing.
func checkProjectedSagas(ctx context.Context, b *testing.B, store *pgarchive.Store, n int) {
	b.Helper()
	var completed int
	if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM saga_sagas WHERE status = 'completed'").Scan(&completed); err != nil {
		b.Fatal(err)
	}
	if completed != n {
		b.Fatalf("the projection holds %d completed sagas, want %d", completed, n)
	}
}

// listSagas is how many sagas the List benchmarks and TestListUsesIndexes
// project.
const listSagas = 100_000

// listSeed is a projection of listSagas synthetic sagas.
type listSeed struct {
	store *pgarchive.Store
	// now is the time the start times count back from: "since 24h" is
	// since a day before it.
	now time.Time
}

// The seeded mix. Types and outcomes are drawn with these weights (in
// percent), so that the filters select from a few percent of the rows to
// most of them.
var (
	listTypes = []weighted[string]{{"order", 50}, {"payment", 20}, {"shipment", 15}, {"approval", 10}, {"refund", 5}}
	// An outcome is what a history ends with: a terminal event, an open
	// timer, or an activity in flight.
	listOutcomes = []weighted[string]{
		{"completed", 70}, {"failed", 9}, {"failed-compensation-failed", 2}, {"canceled", 5}, {"timed-out", 1},
		{"running-timer", 8}, {"running", 5},
	}
)

type weighted[T any] struct {
	v T
	w int
}

func pick[T any](r *rand.Rand, ws []weighted[T]) T {
	n := r.IntN(100)
	for _, x := range ws {
		if n < x.w {
			return x.v
		}
		n -= x.w
	}
	return ws[len(ws)-1].v
}

// listSpan is how far back the start times go.
const listSpan = 30 * 24 * time.Hour

// seedList projects listSagas synthetic sagas and ANALYZEs the table, so
// that the planner knows the data. The engine does not run: a history is
// one commit, a start and what the saga ended with (or waits on), which
// is all a row is made of. The first applied sagas go through Apply, in
// batches of 1,000 commits with increasing stream sequences; the rest are
// copies of their rows, each started at another time of the span, made by
// one INSERT: Apply takes some 250 µs a saga on a small machine, and
// TestListUsesIndexes must stay quick under the race detector.
func seedList(ctx context.Context, tb testing.TB, applied int) listSeed {
	tb.Helper()
	if applied <= 0 || listSagas%applied != 0 {
		tb.Fatalf("%d sagas applied do not make %d by copies", applied, listSagas)
	}
	store, err := pgarchive.Open(ctx, pgtest.Start(tb).URL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(store.Close)
	if _, err := store.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	r := rand.New(rand.NewPCG(1, 2)) // the same data on every run
	commits := make([]stream.StoredCommit, applied)
	for i := range commits {
		started := now.Add(-time.Duration(r.Int64N(int64(listSpan))))
		c, err := listHistory(fmt.Sprintf("list-%06d", i), pick(r, listTypes), pick(r, listOutcomes), started)
		if err != nil {
			tb.Fatal(err)
		}
		commits[i] = stream.StoredCommit{Seq: uint64(i + 1), Commit: c}
	}
	began := time.Now()
	pgtest.Apply(ctx, tb, store, commits)
	tb.Logf("applied %d sagas in %v (%.0f sagas/s)", applied, time.Since(began).Round(time.Millisecond),
		float64(applied)/time.Since(began).Seconds())
	if copies := listSagas/applied - 1; copies > 0 {
		err := pgx.BeginFunc(ctx, store.Pool(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT setseed(0.5)"); err != nil { // the same copies on every run
				return err
			}
			// random() is volatile, so the CTE is evaluated once a row and
			// each copy keeps one start time for all its times.
			_, err := tx.Exec(ctx, `WITH c AS (
					SELECT s.*, g, $1::timestamptz - random() * $2::interval AS start
					FROM saga_sagas s CROSS JOIN generate_series(1, $3::int) g)
				INSERT INTO saga_sagas (saga_id, workflow_type, version, status, compensation, started_at, updated_at,
					closed_at, input, output, error, open_timers, next_timer_at, events, last_seq, archived_at)
				SELECT saga_id || '-c' || g, workflow_type, version, status, compensation, start,
					start + (updated_at - started_at), start + (closed_at - started_at), input, output, error,
					open_timers, start + (next_timer_at - started_at), events, last_seq, archived_at
				FROM c`, now, listSpan, copies)
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	if _, err := store.Pool().Exec(ctx, "ANALYZE saga_sagas"); err != nil {
		tb.Fatal(err)
	}
	var rows int
	if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM saga_sagas").Scan(&rows); err != nil {
		tb.Fatal(err)
	}
	if rows != listSagas {
		tb.Fatalf("seeded %d sagas, want %d", rows, listSagas)
	}
	return listSeed{store: store, now: now}
}

// listHistory is a saga's history as one commit: its start, then the
// events of its outcome.
func listHistory(id, wfType, outcome string, started time.Time) (*stream.Commit, error) {
	input, err := stream.PayloadFromJSON(fmt.Appendf(nil, `{"id":%q,"amount":10}`, id))
	if err != nil {
		return nil, err
	}
	c := &stream.Commit{SagaID: id, WorkflowType: wfType, Decided: true}
	add := func(typ stream.EventType, after time.Duration, attrs any) {
		c.Events = append(c.Events, stream.Event{ID: uint64(len(c.Events)), SagaID: id, Type: typ,
			Category: stream.CategoryOf(typ), Time: started.Add(after), Attrs: attrs})
	}
	add(stream.WorkflowExecutionStarted, 0, &stream.WorkflowExecutionStartedAttrs{WorkflowType: wfType, Version: 1, Input: input, RequestID: id})
	failure := &stream.Failure{Kind: "permanent", Message: "step failed for " + id, NonRetryable: true}
	switch outcome {
	case "completed":
		add(stream.WorkflowExecutionCompleted, 2*time.Second, &stream.WorkflowExecutionCompletedAttrs{Output: input})
	case "failed":
		add(stream.WorkflowExecutionFailed, 3*time.Second, &stream.WorkflowExecutionFailedAttrs{Failure: failure,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}})
	case "failed-compensation-failed":
		add(stream.WorkflowExecutionFailed, 3*time.Second, &stream.WorkflowExecutionFailedAttrs{Failure: failure,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationFailed, Completed: 1,
				FailedSteps: []string{"process-payment"}, Failure: failure}})
	case "canceled":
		add(stream.WorkflowExecutionCanceled, time.Minute, &stream.WorkflowExecutionCanceledAttrs{Reason: "by request",
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 1}})
	case "timed-out":
		add(stream.WorkflowExecutionTimedOut, time.Hour, &stream.WorkflowExecutionTimedOutAttrs{RunTimeout: time.Hour,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationSkipped}})
	case "running-timer":
		add(stream.TimerCreated, time.Second, &stream.TimerCreatedAttrs{Duration: 72 * time.Hour})
	case "running":
		add(stream.ActivityTaskScheduled, time.Second, &stream.ActivityTaskScheduledAttrs{ActivityType: wfType + "-step", Input: input})
	default:
		return nil, fmt.Errorf("unknown outcome %q", outcome)
	}
	return c, nil
}

// listCase is one filter of List, as the benchmarks and the plan test run
// it.
type listCase struct {
	name   string
	filter pgarchive.Filter
}

// listDeepPage is the page the cursor case asks for.
const listDeepPage = 50

// listCases are the filters measured, in the order reported. The cursor
// case is found by walking to page listDeepPage of the unfiltered list.
func listCases(ctx context.Context, tb testing.TB, s listSeed) []listCase {
	tb.Helper()
	var f pgarchive.Filter
	for range listDeepPage - 1 {
		rows, next, err := s.store.List(ctx, f)
		if err != nil {
			tb.Fatal(err)
		}
		if next == "" {
			tb.Fatalf("the list ends after %d rows, before page %d", len(rows), listDeepPage)
		}
		f.After = next
	}
	return []listCase{
		{"none", pgarchive.Filter{}},
		{"status", pgarchive.Filter{Status: stream.StatusFailed}},
		{"type", pgarchive.Filter{Type: "payment"}},
		{"type+status", pgarchive.Filter{Type: "approval", Status: stream.StatusCanceled}},
		{"since-24h", pgarchive.Filter{Since: s.now.Add(-24 * time.Hour)}},
		{"compensation-failed", pgarchive.Filter{Compensation: stream.CompensationFailed}},
		{"waiting-on-timer", pgarchive.Filter{WaitingOnTimer: true}},
		{fmt.Sprintf("cursor-page%d", listDeepPage), f},
	}
}

// BenchmarkList measures List on 100,000 projected sagas, one
// sub-benchmark per filter, each a page of the default size (100). The
// target is under 50 ms a call; it is reported (ms/op), not asserted.
func BenchmarkList(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := seedList(ctx, b, listSagas)
	for _, c := range listCases(ctx, b, s) {
		b.Run(c.name, func(b *testing.B) {
			var rows int
			for b.Loop() {
				page, _, err := s.store.List(ctx, c.filter)
				if err != nil {
					b.Fatal(err)
				}
				rows = len(page)
			}
			// An empty page would measure a filter that finds nothing.
			if rows == 0 {
				b.Fatalf("list %+v found no saga", c.filter)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e6/float64(b.N), "ms/op")
			b.ReportMetric(float64(rows), "rows/op")
		})
	}
}

// listTestApplied is how many of TestListUsesIndexes's sagas go through
// Apply; the rest are copies.
const listTestApplied = 5_000

// TestListUsesIndexes runs EXPLAIN (ANALYZE) of each filter's query on
// 100,000 ANALYZEd sagas, logs the plans, and fails if one reads saga_sagas
// by a sequential scan: the indexes of the migration must serve every
// filter List offers. Each query is planned twice: with its values (a
// custom plan, as the first runs of a statement get) and without them (a
// generic plan, which the server may settle on for a statement pgx
// prepared and ran a few times).
func TestListUsesIndexes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	s := seedList(ctx, t, listTestApplied)
	t.Logf("projected %d sagas in %v", listSagas, time.Since(began).Round(time.Millisecond))
	conn, err := s.store.Pool().Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, c := range listCases(ctx, t, s) {
		sql, args := listSQL(t, c.filter)
		checkListSQL(ctx, t, s.store, conn.Conn(), c, sql, args)
		for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
			plan := explainList(ctx, t, conn.Conn(), mode, sql, args)
			t.Logf("%s (%s):\n%s\n%s", c.name, mode, sql, plan)
			if strings.Contains(plan, "Seq Scan on saga_sagas") {
				t.Errorf("%s (%s): the plan reads saga_sagas sequentially", c.name, mode)
			}
		}
	}
}

// listSQL is the query List runs for f, built as query.go builds it: List
// does not show its SQL, and EXPLAIN needs it. checkListSQL checks that it
// returns what List returns.
func listSQL(t *testing.T, f pgarchive.Filter) (string, []any) {
	t.Helper()
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Status != "" {
		where = append(where, "status = "+arg(string(f.Status)))
	}
	if f.Type != "" {
		where = append(where, "workflow_type = "+arg(f.Type))
	}
	if !f.Since.IsZero() {
		where = append(where, "started_at >= "+arg(f.Since))
	}
	if f.Compensation != "" {
		where = append(where, "compensation = "+arg(f.Compensation))
	}
	if f.WaitingOnTimer {
		where = append(where, "open_timers > 0", "status = 'running'")
	}
	if f.After != "" {
		raw, err := base64.RawURLEncoding.DecodeString(f.After)
		if err != nil {
			t.Fatal(err)
		}
		at, id, _ := strings.Cut(string(raw), "|")
		ts, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			t.Fatal(err)
		}
		where = append(where, fmt.Sprintf("(started_at, saga_id) < (%s, %s)", arg(ts), arg(id)))
	}
	q := `SELECT saga_id, workflow_type, version, status, compensation, started_at, updated_at, closed_at,
	open_timers, next_timer_at, events, last_seq, archived_at, error FROM saga_sagas`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY started_at DESC, saga_id DESC LIMIT " + arg(101) // the default page, and one to tell if there is a next
	return q, args
}

// checkListSQL fails the test unless sql finds the sagas List finds, in
// its order: else the plans shown would be another query's.
func checkListSQL(ctx context.Context, t *testing.T, store *pgarchive.Store, conn *pgx.Conn, c listCase, sql string, args []any) {
	t.Helper()
	rows, _, err := store.List(ctx, c.filter)
	if err != nil {
		t.Fatal(err)
	}
	got, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(got, func(r pgx.CollectableRow) (string, error) {
		vals, err := r.Values()
		if err != nil {
			return "", err
		}
		return vals[0].(string), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatalf("%s: List found no saga", c.name)
	}
	ids = ids[:min(len(ids), len(rows))] // the query reads one more, to tell whether a next page exists
	if len(ids) != len(rows) {
		t.Fatalf("%s: the query finds %d sagas, List %d", c.name, len(ids), len(rows))
	}
	for i := range rows {
		if ids[i] != rows[i].SagaID {
			t.Fatalf("%s: row %d is %s by the query, %s by List: the query is not List's", c.name, i, ids[i], rows[i].SagaID)
		}
	}
}

// explainList returns the plan of sql as the server runs it in the given
// plan_cache_mode: the statement is prepared, and EXECUTE runs it with
// args written as literals (a parameter of EXPLAIN EXECUTE would have no
// type for the server to infer).
func explainList(ctx context.Context, t *testing.T, conn *pgx.Conn, mode, sql string, args []any) string {
	t.Helper()
	if _, err := conn.Exec(ctx, "SET plan_cache_mode = "+mode); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "RESET plan_cache_mode") }()
	if _, err := conn.Exec(ctx, "PREPARE bench_list AS "+sql); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "DEALLOCATE bench_list") }()
	lits := make([]string, len(args))
	for i, a := range args {
		lits[i] = sqlLiteral(t, a)
	}
	rows, err := conn.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_list("+strings.Join(lits, ", ")+")",
		pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// sqlLiteral writes a query argument as an SQL literal.
func sqlLiteral(t *testing.T, v any) string {
	t.Helper()
	switch v := v.(type) {
	case string:
		return "'" + strings.ReplaceAll(v, "'", "''") + "'"
	case time.Time:
		return "'" + v.UTC().Format(time.RFC3339Nano) + "'"
	case int:
		return fmt.Sprint(v)
	}
	t.Fatalf("no literal for %T", v)
	return ""
}
