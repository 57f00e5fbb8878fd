package ui_test

// Benchmarks of the UI's acceptance: with 10,000 sagas projected, the list
// page renders in under 200 ms of server time; the page of a saga of 1,000
// events in under 300 ms. Run them with
//
//	go test ./ui -run '^$' -bench . -benchtime 10x
//
// Server time is the handler's, called through httptest: from the request
// to the end of the response body, no network in between. The targets are
// reported (ms/op), not asserted.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/ui"
	"github.com/jetsaga/saga/worker"
)

// benchSagas is how many sagas BenchmarkListPage projects.
const benchSagas = 10_000

// benchPageSize is the UI's page of the list (ui.pageSize).
const benchPageSize = 50

// benchDeepPage is the page the keyset case asks for: the middle of the
// unfiltered list.
const benchDeepPage = 100

// The projected mix: types and outcomes drawn with these weights (in
// percent), as pgarchive's BenchmarkList seeds them.
var (
	benchTypes = []benchWeighted{{"order", 50}, {"payment", 20}, {"shipment", 15}, {"approval", 10}, {"refund", 5}}
	// An outcome is what a history ends with: a terminal event, an open
	// timer, or an activity in flight.
	benchOutcomes = []benchWeighted{
		{"completed", 70}, {"failed", 9}, {"failed-compensation-failed", 2}, {"canceled", 5}, {"timed-out", 1},
		{"running-timer", 8}, {"running", 5},
	}
)

type benchWeighted struct {
	v string
	w int
}

func benchPick(r *rand.Rand, ws []benchWeighted) string {
	n := r.IntN(100)
	for _, x := range ws {
		if n < x.w {
			return x.v
		}
		n -= x.w
	}
	return ws[len(ws)-1].v
}

// benchSpan is how far back the start times go.
const benchSpan = 30 * 24 * time.Hour

// seedProjection projects n sagas through Store.Apply, the
// projector's own path (no row is copied in SQL): each saga is two
// commits, its start with a first activity scheduled, then that activity's
// outcome and what the saga ended with (or waits on). Ids are
// "<type>-<6 digits>", so that an id prefix can select a few sagas. The
// table is ANALYZEd afterwards, as autovacuum would have done.
func seedProjection(ctx context.Context, b *testing.B, store *pgarchive.Store, n int) {
	b.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	r := rand.New(rand.NewPCG(1, 2)) // the same data on every run
	var commits []stream.StoredCommit
	var seq uint64
	for i := range n {
		typ := benchPick(r, benchTypes)
		started := now.Add(-time.Duration(r.Int64N(int64(benchSpan))))
		cs, err := benchHistory(fmt.Sprintf("%s-%06d", typ, i), typ, benchPick(r, benchOutcomes), started)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range cs {
			seq++
			commits = append(commits, stream.StoredCommit{Seq: seq, Commit: c})
		}
	}
	began := time.Now()
	pgtest.Apply(ctx, b, store, commits)
	b.Logf("applied %d commits of %d sagas in %v", len(commits), n, time.Since(began).Round(time.Millisecond))
	if _, err := store.Pool().Exec(ctx, "ANALYZE saga_sagas"); err != nil {
		b.Fatal(err)
	}
	var rows int
	if err := store.Pool().QueryRow(ctx, "SELECT count(*) FROM saga_sagas").Scan(&rows); err != nil {
		b.Fatal(err)
	}
	if rows != n {
		b.Fatalf("projected %d sagas, want %d", rows, n)
	}
}

