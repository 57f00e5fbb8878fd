package pgarchive_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

// engine is a nats-server, a node projecting into Postgres, and a client.
type engine struct {
	t    *testing.T
	srv  *natstest.Server
	pg   *pgarchive.Store
	cl   *saga.Client
	node *worker.Node
	ctx  context.Context
}

func newEngine(t *testing.T, pgURL string) *engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	srv := natstest.Start(t)
	pg, err := pgarchive.Open(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	reg.MustRegister(approval.NewService().Definitions()...)
	node, err := worker.New(srv.Conn(), reg, worker.Options{Projection: pg, Logger: natstest.Logger(), AckWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop(context.Background()) })
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &engine{t: t, srv: srv, pg: pg, cl: cl, node: node, ctx: ctx}
}

// mixedSagas starts n sagas with mixed outcomes: completed orders, orders
// that fail and compensate, approvals canceled, approvals waiting on their
// one-hour timer. It returns their ids by expected status.
func (e *engine) mixedSagas(n int) map[saga.Status][]string { return e.mixedSagasFrom(0, n) }

// mixedSagasFrom is mixedSagas with ids numbered from start.
func (e *engine) mixedSagasFrom(start, n int) map[saga.Status][]string {
	e.t.Helper()
	ids := map[saga.Status][]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := start; i < start+n; i++ {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			id := fmt.Sprintf("mix-%d", i)
			var err error
			var want saga.Status
			switch i % 4 {
			case 0:
				_, err = e.cl.Start(e.ctx, "order", order.Input{OrderID: id, Amount: 5}, saga.StartOptions{ID: id})
				want = saga.StatusCompleted
			case 1:
				_, err = e.cl.Start(e.ctx, "order", order.Input{OrderID: id, Amount: 5, FailStep: order.StepShipOrder}, saga.StartOptions{ID: id})
				want = saga.StatusFailed
			case 2:
				_, err = e.cl.Start(e.ctx, "approval", approval.Input{RequestID: id, Amount: 5, Timeout: "1h"}, saga.StartOptions{ID: id})
				want = saga.StatusCanceled
			case 3:
				_, err = e.cl.Start(e.ctx, "approval", approval.Input{RequestID: id, Amount: 5, Timeout: "1h"}, saga.StartOptions{ID: id})
				want = saga.StatusRunning
			}
			if err != nil {
				e.t.Error(err)
				return
			}
			mu.Lock()
			ids[want] = append(ids[want], id)
			mu.Unlock()
		})
	}
	wg.Wait()
	// The approvals to cancel wait for their decision first.
	for _, id := range ids[saga.StatusCanceled] {
		natstest.WaitFor(e.t, time.Minute, "approval "+id+" waiting", func() bool {
			d, err := e.cl.Describe(e.ctx, id)
			return err == nil && d.Events >= 6
		})
		if err := e.cl.Cancel(e.ctx, id, "test"); err != nil {
			e.t.Fatal(err)
		}
	}
	for want, list := range ids {
		for _, id := range list {
			natstest.WaitFor(e.t, time.Minute, "saga "+id+" "+string(want), func() bool {
				d, err := e.cl.Describe(e.ctx, id)
				return err == nil && d.Status == want && (want != saga.StatusRunning || len(d.PendingActivities) == 0 && d.Events >= 6)
			})
		}
	}
	return ids
}

func all(ids map[saga.Status][]string) []string {
	var out []string
	for _, l := range ids {
		out = append(out, l...)
	}
	slices.Sort(out)
	return out
}

