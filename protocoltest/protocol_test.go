package protocoltest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// Names from docs/protocol.md, spelled out here rather than imported: the
// test must work from the document alone.
const (
	inboxStream      = "SAGA_INBOX"
	deadLetterStream = "SAGA_DEAD_LETTERS"

	hdrSagaID           = "Saga-Id"
	hdrContentType      = "Content-Type"
	hdrMsgID            = "Nats-Msg-Id"
	hdrErrorCode        = "Nats-Service-Error-Code"
	hdrError            = "Nats-Service-Error"
	hdrDeadLetterReason = "Saga-Dead-Letter-Reason"
	hdrDeadLetterSubj   = "Saga-Dead-Letter-Subject"

	contentJSON = "application/json"
)

// approvalInput is the approval example's input, as docs/protocol.md
// gives it; the timeout is long enough never to pass during the test.
const approvalInput = `{"request_id":"%s","amount":120.5,"requester":"bob","timeout":"1h"}`

// binary is the saga-node that TestMain builds once for every test.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "protocoltest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "protocoltest:", err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "saga-node")
	build := exec.Command("go", "build", "-o", binary, "../cmd/saga-node")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "protocoltest: cannot build saga-node (go build -o %s ../cmd/saga-node): %v\n%s", binary, err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		_ = os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// TestRawNATSClientDrivesSagas starts, queries, signals and cancels sagas
