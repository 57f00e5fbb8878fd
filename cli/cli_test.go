package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

// syncBuffer is a bytes.Buffer safe for a command writing in one goroutine
// while the test reads in another.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// noEnv isolates a command from the process environment.
func noEnv(string) string { return "" }

// envWith returns a Getenv that knows only SAGA_NATS_URL.
func envWith(url string) func(string) string {
	return func(k string) string {
		if k == "SAGA_NATS_URL" {
			return url
		}
		return ""
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\n--- stdout:\n" + r.stdout + "\n--- stderr:\n" + r.stderr
}

// runCLI runs one command to the end with its own output buffers.
func runCLI(t *testing.T, getenv func(string) string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Run(ctx, args, Env{Stdout: &stdout, Stderr: &stderr, Getenv: getenv, Registry: orderRegistry(t)})
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// withURL runs an admin command against url given by --nats-url.
func withURL(t *testing.T, url string, args ...string) result {
	t.Helper()
	return runCLI(t, noEnv, append(args, "--nats-url", url)...)
}

func expectCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("want exit %d, got:\n%s", want, r)
	}
}

func orderRegistry(t *testing.T) *saga.Registry {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(order.NewService().Definitions()...); err != nil {
		t.Fatal(err)
	}
	return reg
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startEngine runs an embedded nats-server and one node serving the order
// example (svc, or a fresh back office when nil) with its API, and returns
// the server's client URL.
func startEngine(t *testing.T, svc *order.Service) string {
	t.Helper()
	if svc == nil {
		svc = order.NewService()
	}
	srv := natstest.Start(t)
	startNode(t, srv, "test-node", svc.Definitions()...)
	return srv.ClientURL()
}

// startNode runs a node named name, with its API, that registers defs, on
// its own connection to srv; it stops when the test ends.
func startNode(t *testing.T, srv *natstest.Server, name string, defs ...saga.Definition) *worker.Node {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		t.Fatal(err)
	}
	node, err := worker.New(srv.Conn(), reg, worker.Options{NodeName: name, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.Stop(ctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	})
	return node
}

const okInput = `{"order_id":"A-1","items":[{"sku":"book","qty":2}],"amount":42.5}`

func decodeObject(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, s)
	}
	if dec.More() {
		t.Fatalf("stdout has more than one JSON value:\n%s", s)
	}
	return m
}

func requireKeys(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %v", k, m)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"help", "-h", "--help"} {
		r := runCLI(t, noEnv, arg)
		expectCode(t, r, ExitOK)
		for _, want := range []string{"Usage:", "saga-node run", "saga-node demo", "saga-node start", "saga-node describe", "saga-node history", "saga-node wake", "saga-node cancel", "saga-node signal", "saga-node query", "--run-timeout", "SAGA_NATS_URL"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%s: usage lacks %q:\n%s", arg, want, r.stdout)
			}
		}
		if r.stderr != "" {
			t.Errorf("%s: unexpected stderr %q", arg, r.stderr)
		}
	}
}

func TestNoCommandOrUnknownCommand(t *testing.T) {
	r := runCLI(t, noEnv)
	expectCode(t, r, ExitUsage)
	if !strings.Contains(r.stderr, "Usage:") || r.stdout != "" {
		t.Errorf("no command: want usage on stderr only:\n%s", r)
	}

	r = runCLI(t, noEnv, "frobnicate", "x")
	expectCode(t, r, ExitUsage)
	if !strings.Contains(r.stderr, `unknown command "frobnicate"`) || !strings.Contains(r.stderr, "Usage:") {
		t.Errorf("unknown command: stderr should name it and show the usage:\n%s", r)
	}
	if r.stdout != "" {
		t.Errorf("unknown command wrote to stdout: %q", r.stdout)
	}
}

var demoDirRE = regexp.MustCompile(`with JetStream in (\S+), one node`)

