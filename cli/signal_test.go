package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// approvalInput is an approval that waits an hour: it ends only when a
// test decides it.
const approvalInput = `{"request_id":"r-1","amount":12.5,"requester":"bob","timeout":"1h"}`

// startApprovalEngine runs an embedded nats-server and one node serving
// the order and approval examples with its API, and returns the server's
// client URL.
func startApprovalEngine(t *testing.T) string {
	t.Helper()
	srv := natstest.Start(t)
	defs := append(order.NewService().Definitions(), approval.NewService().Definitions()...)
	startNode(t, srv, "test-node", defs...)
	return srv.ClientURL()
}

// awaitPhase runs "query <id> status --json" until the approval reports
// phase, and returns the status.
func awaitPhase(t *testing.T, url, id, phase string) map[string]any {
	t.Helper()
	var st map[string]any
	var last result
	natstest.WaitFor(t, 15*time.Second, id+" in phase "+phase, func() bool {
		last = withURL(t, url, "query", id, approval.QueryStatus, "--json")
		if last.code != ExitOK {
			return false
		}
		st = decodeObject(t, last.stdout)
		return st["phase"] == phase
	})
	return st
}

var signalSentRE = regexp.MustCompile(`^signal approve sent to ap-1 \(inbox sequence [1-9][0-9]*\)\n$`)

func TestSignalAndQuery(t *testing.T) {
	url := startApprovalEngine(t)
	expectCode(t, withURL(t, url, "start", "approval", "--id", "ap-1", "--input", approvalInput), ExitOK)

	t.Run("query while the saga waits", func(t *testing.T) {
		st := awaitPhase(t, url, "ap-1", approval.PhaseWaiting)
		if st["request_id"] != "r-1" || st["amount"] != 12.5 {
			t.Errorf("status %v: want request r-1 of 12.5", st)
		}
		deadline, _ := st["deadline"].(string)
		if at, err := time.Parse(time.RFC3339Nano, deadline); err != nil || time.Until(at) < 50*time.Minute {
			t.Errorf("deadline %q (%v): want about an hour from now", deadline, err)
		}
		// --json prints one line; the default is indented.
		r := withURL(t, url, "query", "ap-1", "status", "--json")
		expectCode(t, r, ExitOK)
		if strings.Count(r.stdout, "\n") != 1 {
			t.Errorf("query --json should print one line:\n%s", r)
		}
		r = withURL(t, url, "query", "ap-1", "status", "--input", "{}")
		expectCode(t, r, ExitOK)
		if !strings.Contains(r.stdout, "\n  \"phase\": \"waiting for approval\",\n") {
			t.Errorf("query should print the result as indented JSON:\n%s", r)
		}
	})

	t.Run("query errors", func(t *testing.T) {
		r := withURL(t, url, "query", "ap-1", "nope")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, `unknown query "nope"`) || !strings.Contains(r.stderr, "status") || r.stdout != "" {
			t.Errorf("an unknown query should be named, with the known ones:\n%s", r)
		}
		r = withURL(t, url, "query", "no-such-saga", "status")
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga-node query: saga no-such-saga not found") {
			t.Errorf("stderr should say the saga is not found:\n%s", r)
		}
		// The handler takes no argument it could decode a string into.
		r = withURL(t, url, "query", "ap-1", "status", "--input", `"text"`)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga-node query: query status of ap-1") || !strings.Contains(r.stderr, "decode input") {
			t.Errorf("an input that does not fit the handler should be refused:\n%s", r)
		}
	})

	t.Run("signal errors", func(t *testing.T) {
		r := withURL(t, url, "signal", "no-such-saga", "approve", "--input", `{"by":"alice"}`)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga-node signal: saga no-such-saga not found") || r.stdout != "" {
			t.Errorf("stderr should say the saga is not found:\n%s", r)
		}
	})

	t.Run("usage errors", func(t *testing.T) {
		for _, args := range [][]string{
			{"signal"},
			{"signal", "ap-1"},
			{"signal", "ap-1", "approve", "extra"},
			{"signal", "ap-1", "approve", "--input", "{not json"},
			{"signal", "ap-1", "approve", "--input"},
			{"signal", "ap-1", "approve", "--bogus"},
			{"query"},
			{"query", "ap-1"},
			{"query", "ap-1", "status", "--input", "{not json"},
			{"query", "ap-1", "status", "--jsn"},
		} {
			r := withURL(t, url, args...)
			if r.code != ExitUsage {
				t.Errorf("%q: want exit %d, got:\n%s", args, ExitUsage, r)
				continue
			}
			if !strings.Contains(r.stderr, "saga-node "+args[0]) || r.stdout != "" {
				t.Errorf("%q: stderr should name the command, stdout stay empty:\n%s", args, r)
			}
		}
		for _, args := range [][]string{
			{"signal", "a.b", "approve"},
			{"signal", "ap-1", "a.b"},
			{"query", "a.b", "status"},
			{"query", "ap-1", "a b"},
		} {
			r := withURL(t, url, args...)
			expectCode(t, r, ExitError)
			if !strings.Contains(r.stderr, "invalid identifier") {
				t.Errorf("%q: stderr should say the name is invalid:\n%s", args, r)
			}
		}
	})

	t.Run("signal approves", func(t *testing.T) {
		r := withURL(t, url, "signal", "ap-1", "approve", "--input", `{"by":"alice","comment":"fine"}`, "--msg-id", "approve-ap-1")
		expectCode(t, r, ExitOK)
		if !signalSentRE.MatchString(r.stdout) {
			t.Errorf("signal printed %q, want it to name the signal, the saga and the inbox sequence", r.stdout)
		}
		var d map[string]any
		natstest.WaitFor(t, 15*time.Second, "ap-1 to end", func() bool {
			r := withURL(t, url, "describe", "ap-1", "--json")
			d = decodeObject(t, r.stdout)
			return d["status"] != "running"
		})
		out, _ := d["output"].(map[string]any)
		if d["status"] != "completed" || out["approved_by"] != "alice" {
			t.Fatalf("ap-1: want completed, approved by alice: %v", d)
		}
		evs := historyJSON(t, url, "ap-1")
		var signals []map[string]any
		for _, e := range evs {
			if e["type"] == string(stream.SignalReceived) {
				signals = append(signals, attrs(e))
			}
		}
		if len(signals) != 1 || signals[0]["name"] != "approve" || signals[0]["msg_id"] != "approve-ap-1" {
			t.Errorf("want one SignalReceived approve with msg_id approve-ap-1, got %v", signals)
		}
		r = withURL(t, url, "history", "ap-1")
		expectCode(t, r, ExitOK)
		for _, want := range []string{"TimerCreated", "waits 1h0m0s", `SignalReceived              approve input={"by":"alice","comment":"fine"}`, "msg_id=approve-ap-1", "TimerCanceled", "timer of event"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("timeline lacks %q:\n%s", want, r.stdout)
			}
		}
	})

	t.Run("ended saga", func(t *testing.T) {
		r := withURL(t, url, "signal", "ap-1", "reject", "--input", `{"by":"mallory"}`)
		expectCode(t, r, ExitError)
		if !strings.Contains(r.stderr, "saga-node signal: saga ap-1 already ended (completed): a signal can no longer reach it") || r.stdout != "" {
			t.Errorf("stderr should say the saga ended, and how:\n%s", r)
		}
		// A query still answers: the handler sees the state the saga
		// ended in.
		r = withURL(t, url, "query", "ap-1", "status", "--json")
		expectCode(t, r, ExitOK)
		if st := decodeObject(t, r.stdout); st["phase"] != approval.PhaseApproved || st["decided_by"] != "alice" {
			t.Errorf("status of the ended saga: %v", st)
		}
	})
}

