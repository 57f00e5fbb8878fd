package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

// reorderedOrder is the order workflow after a careless change: payment
// before the reservation, same name and version, no GetVersion.
var reorderedOrder = saga.NewWorkflow("order", 1, func(ctx saga.Context, in order.Input) (order.Output, error) {
	pay, err := saga.ExecuteActivity(ctx, order.ProcessPayment, order.PaymentInput{OrderID: in.OrderID, Amount: in.Amount}).Get(ctx)
	if err != nil {
		return order.Output{}, err
	}
	res, err := saga.ExecuteActivity(ctx, order.ReserveInventory, order.ReserveInput{OrderID: in.OrderID, Items: in.Items}).Get(ctx)
	if err != nil {
		return order.Output{}, err
	}
	return order.Output{OrderID: in.OrderID, ReservationID: res.ReservationID, PaymentID: pay.PaymentID}, nil
})

// replayCheck runs "replay-check" against url with the workflow code of
// defs, as a binary built with them would.
func replayCheck(t *testing.T, url string, defs []saga.Definition, args ...string) result {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	args = append([]string{"replay-check", "--nats-url", url}, args...)
	code := Run(ctx, args, Env{Stdout: &stdout, Stderr: &stderr, Getenv: noEnv, Registry: reg})
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func orderDefs() []saga.Definition { return order.NewService().Definitions() }

// reorderedDefs is the order example with reorderedOrder for its workflow.
func reorderedDefs() []saga.Definition {
	defs := []saga.Definition{reorderedOrder}
	for _, d := range orderDefs() {
		if d != saga.Definition(order.Workflow) {
			defs = append(defs, d)
		}
	}
	return defs
}

const nonDeterministic = "event 1: history has ActivityTaskScheduled reserve-inventory, code asked for ActivityTaskScheduled process-payment"

func TestReplayCheck(t *testing.T) {
	url := startEngine(t, nil)
	expectCode(t, withURL(t, url, "start", "order", "--id", "rc-1", "--input", okInput, "--wait"), ExitOK)
	// Histories written from here on pass --since.
	mid := time.Now()
	expectCode(t, withURL(t, url, "start", "order", "--id", "rc-2", "--input", `{"order_id":"rc-2","amount":3}`, "--wait"), ExitOK)
	// One that compensates: its history has the undo steps too.
	expectCode(t, withURL(t, url, "start", "order", "--id", "rc-3", "--input", `{"order_id":"rc-3","fail_step":"ship-order"}`, "--wait"), ExitError)

	t.Run("the code that wrote them replays them", func(t *testing.T) {
		r := replayCheck(t, url, orderDefs())
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 3 sagas of type order: all replay\n" || r.stderr != "" {
			t.Fatalf("unexpected output:\n%s", r)
		}
	})

	t.Run("reordered code would not replay them", func(t *testing.T) {
		r := replayCheck(t, url, reorderedDefs())
		expectCode(t, r, ExitError)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) != 5 || lines[0] != "checked 3 sagas of type order: 3 would not replay" || strings.Fields(lines[1])[0] != "SAGA" {
			t.Fatalf("unexpected output:\n%s", r)
		}
		for i, id := range []string{"rc-1", "rc-2", "rc-3"} {
			if f := strings.Fields(lines[2+i]); f[0] != id || f[1] != "order" || f[2] != "1" || f[3] != "nondeterminism" || !strings.HasSuffix(lines[2+i], "  "+nonDeterministic) {
				t.Errorf("line for %s: %q", id, lines[2+i])
			}
		}
		if !strings.Contains(r.stderr, "saga-node replay-check: sagas would not replay on this code: 3 of 3 checked (3 failed, 0 written by newer code)") {
			t.Errorf("stderr should count the failures:\n%s", r)
		}
	})

	t.Run("json", func(t *testing.T) {
		r := replayCheck(t, url, reorderedDefs(), "--json", "--limit", "2")
		expectCode(t, r, ExitError)
		m := decodeObject(t, r.stdout)
		requireKeys(t, m, "checked", "ok", "failed", "newer_code", "skipped", "types", "skipped_types", "failures")
		if m["checked"] != 2.0 || m["ok"] != 0.0 || m["failed"] != 2.0 || m["newer_code"] != 0.0 || m["skipped"] != 0.0 {
			t.Fatalf("counts: %v", m)
		}
		if types, _ := m["types"].(map[string]any); types["order"] != 2.0 {
			t.Errorf("types: %v", m["types"])
		}
		failures, _ := m["failures"].([]any)
		if len(failures) != 2 {
			t.Fatalf("failures: %v", m["failures"])
		}
		f, _ := failures[0].(map[string]any)
		requireKeys(t, f, "saga_id", "type", "version", "event_id", "kind", "error")
		if f["saga_id"] != "rc-1" || f["type"] != "order" || f["version"] != 1.0 || f["event_id"] != 1.0 || f["kind"] != "nondeterminism" || f["error"] != nonDeterministic {
			t.Errorf("failure: %v", f)
		}

		// A passing check prints the same shape, with an empty list.
		r = replayCheck(t, url, orderDefs(), "--json")
		expectCode(t, r, ExitOK)
		m = decodeObject(t, r.stdout)
		if list, ok := m["failures"].([]any); !ok || len(list) != 0 || m["ok"] != 3.0 {
			t.Errorf("passing check: %v", m)
		}
	})

	t.Run("since", func(t *testing.T) {
		r := replayCheck(t, url, reorderedDefs(), "--since", mid.Format(time.RFC3339Nano))
		expectCode(t, r, ExitError)
		if !strings.HasPrefix(r.stdout, "checked 2 sagas of type order: 2 would not replay\n") || strings.Contains(r.stdout, "rc-1") {
			t.Fatalf("--since a time:\n%s", r)
		}
		r = replayCheck(t, url, orderDefs(), "--since", "1h")
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 3 sagas of type order: all replay\n" {
			t.Fatalf("--since 1h:\n%s", r)
		}
		r = replayCheck(t, url, orderDefs(), "--since", time.Now().Add(time.Hour).Format(time.RFC3339))
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 0 sagas: nothing to replay\n" {
			t.Fatalf("--since the future:\n%s", r)
		}
	})

	t.Run("type", func(t *testing.T) {
		defs := append(orderDefs(), approval.NewService().Definitions()...)
		r := replayCheck(t, url, defs, "--type", "approval")
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 0 sagas: nothing to replay\n" {
			t.Fatalf("--type approval:\n%s", r)
		}
		r = replayCheck(t, url, defs, "--type", "order", "--limit", "1")
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 1 saga of type order: all replay\n" {
			t.Fatalf("--type order --limit 1:\n%s", r)
		}
		// A type the binary does not have would check nothing.
		r = replayCheck(t, url, orderDefs(), "--type", "approval")
		expectCode(t, r, ExitUsage)
		if !strings.Contains(r.stderr, "--type approval: this binary has no workflow approval (it has: order)") {
			t.Fatalf("--type unknown:\n%s", r)
		}
	})

	t.Run("types this binary does not have are skipped", func(t *testing.T) {
		r := replayCheck(t, url, approval.NewService().Definitions())
		expectCode(t, r, ExitOK)
		if r.stdout != "checked 0 sagas: nothing to replay\nskipped 3 sagas of types this binary does not have: order (3)\n" {
			t.Fatalf("unexpected output:\n%s", r)
		}
	})

	t.Run("a history written by newer code", func(t *testing.T) {
		// Version 2 of order, which no node here runs: the saga waits.
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		cl, err := saga.NewClient(nc, saga.ClientOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		in, err := stream.PayloadFromJSON([]byte(okInput))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.StartPayload(t.Context(), "order", 2, in, saga.StartOptions{ID: "rc-v2"}); err != nil {
			t.Fatal(err)
		}
		r := replayCheck(t, url, orderDefs())
		expectCode(t, r, ExitError)
		if !strings.HasPrefix(r.stdout, "checked 4 sagas of type order: 1 would not replay (0 failed, 1 written by newer code)\n") ||
			!strings.Contains(r.stdout, "newer_code  the saga runs version 2 of workflow order, this code is version 1") {
			t.Fatalf("unexpected output:\n%s", r)
		}
		if !strings.Contains(r.stderr, "(0 failed, 1 written by newer code)") {
			t.Errorf("stderr:\n%s", r)
		}
	})
}