func TestDemo(t *testing.T) {
	started := time.Now()
	r := runCLI(t, noEnv, "demo")
	expectCode(t, r, ExitOK)
	if took := time.Since(started); took > 15*time.Second {
		t.Errorf("the demo took %s; it should stay under 15s", took)
	}
	out := r.stdout
	// The demo runs an order that completes, then one that fails and
	// compensates.
	first, second, ok := strings.Cut(out, "started saga demo-order-2")
	if !ok {
		t.Fatalf("demo does not run the compensating order:\n%s", r)
	}
	second, approvals, ok := strings.Cut(second, "started saga demo-approval-1")
	if !ok {
		t.Fatalf("demo does not run the approval:\n%s", r)
	}
	for _, want := range []string{"started saga demo-order-1", "completed in", "ID", "EVENT", "ActivityTaskScheduled", "reserve-inventory", "process-payment", "ship-order"} {
		if !strings.Contains(first, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	start := strings.Index(first, "WorkflowExecutionStarted")
	done := strings.Index(first, "WorkflowExecutionCompleted")
	if start < 0 || done < 0 || start > done {
		t.Errorf("demo timeline should run from WorkflowExecutionStarted to WorkflowExecutionCompleted (at %d, %d)", start, done)
	}
	if strings.Contains(first, "WorkflowExecutionFailed") {
		t.Errorf("demo saga failed")
	}
	// The second saga's timeline: the refund, then the release, then the
	// failure with its compensation completed.
	var at []int
	for _, want := range []string{"fail_step ship-order", "failed as expected", "ActivityTaskFailed",
		"↩ undid process-payment via refund-payment", "↩ undid reserve-inventory via release-inventory",
		"WorkflowExecutionFailed", "↩ compensation completed (2 undone)"} {
		i := strings.Index(second, want)
		if i < 0 || (len(at) > 0 && i < at[len(at)-1]) {
			t.Errorf("compensating demo lacks %q after what comes before it", want)
		}
		at = append(at, i)
	}
	// The approval: queried while it waits, approved by a publish, then
	// one that times out and releases its budget.
	at = nil
	for _, want := range []string{"query status of demo-approval-1:", `"phase":"waiting for approval"`,
		"published {\"by\":\"alice\"", "to saga.signal.demo-approval-1.approve (Content-Type: application/json)",
		"completed: request R-2001 approved by alice", "TimerCreated", "SignalReceived", "approve input=", "TimerCanceled",
		"ActivityTaskScheduled       pay-expense", "WorkflowExecutionCompleted",
		"started saga demo-approval-2", "failed as expected: timed out waiting for approval after 2s", "TimerFired",
		"↩ undid reserve-budget via release-budget", "WorkflowExecutionFailed", "↩ compensation completed (1 undone)"} {
		i := strings.Index(approvals, want)
		if i < 0 || (len(at) > 0 && i < at[len(at)-1]) {
			t.Errorf("approval demo lacks %q after what comes before it", want)
		}
		at = append(at, i)
	}
	m := demoDirRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo does not print its directory:\n%s", out)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("demo left its directory %s behind (stat: %v)", m[1], err)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", r)
	}

	expectCode(t, runCLI(t, noEnv, "demo", "extra"), ExitUsage)
}

