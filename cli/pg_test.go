package cli

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// The projection's commands: migrate, list with filters and pages, status
// with the projector's backlog, and describe and history of a saga the
// streams no longer hold.
func TestProjectionCommands(t *testing.T) {
	pgURL := pgtest.Start(t).URL()
	withPG := func(string) string { return "" }
	r := runCLI(t, withPG, "migrate", "--pg-url", pgURL)
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "version 4") {
		t.Fatalf("migrate: %s", r)
	}
	r = runCLI(t, withPG, "list")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "needs the Postgres projection") {
		t.Fatalf("list without --pg-url: %s", r)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, _, cl := projectedEngine(t, ctx, pgURL)
	for i, fail := range []string{"", order.StepShipOrder, "", order.StepShipOrder, order.StepShipOrder} {
		id := "pl-" + string(rune('a'+i))
		if _, err := cl.Start(ctx, "order", order.Input{OrderID: id, Amount: 1, FailStep: fail}, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Wait(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	url := srv.ClientURL()
	var page struct {
		Sagas []pgarchive.Row `json:"sagas"`
		Next  string          `json:"next"`
	}
	natstest.WaitFor(t, 30*time.Second, "the failed orders projected", func() bool {
		r := runCLI(t, withPG, "list", "--pg-url", pgURL, "--status", "failed", "--compensation", "completed", "--json", "--limit", "2")
		return r.code == ExitOK && json.Unmarshal([]byte(r.stdout), &page) == nil && len(page.Sagas) == 2 && page.Next != ""
	})
	r = runCLI(t, withPG, "list", "--pg-url", pgURL, "--status", "failed", "--limit", "2", "--after", page.Next)
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "pl-b") || strings.Contains(r.stdout, "pl-d") || strings.Contains(r.stdout, "more:") {
		t.Fatalf("second page: %s\nstdout %q stderr %q", r, r.stdout, r.stderr)
	}
	expectCode(t, runCLI(t, withPG, "list", "--pg-url", pgURL, "--status", "sleeping"), ExitUsage)

	r = withURL(t, url, "status")
	expectCode(t, r, ExitOK)
	for _, want := range []string{"saga-dispatch", "saga-projector", "saga-signals"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("status lacks %s:\n%s", want, r.stdout)
		}
	}

	// A saga the streams no longer hold is read from the projection.
	hist, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	js := hist.JetStream()
	s, err := js.Stream(ctx, stream.Config{}.Defaults().HistoryStream(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Purge(ctx, jetstreamSubject(stream.Config{}.Defaults().HistorySubject("pl-a"))); err != nil {
		t.Fatal(err)
	}
	expectCode(t, withURL(t, url, "describe", "pl-a"), ExitError)
	r = withURL(t, url, "describe", "pl-a", "--pg-url", pgURL)
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "status:   completed") {
		t.Fatalf("describe from the projection: %s", r)
	}
	r = withURL(t, url, "history", "pl-a", "--pg-url", pgURL)
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "WorkflowExecutionCompleted") {
		t.Fatalf("history from the projection: %s", r)
	}

	// replay-check reads the projection too, the saga the streams no
	// longer hold included: the unchanged code replays every saga, the
	// reordered one would block them, pl-a among them.
	r = replayCheck(t, url, orderDefs(), "--from", "archive", "--pg-url", pgURL)
	expectCode(t, r, ExitOK)
	if !strings.HasPrefix(r.stdout, "checked 5 sagas") {
		t.Fatalf("replay-check of the unchanged code:\n%s", r)
	}
	r = replayCheck(t, url, reorderedDefs(), "--from", "archive", "--pg-url", pgURL)
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stdout, "pl-a") || !strings.Contains(r.stdout, "history has ActivityTaskScheduled reserve-inventory, code asked for ActivityTaskScheduled process-payment") {
		t.Fatalf("replay-check of the reordered code:\n%s", r)
	}
}

func jetstreamSubject(subject string) jetstream.StreamPurgeOpt {
	return jetstream.WithPurgeSubject(subject)
}