// benchHistory is a saga's history as the engine commits it: the start and
// its first activity scheduled; then, unless that activity is still in
// flight, its start and outcome and the events the saga ended with (or
// the timer it waits on).
func benchHistory(id, typ, outcome string, started time.Time) ([]*stream.Commit, error) {
	input, err := stream.PayloadFromJSON(fmt.Appendf(nil, `{"id":%q,"amount":10}`, id))
	if err != nil {
		return nil, err
	}
	var commits []*stream.Commit
	var next uint64
	commit := func() *stream.Commit {
		c := &stream.Commit{SagaID: id, WorkflowType: typ, Decided: true}
		commits = append(commits, c)
		return c
	}
	add := func(c *stream.Commit, et stream.EventType, after time.Duration, attrs any) uint64 {
		c.Events = append(c.Events, stream.Event{ID: next, SagaID: id, Type: et, Category: stream.CategoryOf(et),
			Time: started.Add(after), Attrs: attrs})
		next++
		return next - 1
	}
	first := commit()
	add(first, stream.WorkflowExecutionStarted, 0, &stream.WorkflowExecutionStartedAttrs{WorkflowType: typ, Version: 1, Input: input, RequestID: id})
	step := add(first, stream.ActivityTaskScheduled, time.Millisecond, &stream.ActivityTaskScheduledAttrs{ActivityType: typ + "-step", Input: input})
	if outcome == "running" {
		return commits, nil
	}
	c := commit()
	add(c, stream.ActivityTaskStarted, 2*time.Millisecond, &stream.ActivityTaskStartedAttrs{ScheduledEventID: step, Attempt: 1, Node: "bench"})
	failure := &stream.Failure{Kind: "permanent", Message: "step failed for " + id, NonRetryable: true}
	if strings.HasPrefix(outcome, "failed") {
		add(c, stream.ActivityTaskFailed, time.Second, &stream.ActivityTaskFailedAttrs{ScheduledEventID: step, Failure: failure, Attempts: 1})
	} else {
		add(c, stream.ActivityTaskCompleted, time.Second, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: step, Result: input})
	}
	switch outcome {
	case "completed":
		add(c, stream.WorkflowExecutionCompleted, 2*time.Second, &stream.WorkflowExecutionCompletedAttrs{Output: input})
	case "failed":
		add(c, stream.WorkflowExecutionFailed, 3*time.Second, &stream.WorkflowExecutionFailedAttrs{Failure: failure,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 2}})
	case "failed-compensation-failed":
		add(c, stream.WorkflowExecutionFailed, 3*time.Second, &stream.WorkflowExecutionFailedAttrs{Failure: failure,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationFailed, Completed: 1,
				FailedSteps: []string{"process-payment"}, Failure: failure}})
	case "canceled":
		add(c, stream.WorkflowExecutionCanceled, time.Minute, &stream.WorkflowExecutionCanceledAttrs{Reason: "by request",
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationCompleted, Completed: 1}})
	case "timed-out":
		add(c, stream.WorkflowExecutionTimedOut, time.Hour, &stream.WorkflowExecutionTimedOutAttrs{RunTimeout: time.Hour,
			Compensation: &stream.CompensationOutcome{Status: stream.CompensationSkipped}})
	case "running-timer":
		add(c, stream.TimerCreated, 2*time.Second, &stream.TimerCreatedAttrs{Duration: 72 * time.Hour})
	default:
		return nil, fmt.Errorf("unknown outcome %q", outcome)
	}
	return commits, nil
}

// benchUI is a UI on srv and the given projection (nil: none), as an
// http.Handler the benchmarks call directly.
func benchUI(b *testing.B, srv *natstest.Server, pg *pgarchive.Store) *ui.Server {
	b.Helper()
	h, err := ui.New(ui.Options{Conn: srv.Conn(), Projection: pg, Logger: natstest.Logger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.Close)
	return h
}

// serve runs one request through the handler and returns the response, its
// body complete.
func serve(b *testing.B, h http.Handler, path string) *httptest.ResponseRecorder {
	b.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Host = "127.0.0.1" // as a browser on the machine names a loopback UI
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		b.Fatalf("GET %s: %d\n%s", path, rec.Code, rec.Body.String())
	}
	return rec
}

// listRowPrefix starts each saga's row of the list page.
const listRowPrefix = `<tr><td><a href="/sagas/`

// BenchmarkListPage measures GET /sagas on 10,000 projected sagas, one
// sub-benchmark per query: ms/op is the page's server time, rows/op the
// sagas on it. list-ms and count-ms are the two queries the page makes
// (Store.List of the page, Store.CountByStatus of the counts), timed alone
// after the loop, medians of 20 calls.
func BenchmarkListPage(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	store, err := pgarchive.Open(ctx, pgtest.Start(b).URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(store.Close)
	if _, err := store.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	seedProjection(ctx, b, store, benchSagas)
	h := benchUI(b, natstest.Start(b), store)

	// The deep page's cursor, as the page's "next" links carry it.
	var after string
	for range benchDeepPage - 1 {
		_, next, err := store.List(ctx, pgarchive.Filter{Limit: benchPageSize, After: after})
		if err != nil {
			b.Fatal(err)
		}
		if next == "" {
			b.Fatalf("the list ends before page %d", benchDeepPage)
		}
		after = next
	}
	// An id prefix that about 20 sagas have, fewer than a page: the query
	// must look through every saga for them.
	const prefix = "payment-0012"
	cases := []struct {
		name  string
		query url.Values
		// full: the page must be full (50 rows).
		full bool
	}{
		{"none", nil, true},
		{"status=failed", url.Values{"status": {"failed"}}, true},
		{"type=payment", url.Values{"type": {"payment"}}, true},
		{"prefix=" + prefix, url.Values{"prefix": {prefix}}, false},
		{fmt.Sprintf("page%d", benchDeepPage), url.Values{"after": {after}}, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			path := "/sagas"
			if len(c.query) > 0 {
				path += "?" + c.query.Encode()
			}
			var body string
			for b.Loop() {
				body = serve(b, h, path).Body.String()
			}
			rows := strings.Count(body, listRowPrefix)
			if rows == 0 || (c.full && rows != benchPageSize) {
				b.Fatalf("GET %s shows %d sagas:\n%s", path, rows, body)
			}
			if !strings.Contains(body, "Source: the Postgres projection") {
				b.Fatalf("GET %s does not list from the projection:\n%s", path, body)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e6/float64(b.N), "ms/op")
			b.ReportMetric(float64(rows), "rows/op")
			f := pgarchive.Filter{Status: stream.Status(c.query.Get("status")), Type: c.query.Get("type"),
				IDPrefix: c.query.Get("prefix"), After: c.query.Get("after"), Limit: benchPageSize}
			b.ReportMetric(medianMs(b, func() error { _, _, err := store.List(ctx, f); return err }), "list-ms")
			b.ReportMetric(medianMs(b, func() error { _, err := store.CountByStatus(ctx, f); return err }), "count-ms")
		})
	}
}