func TestAdminCommands(t *testing.T) {
	url := startEngine(t, nil)

	t.Run("start prints only the id", func(t *testing.T) {
		r := withURL(t, url, "start", "order", "--input", okInput)
		expectCode(t, r, ExitOK)
		if !strings.HasSuffix(r.stdout, "\n") || strings.Count(r.stdout, "\n") != 1 {
			t.Fatalf("want exactly one line on stdout, got %q", r.stdout)
		}
		id := strings.TrimSuffix(r.stdout, "\n")
		if err := stream.ValidateID("saga id", id); err != nil {
			t.Fatalf("start printed %q: %v", id, err)
		}
		// The id names a real saga.
		d := withURL(t, url, "describe", id, "--json")
		expectCode(t, d, ExitOK)
		if got := decodeObject(t, d.stdout)["id"]; got != id {
			t.Errorf("describe of the printed id reports id %v", got)
		}
	})

	t.Run("start through SAGA_NATS_URL", func(t *testing.T) {
		r := runCLI(t, envWith(url), "start", "order", "--id", "env-1", "--input", okInput)
		expectCode(t, r, ExitOK)
		if r.stdout != "env-1\n" {
			t.Errorf("want %q, got %q", "env-1\n", r.stdout)
		}
		d := runCLI(t, envWith(url), "describe", "env-1")
		expectCode(t, d, ExitOK)
		// --nats-url wins over the environment.
		r = runCLI(t, envWith("nats://127.0.0.1:1"), "describe", "env-1", "--nats-url", url)
		expectCode(t, r, ExitOK)
		// And the environment is really used: a dead URL fails.
		r = runCLI(t, envWith("nats://127.0.0.1:1"), "describe", "env-1")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "connect to NATS at nats://127.0.0.1:1") {
			t.Errorf("stderr should say which NATS it could not reach:\n%s", r)
		}
	})

	t.Run("start --wait completed", func(t *testing.T) {
		r := withURL(t, url, "start", "order", "--id", "ok-1", "--input", okInput, "--wait", "--timeout", "15s")
		expectCode(t, r, ExitOK)
		m := decodeObject(t, r.stdout)
		requireKeys(t, m, "id", "type", "version", "status", "output")
		if m["id"] != "ok-1" || m["type"] != "order" || m["version"] != float64(1) || m["status"] != "completed" {
			t.Errorf("unexpected description: %v", m)
		}
		out, _ := m["output"].(map[string]any)
		if out["tracking_number"] != "trk-A-1" || out["payment_id"] != "pay-A-1" {
			t.Errorf("output is not the order's result: %v", m["output"])
		}
		if _, ok := m["error"]; ok {
			t.Errorf("completed saga has an error: %v", m["error"])
		}
	})

	t.Run("start --wait failed", func(t *testing.T) {
		in := `{"order_id":"F-1","items":[{"sku":"lamp","qty":1}],"amount":10,"fail_step":"process-payment"}`
		r := withURL(t, url, "start", "--wait", "order", "--input", in, "--id", "fail-1")
		expectCode(t, r, ExitError)
		m := decodeObject(t, r.stdout)
		requireKeys(t, m, "id", "type", "version", "status", "error")
		if m["status"] != "failed" || m["id"] != "fail-1" {
			t.Errorf("want failed fail-1, got %v", m)
		}
		if b, _ := json.Marshal(m["error"]); !strings.Contains(string(b), "process-payment failed for order F-1") {
			t.Errorf("error does not say what failed: %s", b)
		}
		if !strings.Contains(r.stderr, "saga fail-1 is failed") {
			t.Errorf("stderr should say the saga failed:\n%s", r)
		}
	})

	t.Run("start twice", func(t *testing.T) {
		expectCode(t, withURL(t, url, "start", "order", "--id", "dup-1", "--input", okInput), ExitOK)
		r := withURL(t, url, "start", "order", "--id", "dup-1", "--input", okInput)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "already started") {
			t.Errorf("stderr should say already started:\n%s", r)
		}
		if r.stdout != "" {
			t.Errorf("failed start printed %q", r.stdout)
		}
		r = withURL(t, url, "start", "order", "--id", "dup-1", "--input", okInput, "--if-exists", "use_existing")
		expectCode(t, r, ExitOK)
		if r.stdout != "dup-1\n" {
			t.Errorf("use_existing: want the existing id, got %q", r.stdout)
		}
	})

	t.Run("start errors", func(t *testing.T) {
		r := withURL(t, url, "start", "nosuchtype")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "unknown workflow type") {
			t.Errorf("stderr should say unknown workflow type:\n%s", r)
		}
		// Input that does not fit the workflow's input type is refused
		// before anything is written.
		r = withURL(t, url, "start", "order", "--id", "badin-1", "--input", `{"order_id":7}`)
		expectCode(t, r, ExitError)
		r = withURL(t, url, "describe", "badin-1")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "not found") {
			t.Errorf("a refused start left a saga behind:\n%s", r)
		}
		r = withURL(t, url, "start", "order", "--id", "a.b", "--input", okInput)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "invalid identifier") {
			t.Errorf("stderr should say the id is invalid:\n%s", r)
		}
	})

	// ok-1 completed above; fail-1 failed.
	t.Run("describe text", func(t *testing.T) {
		r := withURL(t, url, "describe", "ok-1")
		expectCode(t, r, ExitOK)
		for _, want := range []string{"id:       ok-1\n", "type:     order (version 1)\n", "status:   completed\n", "closed:", "output:", `"tracking_number":"trk-A-1"`, "input:", "events:"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("describe lacks %q:\n%s", want, r.stdout)
			}
		}
		r = withURL(t, url, "describe", "fail-1")
		expectCode(t, r, ExitOK)
		for _, want := range []string{"status:   failed\n", "error:", "process-payment failed for order F-1"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("describe of a failed saga lacks %q:\n%s", want, r.stdout)
			}
		}
	})

	var events float64
	t.Run("describe json", func(t *testing.T) {
		// Flags may come before the saga id.
		r := withURL(t, url, "describe", "--json", "ok-1")
		expectCode(t, r, ExitOK)
		m := decodeObject(t, r.stdout)
		requireKeys(t, m, "id", "type", "version", "status", "output", "events", "started_at", "closed_at")
		if m["id"] != "ok-1" || m["type"] != "order" || m["version"] != float64(1) || m["status"] != "completed" {
			t.Errorf("unexpected description: %v", m)
		}
		events, _ = m["events"].(float64)

		r = withURL(t, url, "describe", "fail-1", "--json")
		expectCode(t, r, ExitOK)
		m = decodeObject(t, r.stdout)
		requireKeys(t, m, "id", "type", "version", "status", "error")
		if m["status"] != "failed" {
			t.Errorf("want failed, got %v", m["status"])
		}
	})

	t.Run("history text", func(t *testing.T) {
		r := withURL(t, url, "history", "ok-1")
		expectCode(t, r, ExitOK)
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) < 3 {
			t.Fatalf("timeline too short:\n%s", r.stdout)
		}
		if f := strings.Fields(lines[0]); strings.Join(f, " ") != "ID TIME ELAPSED EVENT DETAILS" {
			t.Errorf("timeline header is %q", lines[0])
		}
		if f := strings.Fields(lines[1]); len(f) < 4 || f[0] != "0" || f[3] != "WorkflowExecutionStarted" || !strings.Contains(lines[1], "order v1") {
			t.Errorf("first event line is %q", lines[1])
		}
		if last := lines[len(lines)-1]; !strings.Contains(last, "WorkflowExecutionCompleted") || !strings.Contains(last, "trk-A-1") {
			t.Errorf("last event line is %q", last)
		}
		if events > 0 && float64(len(lines)-1) != events {
			t.Errorf("timeline has %d events, describe says %v", len(lines)-1, events)
		}
		if !strings.Contains(r.stdout, "on test-node") {
			t.Errorf("timeline does not say which node ran the activities:\n%s", r.stdout)
		}
	})

	t.Run("history json", func(t *testing.T) {
		for _, id := range []string{"ok-1", "fail-1"} {
			r := withURL(t, url, "history", id, "--json")
			expectCode(t, r, ExitOK)
			var evs []map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &evs); err != nil {
				t.Fatalf("history --json is not a JSON array: %v\n%s", err, r.stdout)
			}
			if len(evs) < 2 {
				t.Fatalf("%s: %d events", id, len(evs))
			}
			for i, e := range evs {
				requireKeys(t, e, "id", "type", "time", "attributes")
				if e["id"] != float64(i) {
					t.Errorf("%s: event %d has id %v; ids must be 0..n-1", id, i, e["id"])
				}
				if ts, _ := e["time"].(string); ts == "" {
					t.Errorf("%s: event %d has no time", id, i)
				} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
					t.Errorf("%s: event %d time %q: %v", id, i, ts, err)
				}
			}
			if evs[0]["type"] != "WorkflowExecutionStarted" {
				t.Errorf("%s: first event is %v", id, evs[0]["type"])
			}
			want := "WorkflowExecutionCompleted"
			if id == "fail-1" {
				want = "WorkflowExecutionFailed"
			}
			if got := evs[len(evs)-1]["type"]; got != want {
				t.Errorf("%s: last event is %v, want %s", id, got, want)
			}
			if id == "ok-1" && events > 0 && float64(len(evs)) != events {
				t.Errorf("history has %d events, describe says %v", len(evs), events)
			}
		}
	})

	t.Run("bad ids and missing sagas", func(t *testing.T) {
		for _, cmd := range []string{"describe", "history"} {
			r := withURL(t, url, cmd, "a.b")
			expectCode(t, r, ExitError)
			if !strings.Contains(r.stderr, "invalid identifier") || !strings.Contains(r.stderr, `"a.b"`) {
				t.Errorf("%s a.b: stderr should say the id is invalid:\n%s", cmd, r)
			}
			r = withURL(t, url, cmd, "no-such-saga")
			expectCode(t, r, ExitError)
			if !strings.Contains(r.stderr, "saga no-such-saga") || !strings.Contains(r.stderr, "not found") {
				t.Errorf("%s of a missing saga: stderr should say it is not found:\n%s", cmd, r)
			}
			if r.stdout != "" {
				t.Errorf("%s of a missing saga printed %q", cmd, r.stdout)
			}
		}
		r := withURL(t, url, "wake", "no-such-saga")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "not found") {
			t.Errorf("wake of a missing saga: stderr should say it is not found:\n%s", r)
		}
		r = withURL(t, url, "wake", "a.b")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "invalid identifier") {
			t.Errorf("wake a.b: stderr should say the id is invalid:\n%s", r)
		}
	})

	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"describe"},
			{"describe", "a", "b"},
			{"describe", "ok-1", "--bogus"},
			{"history"},
			{"history", "ok-1", "--jsn"},
			{"wake"},
			{"wake", "ok-1", "ok-2"},
			{"start"},
			{"start", "order", "extra"},
			{"start", "order", "--input", "{not json"},
			{"start", "order", "--timeout", "soon"},
			{"start", "order", "--input"},
		} {
			r := withURL(t, url, args...)
			if r.code != ExitUsage {
				t.Errorf("%q: want exit %d, got:\n%s", args, ExitUsage, r)
				continue
			}
			if !strings.Contains(r.stderr, "saga-node "+args[0]) {
				t.Errorf("%q: stderr should name the command:\n%s", args, r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("%q: usage error printed %q on stdout", args, r.stdout)
			}
		}
		// -h lists the flags and is not an error.
		r := withURL(t, url, "describe", "-h")
		expectCode(t, r, ExitOK)
		if !strings.Contains(r.stderr, "-json") || !strings.Contains(r.stderr, "-nats-url") {
			t.Errorf("describe -h should list the flags:\n%s", r)
		}
	})

	t.Run("wake", func(t *testing.T) {
		r := withURL(t, url, "wake", "ok-1")
		expectCode(t, r, ExitOK)
		if r.stdout != "woke ok-1\n" {
			t.Errorf("want %q, got %q", "woke ok-1\n", r.stdout)
		}
		// Waking a closed saga leaves it as it was.
		d := withURL(t, url, "describe", "ok-1", "--json")
		expectCode(t, d, ExitOK)
		if m := decodeObject(t, d.stdout); m["status"] != "completed" || (events > 0 && m["events"] != events) {
			t.Errorf("after wake: %v", m)
		}
	})
}