func TestHelpListsSignalAndQuery(t *testing.T) {
	r := runCLI(t, noEnv, "help")
	expectCode(t, r, ExitOK)
	for _, want := range []string{"saga-node signal   <saga-id> <name> [--input JSON] [--msg-id ID]", "saga-node query    <saga-id> <name> [--input JSON] [--json]"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("usage lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCLI(t, noEnv, "signal", "-h")
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stderr, "-msg-id") || !strings.Contains(r.stderr, "-input") {
		t.Errorf("signal -h should list its flags:\n%s", r)
	}
}

// apiCall sends a request to an API subject and returns the reply's body
// and error code ("" for success).
func apiCall(t *testing.T, nc *nats.Conn, subject string, req any) ([]byte, string) {
	t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subject, body, 15*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	return msg.Data, msg.Header.Get(micro.ErrorCodeHeader)
}

// The API's signal endpoint, as any NATS client uses it.
func TestAPISignal(t *testing.T) {
	url := startApprovalEngine(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject := stream.Config{Prefix: "saga"}.APISubject("signal")
	expectCode(t, withURL(t, url, "start", "approval", "--id", "ap-s", "--input", approvalInput), ExitOK)

	for _, tc := range []struct {
		req  any
		code string
	}{
		{api.SignalRequest{ID: "no-such-saga", Name: "approve"}, api.CodeNotFound},
		{api.SignalRequest{ID: "a.b", Name: "approve"}, api.CodeBadRequest},
		{api.SignalRequest{ID: "ap-s", Name: "a.b"}, api.CodeBadRequest},
		{map[string]any{"id": "ap-s", "name": "approve", "bogus": 1}, api.CodeBadRequest},
	} {
		body, code := apiCall(t, nc, subject, tc.req)
		if code != tc.code {
			t.Errorf("signal %+v: code %q, want %s: %s", tc.req, code, tc.code, body)
		}
	}

	// A signal without a value is one: the workflow gets its zero value.
	body, code := apiCall(t, nc, subject, api.SignalRequest{ID: "ap-s", Name: "reject", MsgID: "reject-ap-s"})
	var res api.SignalResponse
	if code != "" || json.Unmarshal(body, &res) != nil || res.ID != "ap-s" || res.InboxSeq == 0 {
		t.Fatalf("signal: code %q, reply %s", code, body)
	}
	var d map[string]any
	natstest.WaitFor(t, 15*time.Second, "ap-s to end", func() bool {
		d = decodeObject(t, withURL(t, url, "describe", "ap-s", "--json").stdout)
		return d["status"] != "running"
	})
	if b, _ := json.Marshal(d["error"]); d["status"] != "failed" || !strings.Contains(string(b), "rejected by an unnamed approver") {
		t.Errorf("ap-s: want failed, rejected: %v", d)
	}

	body, code = apiCall(t, nc, subject, api.SignalRequest{ID: "ap-s", Name: "approve", Input: json.RawMessage(`{"by":"alice"}`)})
	var e saga.StructuredError
	if code != api.CodeConflict || json.Unmarshal(body, &e) != nil || e.Context["status"] != "failed" {
		t.Errorf("signal to an ended saga: code %q, body %s; want 409 naming the status", code, body)
	}
}

// A query reaches a node that runs the saga's workflow type whichever
// node takes it: one without the type relays it. Micro spreads requests
// over the nodes at random, so many queries go through both.
func TestAPIQueryRelay(t *testing.T) {
	srv := natstest.Start(t)
	startNode(t, srv, "order-only", order.NewService().Definitions()...)
	withApproval := startNode(t, srv, "with-approval", approval.NewService().Definitions()...)
	url := srv.ClientURL()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	cfg := stream.Config{Prefix: "saga"}

	// A bystander on the approval nodes' subject sees every relayed query.
	var relayed atomic.Int32
	sub, err := nc.Subscribe(cfg.APISubject("query")+"."+approval.WorkflowType, func(*nats.Msg) { relayed.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	expectCode(t, withURL(t, url, "start", "approval", "--id", "ap-q", "--input", approvalInput), ExitOK)
	awaitPhase(t, url, "ap-q", approval.PhaseWaiting)
	for i := range 40 {
		body, code := apiCall(t, nc, cfg.APISubject("query"), api.QueryRequest{ID: "ap-q", Name: approval.QueryStatus})
		var res api.QueryResponse
		if code != "" || json.Unmarshal(body, &res) != nil {
			t.Fatalf("query %d: code %q, reply %s", i, code, body)
		}
		var st approval.Status
		if err := json.Unmarshal(res.Result, &st); err != nil || st.Phase != approval.PhaseWaiting || st.RequestID != "r-1" {
			t.Fatalf("query %d: result %s (%v)", i, res.Result, err)
		}
	}
	// Forty queries spread at random over two nodes: the odds that none
	// went through the node without the type are 2^-40.
	natstest.WaitFor(t, 5*time.Second, "a relayed query", func() bool { return relayed.Load() > 0 })
	// Gone before the approval node goes: a subscriber keeps "no
	// responders" from coming back.
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Errors are relayed as the answering node gave them.
	for i := range 10 {
		body, code := apiCall(t, nc, cfg.APISubject("query"), api.QueryRequest{ID: "ap-q", Name: "nope"})
		if code != api.CodeBadRequest || !strings.Contains(string(body), "status") {
			t.Fatalf("unknown query %d: code %q, body %s; want 400 naming the known query", i, code, body)
		}
	}
	body, code := apiCall(t, nc, cfg.APISubject("query"), api.QueryRequest{ID: "ap-q", Name: approval.QueryStatus, Input: json.RawMessage(`"text"`)})
	if code != api.CodeBadRequest || !strings.Contains(string(body), "decode input") {
		t.Errorf("query with an input the handler cannot decode: code %q, body %s; want 400", code, body)
	}
	body, code = apiCall(t, nc, cfg.APISubject("query"), api.QueryRequest{ID: "no-such-saga", Name: approval.QueryStatus})
	if code != api.CodeNotFound {
		t.Errorf("query of a missing saga: code %q, body %s; want 404", code, body)
	}
	// A type's own subject does not relay: the saga is of another type.
	body, code = apiCall(t, nc, cfg.APISubject("query")+".order", api.QueryRequest{ID: "ap-q", Name: approval.QueryStatus})
	if code != api.CodeBadRequest || !strings.Contains(string(body), "approval") {
		t.Errorf("query on another type's subject: code %q, body %s; want 400 naming the type", code, body)
	}

	// Without a node that runs the type, the answer says so at once.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := withApproval.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	body, code = apiCall(t, nc, cfg.APISubject("query"), api.QueryRequest{ID: "ap-q", Name: approval.QueryStatus})
	if code != api.CodeUnavailable || !strings.Contains(string(body), "no node runs workflow type approval") {
		t.Errorf("query without an approval node: code %q, body %s; want 503", code, body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the 503 took %s: it should not wait for a timeout", took)
	}
	r := withURL(t, url, "query", "ap-q", approval.QueryStatus)
	expectCode(t, r, ExitError)
	if !strings.Contains(r.stderr, "no node runs workflow type approval") {
		t.Errorf("query without an approval node: stderr should say no node runs the type:\n%s", r)
	}
}