// of a saga-node process with only a NATS client, as docs/protocol.md says.
func TestRawNATSClientDrivesSagas(t *testing.T) {
	e := startEngine(t)

	t.Run("inbox stream", func(t *testing.T) {
		info, err := e.js.Stream(e.ctx, inboxStream)
		if err != nil {
			t.Fatalf("stream %s: %v", inboxStream, err)
		}
		cfg := info.CachedInfo().Config
		if cfg.Retention != jetstream.WorkQueuePolicy {
			t.Errorf("%s retention %v, want work queue", inboxStream, cfg.Retention)
		}
		for _, s := range []string{"saga.start.*", "saga.signal.*.*", "saga.cancel.*"} {
			if !slices.Contains(cfg.Subjects, s) {
				t.Errorf("%s subjects %v lack %s", inboxStream, cfg.Subjects, s)
			}
		}
		if cfg.Duplicates != 2*time.Minute {
			t.Errorf("%s duplicate window %v, want 2m", inboxStream, cfg.Duplicates)
		}
	})

	t.Run("order started by publish completes", func(t *testing.T) {
		const id = "p-1"
		input := `{"order_id":"p-1","items":[{"sku":"book","qty":1}],"amount":5}`
		ack, err := e.js.PublishMsg(e.ctx, &nats.Msg{
			Subject: "saga.start.order",
			Header:  nats.Header{hdrSagaID: {id}, hdrContentType: {contentJSON}},
			Data:    []byte(input),
		})
		if err != nil {
			t.Fatalf("publish start: %v", err)
		}
		if ack.Stream != inboxStream {
			t.Errorf("start acknowledged by stream %q, want %s", ack.Stream, inboxStream)
		}
		d := e.waitStatus(t, id, "completed")
		var out struct {
			TrackingNumber string `json:"tracking_number"`
		}
		if err := json.Unmarshal(d.Output, &out); err != nil || out.TrackingNumber != "trk-p-1" {
			t.Errorf("output %s (%v), want tracking_number trk-p-1", d.Output, err)
		}

		// Starting the id again is no error, and the saga that exists stands.
		if _, err := e.js.PublishMsg(e.ctx, &nats.Msg{
			Subject: "saga.start.order",
			Header:  nats.Header{hdrSagaID: {id}, hdrContentType: {contentJSON}},
			Data:    []byte(`{"order_id":"p-1","items":[{"sku":"pen","qty":9}],"amount":7}`),
		}); err != nil {
			t.Fatalf("publish start again: %v", err)
		}
		e.waitConsumed(t, "saga-starts-order")
		again := e.describe(t, id)
		if again.Status != "completed" || !bytes.Equal(again.Input, d.Input) || again.Events != d.Events {
			t.Errorf("after a second start: status %s, input %s, %d events; want completed, %s, %d events", again.Status, again.Input, again.Events, d.Input, d.Events)
		}
		e.noDeadLetter(t, "saga.dlq.saga-starts-order")
	})

	t.Run("approval queried and approved by signal", func(t *testing.T) {
		const id = "ap-1"
		// The envelope form: no Saga-Id header, the id in the body.
		envelope := fmt.Sprintf(`{"id":%q,"input":`+approvalInput+`}`, id, "r-1")
		e.publish(t, &nats.Msg{Subject: "saga.start.approval", Header: nats.Header{hdrContentType: {contentJSON}}, Data: []byte(envelope)})

		// The query answers once the start is in the saga's history.
		e.waitFor(t, "query status of "+id, 20*time.Second, func() (bool, string) {
			body, code, err := e.call("saga.api.query", map[string]any{"id": id, "name": "status"})
			if err != nil || code != "" {
				return false, fmt.Sprintf("code %q, err %v, body %s", code, err, body)
			}
			var r struct {
				Result struct {
					RequestID string  `json:"request_id"`
					Amount    float64 `json:"amount"`
					Phase     string  `json:"phase"`
				} `json:"result"`
			}
			if err := json.Unmarshal(body, &r); err != nil {
				t.Fatalf("query reply %s: %v", body, err)
			}
			if r.Result.RequestID != "r-1" || r.Result.Amount != 120.5 || (r.Result.Phase != "reserving" && r.Result.Phase != "waiting for approval") {
				t.Fatalf("query reply %s: want request r-1, amount 120.5, phase reserving or waiting for approval", body)
			}
			return true, ""
		})

		body, code, err := e.call("saga.api.query", map[string]any{"id": id, "name": "no-such-query"})
		if err != nil || code != "400" || !strings.Contains(string(body), "status") {
			t.Errorf("unknown query: code %q, err %v, body %s; want 400 naming the known query status", code, err, body)
		}

		// A sender that may retry gives a Nats-Msg-Id: three publishes, one
		// signal.
		for range 3 {
			e.publish(t, &nats.Msg{
				Subject: "saga.signal." + id + ".approve",
				Header:  nats.Header{hdrContentType: {contentJSON}, hdrMsgID: {"approve-" + id}},
				Data:    []byte(`{"by":"alice","comment":"within budget"}`),
			})
		}
		d := e.waitStatus(t, id, "completed")
		var out struct {
			ApprovedBy string `json:"approved_by"`
		}
		if err := json.Unmarshal(d.Output, &out); err != nil || out.ApprovedBy != "alice" {
			t.Errorf("output %s (%v), want approved_by alice", d.Output, err)
		}

		var signals []event
		for _, ev := range e.history(t, id) {
			if ev.Type == "SignalReceived" {
				signals = append(signals, ev)
			}
		}
		if len(signals) != 1 {
			t.Fatalf("history has %d SignalReceived events, want 1: %+v", len(signals), signals)
		}
		var attrs struct {
			Name  string `json:"name"`
			Input struct {
				By string `json:"by"`
			} `json:"input"`
			InboxSeq uint64 `json:"inbox_seq"`
			MsgID    string `json:"msg_id"`
		}
		if err := json.Unmarshal(signals[0].Attributes, &attrs); err != nil {
			t.Fatalf("SignalReceived attributes %s: %v", signals[0].Attributes, err)
		}
		if attrs.Name != "approve" || attrs.Input.By != "alice" || attrs.MsgID != "approve-"+id || attrs.InboxSeq == 0 {
			t.Errorf("SignalReceived attributes %s: want name approve, input by alice, msg_id approve-%s, an inbox_seq", signals[0].Attributes, id)
		}

		// The request/reply signal refuses an ended saga.
		body, code, err = e.call("saga.api.signal", map[string]any{"id": id, "name": "approve", "input": map[string]any{"by": "bob"}})
		if err != nil || code != "409" {
			t.Errorf("signal to an ended saga: code %q, err %v, body %s; want 409", code, err, body)
		}
	})

	t.Run("approval canceled by publish", func(t *testing.T) {
		const id = "ap-2"
		// The header form: the body is the input.
		e.publish(t, &nats.Msg{
			Subject: "saga.start.approval",
			Header:  nats.Header{hdrSagaID: {id}, hdrContentType: {contentJSON}},
			Data:    fmt.Appendf(nil, approvalInput, "r-2"),
		})
		e.waitFor(t, id+" started", 20*time.Second, func() (bool, string) {
			d, code := e.tryDescribe(t, id)
			return code == "" && d.Status == "running", fmt.Sprintf("code %q, status %q", code, d.Status)
		})
		e.publish(t, &nats.Msg{Subject: "saga.cancel." + id, Data: []byte("customer called")})
		d := e.waitStatus(t, id, "canceled")
		if d.CancelRequested == nil || d.CancelRequested.Cause != "request" || d.CancelRequested.Reason != "customer called" {
			t.Errorf("cancel_requested %+v, want cause request, reason \"customer called\"", d.CancelRequested)
		}
		// The budget reserved before the wait is released.
		if d.Compensation == nil || d.Compensation.Status != "completed" {
			t.Errorf("compensation %+v, want completed", d.Compensation)
		}
	})

	t.Run("signal to a missing saga is a dead letter", func(t *testing.T) {
		const subject = "saga.signal.nobody-1.approve"
		body, code, err := e.call("saga.api.signal", map[string]any{"id": "nobody-1", "name": "approve"})
		if err != nil || code != "404" {
			t.Errorf("request/reply signal to a missing saga: code %q, err %v, body %s; want 404", code, err, body)
		}

		e.publish(t, &nats.Msg{Subject: subject, Header: nats.Header{hdrContentType: {contentJSON}}, Data: []byte(`{"by":"mallory"}`)})
		dlq, err := e.js.Stream(e.ctx, deadLetterStream)
		if err != nil {
			t.Fatalf("stream %s: %v", deadLetterStream, err)
		}
		e.waitFor(t, "dead letter of "+subject, 20*time.Second, func() (bool, string) {
			msg, err := dlq.GetLastMsgForSubject(e.ctx, "saga.dlq.saga-signals")
			if err != nil {
				return false, err.Error()
			}
			if got := msg.Header.Get(hdrDeadLetterSubj); got != subject {
				return false, "last dead letter is of " + got
			}
			if msg.Header.Get(hdrDeadLetterReason) == "" {
				t.Fatalf("dead letter of %s has no %s header: %v", subject, hdrDeadLetterReason, msg.Header)
			}
			t.Logf("dead letter reason: %s", msg.Header.Get(hdrDeadLetterReason))
			return true, ""
		})
	})
}