// TestRunningSaga holds a saga in its first activity to see what the
// commands say about a saga in flight, and what --wait does when the
// saga outlives --timeout.
func TestRunningSaga(t *testing.T) {
	svc := order.NewService()
	release := make(chan struct{})
	svc.Hook = func(ctx context.Context, step, orderID string) error {
		if orderID != "HOLD" {
			return nil
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	url := startEngine(t, svc)
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	t.Cleanup(open) // before the node stops: cleanups run last first

	in := `{"order_id":"HOLD","items":[{"sku":"book","qty":1}],"amount":1}`
	r := withURL(t, url, "start", "order", "--id", "hold-1", "--input", in, "--wait", "--timeout", "300ms")
	expectCode(t, r, ExitError)
	if r.stdout != "" {
		t.Errorf("a timed out --wait printed %q", r.stdout)
	}
	// The saga was started: the message must at least name it.
	if !strings.Contains(r.stderr, "hold-1") || !strings.Contains(r.stderr, "deadline exceeded") {
		t.Errorf("stderr should say the wait for hold-1 timed out:\n%s", r)
	}
	natstest.WaitFor(t, 10*time.Second, "the held activity", func() bool { return svc.Calls(order.StepReserveInventory) > 0 })

	r = withURL(t, url, "describe", "hold-1")
	expectCode(t, r, ExitOK)
	for _, want := range []string{"status:   running\n", "updated:", "pending:  reserve-inventory (scheduled at event"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("describe of a running saga lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "closed:") || strings.Contains(r.stdout, "output:") {
		t.Errorf("describe of a running saga shows a close or an output:\n%s", r.stdout)
	}
	r = withURL(t, url, "describe", "hold-1", "--json")
	expectCode(t, r, ExitOK)
	m := decodeObject(t, r.stdout)
	requireKeys(t, m, "pending_activities")
	if m["status"] != "running" {
		t.Errorf("status %v, want running", m["status"])
	}
	r = withURL(t, url, "wake", "hold-1")
	expectCode(t, r, ExitOK)

	// Waiting again on the same id picks up the saga once it goes on.
	open()
	r = withURL(t, url, "start", "order", "--id", "hold-1", "--input", in, "--if-exists", "use_existing", "--wait", "--timeout", "15s")
	expectCode(t, r, ExitOK)
	if m := decodeObject(t, r.stdout); m["status"] != "completed" || m["id"] != "hold-1" {
		t.Errorf("want hold-1 completed, got %v", m)
	}
	if n := svc.Calls(order.StepReserveInventory); n != 1 {
		t.Errorf("reserve-inventory ran %d times; the second start must not start another saga", n)
	}
}

func TestStartWithoutNode(t *testing.T) {
	srv := natstest.Start(t)
	r := withURL(t, srv.ClientURL(), "start", "order", "--input", okInput)
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no node answered on saga.api.start") {
		t.Errorf("stderr should say no node answered:\n%s", r)
	}
	if r.stdout != "" {
		t.Errorf("failed start printed %q", r.stdout)
	}
	r = withURL(t, srv.ClientURL(), "wake", "x")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no node answered") {
		t.Errorf("wake: stderr should say no node answered:\n%s", r)
	}
	// A different prefix is a different engine: nobody answers there either.
	r = withURL(t, startEngine(t, nil), "start", "order", "--input", okInput, "--prefix", "other")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no node answered on other.api.start") {
		t.Errorf("--prefix other: stderr should say no node answered:\n%s", r)
	}
}