// waitProjected waits until the projection equals the histories.
func (e *engine) waitProjected(ids []string, within time.Duration) {
	e.t.Helper()
	hist, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	defer hist.Close()
	deadline := time.Now().Add(within)
	for {
		m, err := e.pg.Verify(e.ctx, hist, ids)
		if err == nil && len(m) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the projection differs from the histories after %s: %v (err %v)", within, m[:min(len(m), 5)], err)
		}
		select {
		case <-e.ctx.Done():
			e.t.Fatal(e.ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// The projection equals, saga for saga, what its history folds to; every
// history delivered again changes no row; list filters find what they
// should, a page at a time.
func TestProjectionEqualsTheHistories(t *testing.T) {
	e := newEngine(t, pgtest.Start(t).URL())
	ids := e.mixedSagas(500)
	e.waitProjected(all(ids), time.Minute)

	before, _, err := e.pg.List(e.ctx, pgarchive.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	hist, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	var again []stream.StoredCommit
	for _, id := range all(ids) {
		commits, err := hist.ReadLatest(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		again = append(again, commits...)
	}
	slices.Reverse(again) // and out of order
	if err := e.pg.Apply(e.ctx, again); err != nil {
		t.Fatal(err)
	}
	after, _, err := e.pg.List(e.ctx, pgarchive.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, before), mustJSON(t, after); a != b {
		t.Fatalf("delivering every commit again changed rows:\n%s\n%s", a, b)
	}

	check := func(f pgarchive.Filter, want []string) {
		t.Helper()
		var got []string
		for {
			rows, next, err := e.pg.List(e.ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				got = append(got, r.SagaID)
			}
			if next == "" {
				break
			}
			f.After = next
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("list %+v: got %d sagas, want %d", f, len(got), len(want))
		}
	}
	check(pgarchive.Filter{Status: saga.StatusFailed, Type: "order", Limit: 17}, ids[saga.StatusFailed])
	check(pgarchive.Filter{Compensation: stream.CompensationCompleted, Type: "order", Limit: 10}, ids[saga.StatusFailed])
	check(pgarchive.Filter{WaitingOnTimer: true, Limit: 9}, ids[saga.StatusRunning])
	check(pgarchive.Filter{Status: saga.StatusCanceled, Since: time.Now().Add(-time.Hour)}, ids[saga.StatusCanceled])
	check(pgarchive.Filter{Since: time.Now().Add(time.Hour)}, nil)
}

// Postgres away while sagas run: none fails or stalls, and the projection
// catches up once it is back.
func TestPostgresDownNeverStopsSagas(t *testing.T) {
	pg := pgtest.StartOwn(t)
	e := newEngine(t, pg.URL())
	first := e.mixedSagas(8)
	e.waitProjected(all(first), time.Minute)

	pg.Stop()
	down := time.Now()
	// Every saga ends as it should while Postgres is away (mixedSagasFrom
	// fails the test if one stalls).
	ids := e.mixedSagasFrom(100, 40)
	<-time.After(time.Until(down.Add(10 * time.Second))) // an outage of 10 s at least
	pg.Restart()
	e.waitProjected(append(all(first), all(ids)...), 30*time.Second)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A node that only projects serves the API's list; the nodes running sagas
// have no projection of their own.
func TestProjectorOnlyNodeServesList(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	pg, err := pgarchive.Open(ctx, pgtest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	start := func(opts worker.Options) {
		opts.Logger = natstest.Logger()
		n, err := worker.New(srv.Conn(), reg, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop(context.Background()) })
	}
	start(worker.Options{NodeName: "sagas"})
	start(worker.Options{NodeName: "projector", Projection: pg, ProjectorOnly: true})
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 6 {
		in := order.Input{OrderID: fmt.Sprint(i), Amount: 1}
		if i%2 == 1 {
			in.FailStep = order.StepShipOrder
		}
		id := fmt.Sprintf("po-%d", i)
		if _, err := cl.Start(ctx, "order", in, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Wait(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	request := func(body string) (api.ListResponse, string) {
		msg, err := srv.Conn().RequestWithContext(ctx, "saga.api.list", []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		var r api.ListResponse
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "" {
			return r, code
		}
		if err := json.Unmarshal(msg.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r, ""
	}
	natstest.WaitFor(t, 30*time.Second, "three failed orders listed", func() bool {
		r, code := request(`{"status":"failed","type":"order","compensation":"completed"}`)
		var rows []pgarchive.Row
		return code == "" && json.Unmarshal(r.Sagas, &rows) == nil && len(rows) == 3
	})
	if _, code := request(`{"status":"sleeping"}`); code != "400" {
		t.Fatalf("bad filter answered %q", code)
	}
	if _, code := request(`{"after":"not-a-cursor"}`); code != "400" {
		t.Fatalf("bad cursor answered %q", code)
	}
}