// engine is a nats-server and a saga-node process connected to it, and the
// test's own connection.
type engine struct {
	ctx    context.Context
	nc     *nats.Conn
	js     jetstream.JetStream
	exited chan struct{} // closed when the saga-node process has ended
}

func startEngine(t *testing.T) *engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	t.Cleanup(cancel)

	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready for connections within 10s")
	}

	e := &engine{ctx: ctx, exited: make(chan struct{})}
	e.startNode(t, srv.ClientURL())

	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	e.nc = nc
	if e.js, err = jetstream.New(nc); err != nil {
		t.Fatalf("jetstream: %v", err)
	}

	// A node is up when describe answers; 404 for an id that does not exist.
	e.waitFor(t, "the API to answer", 30*time.Second, func() (bool, string) {
		body, code, err := e.call("saga.api.describe", map[string]any{"id": "protocoltest-probe"})
		if err != nil {
			return false, err.Error()
		}
		return code == "404", fmt.Sprintf("code %q, body %s", code, body)
	})
	return e
}

// startNode runs "saga-node run" against the server until the test ends,
// then stops it as an operator would, with SIGTERM, and waits for it.
func (e *engine) startNode(t *testing.T, url string) {
	t.Helper()
	var out syncBuffer
	cmd := exec.Command(binary, "run", "--nats-url", url, "--name", "protocoltest", "--drain-timeout", "10s")
	cmd.Dir = t.TempDir()
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start saga-node: %v", err)
	}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(e.exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
			if waitErr != nil {
				t.Errorf("saga-node ended with %v", waitErr)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("saga-node still runs 30s after SIGTERM; killing it")
			_ = cmd.Process.Kill()
			<-e.exited
		}
		if t.Failed() {
			t.Logf("saga-node output:\n%s", out.String())
		}
	})
}

// waitFor polls cond until it holds, failing the test at the deadline or
// when the node process ends; state says what was seen last.
func (e *engine) waitFor(t *testing.T, what string, timeout time.Duration, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("%s: not within %v; last seen: %s", what, timeout, state)
		case <-e.exited:
			t.Fatalf("%s: saga-node exited; last seen: %s", what, state)
		}
	}
}