func TestNoNATS(t *testing.T) {
	for _, cmd := range []string{"start", "describe", "history", "wake", "cancel"} {
		arg := "x"
		if cmd == "start" {
			arg = "order"
		}
		r := withURL(t, "nats://127.0.0.1:1", cmd, arg)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "connect to NATS at nats://127.0.0.1:1") {
			t.Errorf("%s: stderr should say NATS is unreachable:\n%s", cmd, r)
		}
	}
}

// node runs "saga-node run" in a goroutine until stop is called.
type node struct {
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan int
}

func startRun(t *testing.T, getenv func(string) string, args ...string) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	env := Env{Stdout: io.Discard, Stderr: n.stderr, Getenv: getenv, Registry: orderRegistry(t)}
	go func() { n.done <- Run(ctx, append([]string{"run"}, args...), env) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			t.Errorf("run did not stop")
		}
	})
	return n
}

// stop cancels the command's context and returns its exit code.
func (n *node) stop(t *testing.T) int {
	t.Helper()
	n.cancel()
	select {
	case code := <-n.done:
		n.done <- code // for the cleanup
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("run did not return after its context was canceled:\n%s", n.stderr)
		return -1
	}
}

// waitLog waits until the node logs a line containing s, or fails if run
// returns first.
func (n *node) waitLog(t *testing.T, s string) string {
	t.Helper()
	var out string
	natstest.WaitFor(t, 15*time.Second, "the node to log "+strconv.Quote(s), func() bool {
		if out = n.stderr.String(); strings.Contains(out, s) {
			return true
		}
		select {
		case code := <-n.done:
			n.done <- code
			t.Fatalf("run exited %d before logging %q:\n%s", code, s, n.stderr)
		default:
		}
		return false
	})
	return out
}

