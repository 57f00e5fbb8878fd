package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/aesgcm"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// wireTap records every message published on a server: whatever reaches
// JetStream crosses it first.
type wireTap struct {
	mu   sync.Mutex
	msgs []*nats.Msg
	sub  *nats.Subscription
}

func tapWire(t *testing.T, nc *nats.Conn) *wireTap {
	t.Helper()
	w := &wireTap{}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		w.mu.Lock()
		w.msgs = append(w.msgs, m)
		w.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	w.sub = sub
	return w
}

// stop ends the tap once everything published so far has reached it.
func (w *wireTap) stop(t *testing.T, nc *nats.Conn) []*nats.Msg {
	t.Helper()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := w.sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.msgs
}

func containsAny(b []byte, secrets []string) string {
	for _, s := range secrets {
		if bytes.Contains(b, []byte(s)) {
			return s
		}
	}
	return ""
}

func messageBytes(m *nats.Msg) []byte {
	var b bytes.Buffer
	b.WriteString(m.Subject)
	for k, vs := range m.Header {
		b.WriteString(k)
		for _, v := range vs {
			b.WriteString(v)
		}
	}
	b.Write(m.Data)
	return b.Bytes()
}

func TestSealedPayloadsLeaveNoPlaintextInJetStream(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, 60*time.Second)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	codec, err := aesgcm.New(key)
	if err != nil {
		t.Fatal(err)
	}
	// Each secret is a value the saga carries as input, activity input,
	// activity result, signal value or output.
	const (
		secretSKU       = "sku-personal-7f3a9c"
		secretRequester = "requester-personal-2b8e1d"
		secretApprover  = "approver-personal-5c0f4a"
		secretComment   = "comment-personal-9d6b2e"
		secretJSON      = "json-comment-personal-1a7c3f"
	)
	tapConn := c.srv.Conn()
	tap := tapWire(t, tapConn)

	orders, approvals := order.NewService(), approval.NewService()
	c.node(worker.Options{Codec: codec}, append(orders.Definitions(), approvals.Definitions()...)...)
	cl, err := saga.NewClient(c.srv.Conn(), saga.ClientOptions{Codec: codec})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	in := order.Input{OrderID: "sealed-order", Items: []order.Item{{SKU: secretSKU, Qty: 1}}, Amount: 10}
	orderRun, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: "sealed-order"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := orderRun.Get(ctx)
	if err != nil || out.OrderID != "sealed-order" {
		t.Fatalf("order: %+v, %v", out, err)
	}

	appIn := approval.Input{RequestID: "sealed-approval", Amount: 5, Requester: secretRequester, Timeout: "1h"}
	appRun, err := saga.StartWorkflow(ctx, cl, approval.Workflow, appIn, saga.StartOptions{ID: "sealed-approval"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Signal(ctx, "sealed-approval", approval.SignalApprove, approval.Decision{By: secretApprover, Comment: secretComment}); err != nil {
		t.Fatal(err)
	}
	got, err := appRun.Get(ctx)
	if err != nil || got.ApprovedBy != secretApprover || got.Comment != secretComment {
		t.Fatalf("approval: %+v, %v", got, err)
	}

	// A signal published as plain JSON by a client without the codec is
	// sealed by the node before it reaches the history.
	jsonRun, err := saga.StartWorkflow(ctx, cl, approval.Workflow, approval.Input{RequestID: "json-approval", Amount: 1, Timeout: "1h"}, saga.StartOptions{ID: "json-approval"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(approval.Decision{By: "ops", Comment: secretJSON})
	jsonSignal := &nats.Msg{Subject: stream.Config{Prefix: "saga"}.InboxSignalSubject("json-approval", approval.SignalApprove), Data: body,
		Header: nats.Header{worker.HeaderContentType: {worker.ContentTypeJSON}}}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, jsonSignal); err != nil {
		t.Fatal(err)
	}
	if got, err := jsonRun.Get(ctx); err != nil || got.Comment != secretJSON {
		t.Fatalf("approval signaled in JSON: %+v, %v", got, err)
	}

	// Nothing the client and the node wrote carries a secret in clear; the
	// JSON signal was published in clear on purpose, and only that.
	secrets := []string{secretSKU, secretRequester, secretApprover, secretComment, secretJSON}
	plainPublished := 0
	for _, m := range tap.stop(t, tapConn) {
		found := containsAny(messageBytes(m), secrets)
		switch {
		case found == "":
		case found == secretJSON && m.Subject == jsonSignal.Subject:
			plainPublished++
		default:
			t.Errorf("%q in clear on %s: %q", found, m.Subject, m.Data)
		}
	}
	if plainPublished == 0 {
		t.Fatal("the tap missed the plain JSON signal: it cannot vouch for the rest")
	}

	// Every stored message of the history: each value is sealed.
	hist, err := js.Stream(ctx, "SAGA_HISTORY_0")
	if err != nil {
		t.Fatal(err)
	}
	info, err := hist.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		t.Fatal("empty history stream")
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := hist.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("history message %d: %v", seq, err)
		}
		if found := containsAny(m.Data, secrets); found != "" {
			t.Errorf("history message %d (%s) holds %q in clear", seq, m.Subject, found)
		}
	}

	// Reads without the codec see the values as sealed, not as garbage.
	d, err := cl.Describe(ctx, "sealed-order")
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := json.Marshal(d.Input)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(rendered), `{"sealed":"`) {
		t.Errorf("describe renders a sealed input as %s", rendered)
	}

	// Neither a node nor a client without the key can weaken the fleet.
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	plainNode, err := worker.New(c.srv.Conn(), reg, worker.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	startCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := plainNode.Start(startCtx); !errors.Is(err, stream.ErrCodecMismatch) {
		t.Errorf("a node without the codec started: %v", err)
		_ = plainNode.Stop(startCtx)
	}
	otherKey := make([]byte, 32)
	otherKey[0] = 1
	otherCodec, err := aesgcm.New(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	otherNode, err := worker.New(c.srv.Conn(), reg, worker.Options{Logger: testLogger(), Codec: otherCodec})
	if err != nil {
		t.Fatal(err)
	}
	if err := otherNode.Start(startCtx); !errors.Is(err, stream.ErrCodecMismatch) {
		t.Errorf("a node with another key started: %v", err)
		_ = otherNode.Stop(startCtx)
	}
	plainClient := c.client()
	_, err = plainClient.Start(ctx, "order", orderInput("plain-order"), saga.StartOptions{ID: "plain-order"})
	if !errors.Is(err, stream.ErrCodecMismatch) {
		t.Errorf("a client without the codec started a plain saga: %v", err)
	}
	if _, err := plainClient.Describe(ctx, "plain-order"); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("the refused start left a saga: %v", err)
	}
}