// publish sends a plain core NATS message, as "nats pub" does, and flushes
// so that the server has it before the test goes on.
func (e *engine) publish(t *testing.T, m *nats.Msg) {
	t.Helper()
	if err := e.nc.PublishMsg(m); err != nil {
		t.Fatalf("publish %s: %v", m.Subject, err)
	}
	if err := e.nc.FlushWithContext(e.ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// call sends a JSON request to the API and returns the reply's body and
// its error code ("" for a success); err is a transport error (no
// responders, a timeout).
func (e *engine) call(subject string, req any) (body []byte, code string, err error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	reply, err := e.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, "", err
	}
	code = reply.Header.Get(hdrErrorCode)
	if code != "" && reply.Header.Get(hdrError) == "" {
		return reply.Data, code, fmt.Errorf("error reply %s without %s", code, hdrError)
	}
	return reply.Data, code, nil
}

type description struct {
	ID              string          `json:"id"`
	Type            string          `json:"type"`
	Status          string          `json:"status"`
	Input           json.RawMessage `json:"input"`
	Output          json.RawMessage `json:"output"`
	Error           json.RawMessage `json:"error"`
	Events          int             `json:"events"`
	CancelRequested *struct {
		Cause  string `json:"cause"`
		Reason string `json:"reason"`
	} `json:"cancel_requested"`
	Compensation *struct {
		Status string `json:"status"`
	} `json:"compensation"`
}

// tryDescribe returns the saga's description, or the error code of the
// reply ("404": no such saga yet).
func (e *engine) tryDescribe(t *testing.T, id string) (description, string) {
	t.Helper()
	body, code, err := e.call("saga.api.describe", map[string]any{"id": id})
	if err != nil {
		t.Fatalf("describe %s: %v", id, err)
	}
	var d description
	if code == "" {
		if err := json.Unmarshal(body, &d); err != nil {
			t.Fatalf("describe %s: reply %s: %v", id, body, err)
		}
	}
	return d, code
}

func (e *engine) describe(t *testing.T, id string) description {
	t.Helper()
	d, code := e.tryDescribe(t, id)
	if code != "" {
		t.Fatalf("describe %s: error %s", id, code)
	}
	return d
}

// waitStatus polls describe until the saga has ended with status want; a
// saga that ends otherwise fails the test at once.
func (e *engine) waitStatus(t *testing.T, id, want string) description {
	t.Helper()
	var d description
	e.waitFor(t, id+" "+want, 20*time.Second, func() (bool, string) {
		var code string
		d, code = e.tryDescribe(t, id)
		switch {
		case code != "":
			return false, "error " + code
		case d.Status == want:
			return true, ""
		case d.Status != "running":
			t.Fatalf("%s ended %s, want %s; error %s", id, d.Status, want, d.Error)
		}
		return false, "status " + d.Status
	})
	return d
}

type event struct {
	ID         uint64          `json:"id"`
	Type       string          `json:"type"`
	Category   string          `json:"category"`
	Attributes json.RawMessage `json:"attributes"`
}

func (e *engine) history(t *testing.T, id string) []event {
	t.Helper()
	body, code, err := e.call("saga.api.history", map[string]any{"id": id})
	if err != nil || code != "" {
		t.Fatalf("history %s: code %q, err %v, body %s", id, code, err, body)
	}
	var events []event
	if err := json.Unmarshal(body, &events); err != nil {
		t.Fatalf("history %s: %v", id, err)
	}
	return events
}

// waitConsumed waits until the inbox consumer has nothing pending nor
// unacknowledged: every message published to it was handled.
func (e *engine) waitConsumed(t *testing.T, consumer string) {
	t.Helper()
	e.waitFor(t, consumer+" to catch up", 20*time.Second, func() (bool, string) {
		c, err := e.js.Consumer(e.ctx, inboxStream, consumer)
		if err != nil {
			return false, err.Error()
		}
		info := c.CachedInfo()
		return info.NumPending == 0 && info.NumAckPending == 0, fmt.Sprintf("%d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
	})
}

// noDeadLetter checks that nothing was set aside on subject.
func (e *engine) noDeadLetter(t *testing.T, subject string) {
	t.Helper()
	dlq, err := e.js.Stream(e.ctx, deadLetterStream)
	if err != nil {
		t.Fatalf("stream %s: %v", deadLetterStream, err)
	}
	msg, err := dlq.GetLastMsgForSubject(e.ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		t.Fatalf("read %s: %v", subject, err)
	default:
		t.Errorf("dead letter on %s: %s", subject, msg.Header.Get(hdrDeadLetterReason))
	}
}

// syncBuffer collects the node's output, written by exec's copying
// goroutine and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