func TestRunJoinsExistingNATS(t *testing.T) {
	srv := natstest.Start(t)
	url := srv.ClientURL()
	n := startRun(t, noEnv, "--nats-url", url, "--name", "cli-run-node", "--drain-timeout", "5s")
	n.waitLog(t, "node started")
	if !strings.Contains(n.stderr.String(), "using NATS") {
		t.Errorf("run should log the NATS it uses:\n%s", n.stderr)
	}

	r := withURL(t, url, "start", "order", "--id", "run-1", "--input", okInput, "--wait", "--timeout", "15s")
	expectCode(t, r, ExitOK)
	if m := decodeObject(t, r.stdout); m["status"] != "completed" {
		t.Fatalf("saga did not complete: %v", m)
	}
	h := withURL(t, url, "history", "run-1")
	expectCode(t, h, ExitOK)
	if !strings.Contains(h.stdout, "on cli-run-node") {
		t.Errorf("the saga's activities did not run on the run node:\n%s", h.stdout)
	}

	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d after cancel:\n%s", code, n.stderr)
	}
	log := n.stderr.String()
	for _, want := range []string{"stopping: draining work in progress", "node stopped", "drained=true"} {
		if !strings.Contains(log, want) {
			t.Errorf("run log lacks %q:\n%s", want, log)
		}
	}
	// The node is gone: nobody answers the API.
	r = withURL(t, url, "start", "order", "--input", okInput)
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no node answered") {
		t.Errorf("after run stopped, start should find no node:\n%s", r)
	}
}