// messageLog is a slog handler that keeps the messages logged, so that a
// test can wait for a node to say something.
type messageLog struct {
	mu   sync.Mutex
	msgs []string
}

func (l *messageLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *messageLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *messageLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *messageLog) WithGroup(string) slog.Handler      { return l }

func (l *messageLog) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func testCodec(t *testing.T, b byte) *aesgcm.Codec {
	t.Helper()
	key := make([]byte, 32)
	key[0] = b
	c, err := aesgcm.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A node that runs without the key when the fleet turns sealing on (it
// started before) must not fail the sagas it meets: it leaves them to the
// nodes that hold the key, and says so.
func TestNodeWithoutTheKeyLeavesSealedSagasToOthers(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, 60*time.Second)
	codec := testCodec(t, 1)
	keyless := &messageLog{}
	svc := order.NewService()
	c.node(worker.Options{NodeName: "keyless", Logger: slog.New(keyless)}, svc.Definitions()...)
	keyed := c.node(worker.Options{NodeName: "keyed", Codec: codec}, svc.Definitions()...)
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := keyed.Stop(stopCtx); err != nil { // it recorded the codec; now only the keyless node runs
		t.Fatal(err)
	}
	cl, err := saga.NewClient(c.srv.Conn(), saga.ClientOptions{Codec: codec})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	run, err := saga.StartWorkflow(ctx, cl, order.Workflow, orderInput("sealed-1"), saga.StartOptions{ID: "sealed-1"})
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the keyless node to leave the saga", func() bool {
		return keyless.count("leaving the decision to a node that holds the payload key") > 0
	})
	if d, err := cl.Describe(ctx, run.ID); err != nil || d.Status != saga.StatusRunning {
		t.Fatalf("the keyless node decided the saga: %v %v", d.Status, err)
	}
	c.node(worker.Options{NodeName: "keyed-again", Codec: codec}, svc.Definitions()...)
	if out, err := run.Get(ctx); err != nil || out.OrderID != "sealed-1" {
		t.Fatalf("once a node with the key runs: %+v, %v", out, err)
	}
}

// A client whose key the fleet never recorded would write values no node
// can open: it is refused. A value nested too deep is refused before it is
// sealed, as a plain one would be.
func TestClientKeyAndDepthAreCheckedOnWrite(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, 30*time.Second)
	c.node(worker.Options{Codec: testCodec(t, 1)}, order.NewService().Definitions()...)
	wrong, err := saga.NewClient(c.srv.Conn(), saga.ClientOptions{Codec: testCodec(t, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	if _, err := wrong.Start(ctx, "order", orderInput("wrong-key"), saga.StartOptions{ID: "wrong-key"}); !errors.Is(err, stream.ErrCodecMismatch) {
		t.Fatalf("a client with an unrecorded key: %v", err)
	}
	right, err := saga.NewClient(c.srv.Conn(), saga.ClientOptions{Codec: testCodec(t, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer right.Close()
	var deep any = "bottom"
	for range stream.MaxPayloadDepth + 2 {
		deep = []any{deep}
	}
	if _, err := right.Start(ctx, "order", deep, saga.StartOptions{ID: "too-deep"}); !errors.Is(err, stream.ErrTooLarge) {
		t.Fatalf("a sealed value nested too deep: %v", err)
	}
}

// A client without the right to read stream settings (the least-privilege
// role) does not spend its caller's deadline on the fleet check.
func TestFleetCheckWithoutStreamInfoIsBounded(t *testing.T) {
	srv := natstest.Start(t, func(o *embeddednats.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = []*server.User{
				{Username: "node", Password: "n"},
				{Username: "client", Password: "c", Permissions: &server.Permissions{
					Publish: &server.SubjectPermission{Deny: []string{"$JS.API.STREAM.INFO.>"}}}},
			}
		}
	})
	ctx := ctxTimeout(t, 60*time.Second)
	connect := func(user, password string) *nats.Conn {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(user, password))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	n, err := worker.New(connect("node", "n"), reg, worker.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	cl, err := saga.NewClient(connect("client", "c"), saga.ClientOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	began := time.Now()
	if _, err := cl.Start(startCtx, "order", orderInput("limited"), saga.StartOptions{ID: "limited"}); err != nil {
		t.Fatalf("start: %v", err)
	}
	if took := time.Since(began); took > 15*time.Second {
		t.Fatalf("the start spent %s of its 30 s deadline on the fleet check", took.Round(time.Millisecond))
	}
}