func TestReplayCheckArchive(t *testing.T) {
	// The archive needs its URL, and then is read rather than NATS
	// (unreachable here).
	var gotURL string
	src := &listSource{err: stream.ErrUnavailable}
	wired := openArchive
	openArchive = func(_ context.Context, url string) (replaycheck.Source, func(), error) {
		gotURL = url
		return src, func() { src.closed = true }, nil
	}
	t.Cleanup(func() { openArchive = wired })
	r := replayCheck(t, "nats://127.0.0.1:1", orderDefs(), "--from", "archive")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no archive source: --pg-url not set") {
		t.Fatalf("unexpected output:\n%s", r)
	}
	r = replayCheck(t, "nats://127.0.0.1:1", orderDefs(), "--from", "archive", "--pg-url", "postgres://archive", "--type", "order", "--limit", "5")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "list sagas: "+stream.ErrUnavailable.Error()) || gotURL != "postgres://archive" || !src.closed {
		t.Fatalf("unexpected output:\n%s", r)
	}
	if src.filter.Type != "order" || src.filter.Limit != 5 {
		t.Errorf("the archive was asked for %+v", src.filter)
	}
}

// listSource is an archive that fails to list.
type listSource struct {
	err    error
	filter replaycheck.Filter
	closed bool
}

func (s *listSource) SagaIDs(_ context.Context, f replaycheck.Filter) ([]string, error) {
	s.filter = f
	return nil, s.err
}

