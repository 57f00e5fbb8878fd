package cli

import (
	"context"
	"encoding/json"
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
	if !strings.Contains(r.stdout, "version 1") {
		t.Fatalf("migrate: %s", r)
	}
	r = runCLI(t, withPG, "list")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "needs the Postgres projection") {
		t.Fatalf("list without --pg-url: %s", r)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	pg, err := pgarchive.Open(ctx, pgURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	node, err := worker.New(srv.Conn(), reg, worker.Options{Projection: pg, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = node.Stop(context.Background()) }()
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
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