// medianMs is the median time of 20 calls of f, in milliseconds.
func medianMs(b *testing.B, f func() error) float64 {
	b.Helper()
	ds := make([]time.Duration, 20)
	for i := range ds {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		ds[i] = time.Since(t0)
	}
	slices.Sort(ds)
	return float64(ds[len(ds)/2].Nanoseconds()) / 1e6
}

// benchStep is the no-op activity of benchLong: the benchmark measures
// the pages, not the activities.
var benchStep = saga.NewActivity("bench-step", func(_ context.Context, i int) (int, error) { return i, nil })

// benchLong runs n steps back to back, which takes its history to 1 + 3n
// events (started, then scheduled, started and completed per step), then
// waits for a "done" signal: a running saga, whose page polls its live
// fragment.
var benchLong = saga.NewWorkflow("bench-long", 1, func(ctx saga.Context, n int) (int, error) {
	for i := range n {
		if _, err := saga.ExecuteActivity(ctx, benchStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
	_, err := saga.GetSignalChannel[struct{}](ctx, "done").Receive(ctx)
	return n, err
})

// benchLongSteps takes benchLong's history to 1,000 events.
const benchLongSteps = 333

// BenchmarkDetailPage measures a saga of 1,000 events (333 sequential
// activities, run on an in-process node and the embedded server, then
// waiting for a signal) read through the UI: its page, its history as
// JSON, and the live fragment its page polls. ms/op is the server time,
// KiB/op the body's size.
func BenchmarkDetailPage(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv := natstest.Start(b)
	reg := saga.NewRegistry()
	reg.MustRegister(benchLong, benchStep)
	node, err := worker.New(srv.Conn(), reg, worker.Options{NodeName: "ui-bench-node", Logger: natstest.Logger()})
	if err != nil {
		b.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.Stop(ctx); err != nil {
			b.Errorf("stop node: %v", err)
		}
	})
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	const id = "long-1"
	if _, err := saga.StartWorkflow(ctx, cl, benchLong, benchLongSteps, saga.StartOptions{ID: id}); err != nil {
		b.Fatal(err)
	}
	const events = 1 + 3*benchLongSteps
	natstest.WaitFor(b, 2*time.Minute, fmt.Sprintf("%s to reach %d events", id, events), func() bool {
		d, err := cl.Describe(ctx, id)
		return err == nil && d.Events >= events
	})
	if d, err := cl.Describe(ctx, id); err != nil || d.Events != events || d.Status != saga.StatusRunning {
		b.Fatalf("saga %s: %+v, %v; want %d events, running", id, d, err, events)
	}
	h := benchUI(b, srv, nil)

	cases := []struct {
		name, path string
		wants      []string
	}{
		{"page", "/sagas/" + id, []string{fmt.Sprintf("#%d WorkflowExecutionStarted", 0), fmt.Sprintf("#%d ActivityTaskCompleted", events-1)}},
		{"history.json", "/sagas/" + id + "/history.json", []string{`"WorkflowExecutionStarted"`, fmt.Sprintf(`"id": %d,`, events-1)}},
		{"live", "/sagas/" + id + "/live", []string{`id="status">running<`}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var body string
			for b.Loop() {
				body = serve(b, h, c.path).Body.String()
			}
			for _, w := range c.wants {
				if !strings.Contains(body, w) {
					b.Fatalf("GET %s lacks %q", c.path, w)
				}
			}
			if c.name != "history.json" {
				if bars := strings.Count(body, `<rect class="bar `); bars != benchLongSteps {
					b.Fatalf("GET %s draws %d bars, want %d", c.path, bars, benchLongSteps)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e6/float64(b.N), "ms/op")
			b.ReportMetric(float64(len(body))/1024, "KiB/op")
		})
	}
}