func (s *listSource) Events(context.Context, string) ([]stream.Event, error) {
	return nil, errors.New("not listed")
}

func TestReplayCheckBadUse(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--limit", "-1"}, "--limit must be 0 (all) or more"},
		{[]string{"--from", "disk"}, `--from must be "stream" or "archive"`},
		{[]string{"--since", "yesterday"}, "--since takes a duration (24h) or an RFC 3339 time"},
		{[]string{"--since", "-1h"}, "--since must not be negative"},
		{[]string{"--deadlock-timeout", "0s"}, "--deadlock-timeout must be positive"},
		{[]string{"--history-shards", "0"}, "--history-shards must be at least 1"},
		{[]string{"--type", "a.b"}, "--type: invalid identifier"},
		{[]string{"extra"}, "expected no arguments"},
	} {
		r := replayCheck(t, "nats://127.0.0.1:1", orderDefs(), c.args...)
		expectCode(t, r, ExitUsage)
		if !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: stderr lacks %q:\n%s", c.args, c.want, r)
		}
	}
	r := replayCheck(t, "nats://127.0.0.1:1", orderDefs())
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "connect to NATS at nats://127.0.0.1:1") {
		t.Errorf("no NATS:\n%s", r)
	}
	// Streams nobody set up under this prefix.
	r = replayCheck(t, startEngine(t, nil), orderDefs(), "--prefix", "other")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "history stream OTHER_HISTORY_0") || !strings.Contains(r.stderr, "has a node set up the streams") {
		t.Errorf("other prefix:\n%s", r)
	}

	r = runCLI(t, noEnv, "help")
	if !strings.Contains(r.stdout, "saga-node replay-check [--type T] [--since D] [--from stream|archive] [--json] [--limit N]") {
		t.Errorf("usage lacks replay-check:\n%s", r.stdout)
	}
	var out bytes.Buffer
	if code := Run(t.Context(), []string{"replay-check", "-h"}, Env{Stdout: &out, Stderr: &out, Getenv: noEnv}); code != ExitOK || !strings.Contains(out.String(), "-deadlock-timeout") {
		t.Errorf("-h: exit %d\n%s", code, out.String())
	}
}