// An archived saga is gone from JetStream but for its marker; it is still
// described, listed, read and replay-checked from the archive, its events
// equal to what it had, and its id is never started again.
func TestArchive(t *testing.T) {
	pgURL := pgtest.Start(t).URL()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, pg, cl := projectedEngine(t, ctx, pgURL)
	ids := []string{"ar-1", "ar-2"}
	for i, id := range ids {
		in := order.Input{OrderID: id, Amount: 1}
		if i == 1 {
			in.FailStep = order.StepShipOrder
		}
		if _, err := cl.Start(ctx, "order", in, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Wait(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string][]stream.Event{}
	for _, id := range ids {
		events, err := cl.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		before[id] = events
	}
	url := srv.ClientURL()
	withPG := func(string) string { return "" }
	natstest.WaitFor(t, 30*time.Second, "both sagas archived", func() bool {
		// Each run archives what the projection holds whole by then.
		if r := runCLI(t, withPG, "archive", "--nats-url", url, "--pg-url", pgURL, "--older-than", "0s"); r.code != ExitOK {
			t.Fatalf("archive: %s", r)
		}
		for _, id := range ids {
			if row, err := pg.Saga(ctx, id); err != nil || row.ArchivedAt == nil {
				return false
			}
		}
		return true
	})

	hist, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	s, err := hist.JetStream().Stream(ctx, stream.Config{}.Defaults().HistoryStream(0))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		info, err := s.Info(ctx, jetstream.WithSubjectFilter(stream.Config{}.Defaults().HistorySubject(id)))
		if err != nil {
			t.Fatal(err)
		}
		if n := info.State.Subjects[stream.Config{}.Defaults().HistorySubject(id)]; n != 1 {
			t.Fatalf("%s keeps %d messages in the stream, want its marker alone", id, n)
		}
		if _, err := hist.ReadLatest(ctx, id); !errors.Is(err, stream.ErrArchived) {
			t.Fatalf("read of archived %s: %v", id, err)
		}
		got, err := pg.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, before[id]) {
			t.Fatalf("%s: the archive's events differ from what the saga had", id)
		}
		r := withURL(t, url, "describe", id, "--pg-url", pgURL)
		expectCode(t, r, ExitOK)
		if !strings.Contains(r.stdout, "id:       "+id) {
			t.Fatalf("describe of archived %s: %s", id, r)
		}
		if _, err := cl.Start(ctx, "order", order.Input{OrderID: id}, saga.StartOptions{ID: id}); !errors.Is(err, saga.ErrAlreadyStarted) {
			t.Fatalf("a start of archived %s: %v", id, err)
		}
	}
	r := runCLI(t, withPG, "list", "--pg-url", pgURL, "--json")
	expectCode(t, r, ExitOK)
	if strings.Count(r.stdout, `"archived_at"`) != 2 {
		t.Fatalf("list of archived sagas:\n%s", r.stdout)
	}
	r = replayCheck(t, url, orderDefs(), "--from", "archive", "--pg-url", pgURL)
	expectCode(t, r, ExitOK)
	r = replayCheck(t, url, reorderedDefs(), "--from", "archive", "--pg-url", pgURL)
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stdout, "ar-1") || !strings.Contains(r.stdout, "ar-2") {
		t.Fatalf("replay-check of archived sagas:\n%s", r)
	}
	// A signal to an archived saga is set aside, saying so, and the signals
	// behind it are not held.
	if err := cl.Signal(ctx, "ar-1", "late", "x"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the signal to an archived saga set aside", func() bool {
		dead, err := hist.DeadLetters(ctx, 0)
		return err == nil && len(dead) == 1 && strings.Contains(dead[0].Reason, "archived")
	})
	// A second run has nothing left to do.
	r = runCLI(t, withPG, "archive", "--nats-url", url, "--pg-url", pgURL, "--older-than", "0s")
	expectCode(t, r, ExitOK)
	if !strings.HasPrefix(r.stdout, "archived 0 sagas") {
		t.Fatalf("second archive: %s", r)
	}
}

// projectedEngine is a nats-server with a node that runs the order example
// and projects into the database at pgURL, the projection and a client;
// all stop when the test ends.
func projectedEngine(t *testing.T, ctx context.Context, pgURL string) (*natstest.Server, *pgarchive.Store, *saga.Client) {
	t.Helper()
	srv := natstest.Start(t)
	pg, err := pgarchive.Open(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	node, err := worker.New(srv.Conn(), reg, worker.Options{Projection: pg, Logger: quietLogger()})
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
	return srv, pg, cl
}