// SAGA_NATS_URL is for the admin commands: run joins an existing NATS only
// when --nats-url says so, and otherwise starts its embedded server.
func TestRunIgnoresNATSURLFromEnv(t *testing.T) {
	srv := natstest.Start(t)
	n := startRun(t, envWith(srv.ClientURL()), "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--sync", "interval")
	log := n.waitLog(t, "node started")
	if !strings.Contains(log, "embedded nats-server ready") || strings.Contains(log, "using NATS") {
		t.Fatalf("run followed SAGA_NATS_URL:\n%s", log)
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d after cancel:\n%s", code, n.stderr)
	}
}

func TestRunLogLevel(t *testing.T) {
	srv := natstest.Start(t)
	n := startRun(t, noEnv, "--nats-url", srv.ClientURL(), "--log-level", "warn")
	// At warn level there is no "node started"; wait for the API instead.
	var id string
	natstest.WaitFor(t, 10*time.Second, "the run node's API", func() bool {
		r := runCLI(t, envWith(srv.ClientURL()), "start", "order", "--input", okInput)
		id = strings.TrimSpace(r.stdout)
		return r.code == ExitOK
	})
	r := runCLI(t, envWith(srv.ClientURL()), "describe", id, "--json")
	expectCode(t, r, ExitOK)
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d after cancel:\n%s", code, n.stderr)
	}
	if strings.Contains(n.stderr.String(), "level=INFO") {
		t.Errorf("--log-level warn logged info lines:\n%s", n.stderr)
	}
}

var readyURLRE = regexp.MustCompile(`msg="embedded nats-server ready" url=(nats://\S+)`)

func TestRunEmbeddedServer(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	runOnce := func(t *testing.T) (*node, string) {
		n := startRun(t, noEnv, "--data", data, "--listen", "127.0.0.1:0", "--sync", "interval", "--drain-timeout", "5s")
		log := n.waitLog(t, "node started")
		m := readyURLRE.FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("run does not log its server's URL:\n%s", log)
		}
		if !strings.Contains(log, "sync=interval") {
			t.Errorf("run does not log its sync mode:\n%s", log)
		}
		return n, m[1]
	}

	n, url := runOnce(t)
	r := withURL(t, url, "start", "order", "--id", "emb-1", "--input", okInput, "--wait", "--timeout", "15s")
	expectCode(t, r, ExitOK)
	if m := decodeObject(t, r.stdout); m["status"] != "completed" {
		t.Fatalf("saga did not complete: %v", m)
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d after cancel:\n%s", code, n.stderr)
	}
	if !strings.Contains(n.stderr.String(), "node stopped") {
		t.Errorf("run log lacks node stopped:\n%s", n.stderr)
	}
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Errorf("run kept no JetStream data under --data: %v", err)
	}
	// The server went down with the command.
	r = withURL(t, url, "describe", "emb-1")
	expectCode(t, r, ExitError)

	// A second run on the same directory still has the saga.
	n, url = runOnce(t)
	r = withURL(t, url, "describe", "emb-1", "--json")
	expectCode(t, r, ExitOK)
	if m := decodeObject(t, r.stdout); m["status"] != "completed" {
		t.Errorf("after a restart: %v", m)
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("second run exited %d after cancel:\n%s", code, n.stderr)
	}
}

func TestRunBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--sync", "sometimes"}, `--sync must be "always" or "interval", got "sometimes"`},
		{[]string{"run", "--log-level", "loud"}, "--log-level"},
		{[]string{"run", "extra"}, "expected no arguments, got 1"},
		{[]string{"run", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"run", "--history-shards", "many"}, "invalid value"},
		{[]string{"run", "--snapshot-interval", "-1"}, "--snapshot-interval must be 0 (none) or positive, got -1"},
		{[]string{"run", "--max-snapshots", "65"}, "--max-snapshots must be 1 to 64, got 65"},
		{[]string{"run", "--max-snapshots", "0"}, "--max-snapshots must be 1 to 64, got 0"},
	} {
		// --data and --listen keep a regression that starts a node anyway
		// out of the working directory and off the default port.
		args := append(tc.args, "--data", t.TempDir(), "--listen", "127.0.0.1:0")
		r := runCLI(t, noEnv, args...)
		if r.code != ExitUsage {
			t.Errorf("%q: want exit %d, got:\n%s", tc.args, ExitUsage, r)
			continue
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: stderr lacks %q:\n%s", tc.args, tc.want, r.stderr)
		}
	}
	// An unreachable NATS is an error, not a usage error.
	r := runCLI(t, noEnv, "run", "--nats-url", "nats://127.0.0.1:1")
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "connect to NATS at nats://127.0.0.1:1") {
		t.Errorf("stderr should say NATS is unreachable:\n%s", r)
	}
}

func TestBench(t *testing.T) {
	r := runCLI(t, noEnv, "bench", "--sagas", "30", "--in-flight", "5", "--idle", "5", "--raw-duration", "100ms")
	expectCode(t, r, ExitOK)
	for _, want := range []string{"running 30 order sagas, 5 in flight", "30 sagas in", "sagas/s", "start to end: p50", "0 conflicts"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("bench output lacks %q:\n%s", want, r.stdout)
		}
	}
	expectCode(t, runCLI(t, noEnv, "bench", "--sagas", "0"), ExitUsage)
	expectCode(t, runCLI(t, noEnv, "bench", "--sync", "never"), ExitUsage)
}

// A start retried with the same id and request id succeeds: the first
// attempt created the saga.
func TestStartRetryWithRequestID(t *testing.T) {
	srv := natstest.Start(t)
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	n, err := worker.New(srv.Conn(), reg, worker.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Stop(context.Background()) }()
	args := []string{"start", "order", "--id", "retried", "--input", okInput, "--request-id", "req-1"}
	expectCode(t, withURL(t, srv.ClientURL(), args...), ExitOK)
	r := withURL(t, srv.ClientURL(), args...)
	expectCode(t, r, ExitOK)
	if strings.TrimSpace(r.stdout) != "retried" {
		t.Fatalf("retry printed %q", r.stdout)
	}
	args[len(args)-1] = "req-2"
	expectCode(t, withURL(t, srv.ClientURL(), args...), ExitError)
}
