package ui_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/ui"
	"github.com/jetsaga/saga/worker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Wrap(m)) }

// engine is a nats-server, one node with the order and approval
// examples, a client, and the UI on an httptest server.
type engine struct {
	srv *natstest.Server
	cl  *saga.Client
	ui  *httptest.Server
}

func startEngine(t *testing.T, pg *pgarchive.Store, adjust ...func(*ui.Options)) *engine {
	t.Helper()
	srv := natstest.Start(t)
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	reg.MustRegister(approval.NewService().Definitions()...)
	opts := worker.Options{NodeName: "ui-test-node", Logger: natstest.Logger()}
	if pg != nil {
		opts.Projection = pg
	}
	node, err := worker.New(srv.Conn(), reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	uo := ui.Options{Conn: srv.Conn(), Projection: pg, Logger: natstest.Logger()}
	for _, a := range adjust {
		a(&uo)
	}
	h, err := ui.New(uo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return &engine{srv: srv, cl: cl, ui: hs}
}

func (e *engine) run(t *testing.T, wf string, id string, in any, wantStatus saga.Status) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.cl.Start(ctx, wf, in, saga.StartOptions{ID: id}); err != nil {
		t.Fatal(err)
	}
	if wantStatus == "" {
		return
	}
	d, err := e.cl.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != wantStatus {
		t.Fatalf("saga %s is %s, want %s", id, d.Status, wantStatus)
	}
}

type response struct {
	code int
	body string
	hdr  http.Header
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{res.StatusCode, string(b), res.Header}
}

func (e *engine) get(t *testing.T, path string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.ui.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func (e *engine) post(t *testing.T, path string, form url.Values) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.ui.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads the form token from a saga's page.
func (e *engine) csrf(t *testing.T, id string) string {
	t.Helper()
	r := e.get(t, "/sagas/"+id)
	m := csrfRE.FindStringSubmatch(r.body)
	if m == nil {
		t.Fatalf("no csrf token on the page of %s:\n%s", id, r.body)
	}
	return m[1]
}

func wantCode(t *testing.T, r response, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("status %d, want %d; body:\n%s", r.code, code, r.body)
	}
}

func contains(t *testing.T, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Fatalf("the page lacks %q:\n%s", w, body)
		}
	}
}

func TestDetailCompletedAndFailed(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "order", "ok-1", order.Input{OrderID: "ok-1", Items: []order.Item{{SKU: "book", Qty: 2}}, Amount: 42.5}, saga.StatusCompleted)
	e.run(t, "order", "bad-1", order.Input{OrderID: "bad-1", Amount: 1, FailStep: order.StepShipOrder}, saga.StatusFailed)

	r := e.get(t, "/sagas/ok-1")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "Saga ok-1", `class="status completed"`, "order (version ", "trk-ok-1", "<svg class=\"timeline\"",
		"reserve-inventory", "process-payment", "ship-order", "WorkflowExecutionCompleted", "<details>", "/sagas/ok-1/history.json")
	if strings.Contains(r.body, `data-live=`) {
		t.Fatal("a completed saga's page polls")
	}
	if r.hdr.Get("Content-Security-Policy") == "" {
		t.Fatal("no Content-Security-Policy")
	}

	r = e.get(t, "/sagas/bad-1")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, `class="status failed"`, "ActivityExecution", "Undone, last registered first: completed",
		"↩ CompensationStepScheduled")
	refund := strings.Index(r.body, `<li class="undo-step">process-payment via refund-payment`)
	release := strings.Index(r.body, `<li class="undo-step">reserve-inventory via release-inventory`)
	if refund < 0 || release < 0 || refund > release {
		t.Fatalf("the undo steps are not refund then release (at %d, %d):\n%s", refund, release, r.body)
	}

	wantCode(t, e.get(t, "/sagas/nope"), http.StatusNotFound)
	wantCode(t, e.get(t, "/sagas/a%20b"), http.StatusBadRequest)
}

func TestHistoryJSON(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "order", "h-1", order.Input{OrderID: "h-1", Amount: 1}, saga.StatusCompleted)
	r := e.get(t, "/sagas/h-1/history.json")
	wantCode(t, r, http.StatusOK)
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if cd := r.hdr.Get("Content-Disposition"); !strings.Contains(cd, "attachment") {
		t.Fatalf("content disposition %q", cd)
	}
	var events []struct {
		ID   uint64 `json:"id"`
		Type string `json:"type"`
	}
	if err := json.Unmarshal([]byte(r.body), &events); err != nil {
		t.Fatal(err)
	}
	if len(events) < 5 || events[0].Type != "WorkflowExecutionStarted" || events[len(events)-1].Type != "WorkflowExecutionCompleted" {
		t.Fatalf("history %+v", events)
	}
	wantCode(t, e.get(t, "/sagas/none/history.json"), http.StatusNotFound)
}

func TestListJetStream(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "order", "js-a", order.Input{OrderID: "js-a", Amount: 1}, saga.StatusCompleted)
	e.run(t, "order", "js-b", order.Input{OrderID: "js-b", Amount: 1, FailStep: order.StepShipOrder}, saga.StatusFailed)
	e.run(t, "order", "other-c", order.Input{OrderID: "other-c", Amount: 1}, saga.StatusCompleted)

	r := e.get(t, "/sagas")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "Source: the JetStream listing", "tens of bytes per saga", `href="/sagas/js-a"`, `href="/sagas/js-b"`, `href="/sagas/other-c"`)

	r = e.get(t, "/sagas?prefix=js-&status=failed")
	wantCode(t, r, http.StatusOK)
	if !strings.Contains(r.body, `href="/sagas/js-b"`) || strings.Contains(r.body, `href="/sagas/js-a"`) || strings.Contains(r.body, `href="/sagas/other-c"`) {
		t.Fatalf("prefix and status filter:\n%s", r.body)
	}
	wantCode(t, e.get(t, "/sagas?status=sleeping"), http.StatusBadRequest)
	wantCode(t, e.get(t, "/sagas?since=yesterday"), http.StatusBadRequest)
}

func TestListPostgres(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgarchive.Open(ctx, pgtest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	e := startEngine(t, pg)
	for i, fail := range []string{"", order.StepShipOrder, "", order.StepShipOrder, order.StepShipOrder} {
		id := "pl-" + string(rune('a'+i))
		want := saga.StatusCompleted
		if fail != "" {
			want = saga.StatusFailed
		}
		e.run(t, "order", id, order.Input{OrderID: id, Amount: 1, FailStep: fail}, want)
	}
	e.run(t, "order", "zz-1", order.Input{OrderID: "zz-1", Amount: 1}, saga.StatusCompleted)
	natstest.WaitFor(t, 30*time.Second, "six sagas projected", func() bool {
		rows, _, err := pg.List(ctx, pgarchive.Filter{})
		return err == nil && len(rows) == 6 && rows[0].Status != stream.StatusRunning
	})

	r := e.get(t, "/sagas")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "Source: the Postgres projection (6 sagas match", `class="status completed">completed</a> 3`, `class="status failed">failed</a> 3`)

	// A page of two, then the next page by its cursor.
	r = e.get(t, "/sagas?status=failed&prefix=pl-")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "(3 sagas match", `href="/sagas/pl-b"`, `href="/sagas/pl-d"`, `href="/sagas/pl-e"`,
		"[ActivityExecution] activity ship-order failed after 1 attempt: ship-order failed for order pl-b")
	if strings.Contains(r.body, `href="/sagas/pl-a"`) || strings.Contains(r.body, `href="/sagas/zz-1"`) {
		t.Fatalf("filter let through other sagas:\n%s", r.body)
	}
	r = e.get(t, "/sagas?prefix=zz")
	contains(t, r.body, "(1 sagas match", `href="/sagas/zz-1"`)

	future := time.Now().Add(time.Hour).UTC().Format("2006-01-02T15:04")
	r = e.get(t, "/sagas?since="+future)
	contains(t, r.body, "(0 sagas match", "No saga matches.")
	past := time.Now().Add(-time.Hour).UTC().Format("2006-01-02T15:04")
	contains(t, e.get(t, "/sagas?until="+past).body, "(0 sagas match")
	contains(t, e.get(t, "/sagas?since="+past+"&until="+future).body, "(6 sagas match")
	wantCode(t, e.get(t, "/sagas?after=garbage!"), http.StatusBadRequest)

	// A saga the streams no longer hold is read from the projection.
	js, err := jetstream.New(e.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	cfg := stream.Config{}.Defaults()
	hs, err := js.Stream(ctx, cfg.HistoryStream(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.Purge(ctx, jetstream.WithPurgeSubject(cfg.HistorySubject("pl-b"))); err != nil {
		t.Fatal(err)
	}
	r = e.get(t, "/sagas/pl-b")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "the streams no longer hold this saga", `class="status failed"`, "release-inventory")
	if strings.Contains(r.body, `action="/sagas/pl-b/`) {
		t.Fatal("actions offered on a saga the streams no longer hold")
	}
	r = e.get(t, "/sagas/pl-b/history.json")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "WorkflowExecutionFailed")
}

func TestListPagination(t *testing.T) {
	e := startEngine(t, nil)
	// More sagas than a page, so that the JetStream listing pages by id.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 55 {
		id := "pg-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		if _, err := e.cl.Start(ctx, "order", order.Input{OrderID: id, Amount: 1}, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	r := e.get(t, "/sagas?prefix=pg-")
	wantCode(t, r, http.StatusOK)
	m := regexp.MustCompile(`href="(/sagas\?[^"]*after=[^"]*)" rel="next"`).FindStringSubmatch(r.body)
	if m == nil {
		t.Fatalf("no next link:\n%s", r.body)
	}
	if !strings.Contains(r.body, `href="/sagas/pg-bx"`) || strings.Contains(r.body, `href="/sagas/pg-by"`) {
		t.Fatal("first page is not the first 50 ids")
	}
	next := strings.ReplaceAll(m[1], "&amp;", "&")
	r = e.get(t, next)
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, `href="/sagas/pg-by"`, `href="/sagas/pg-cc"`)
	if strings.Contains(r.body, `href="/sagas/pg-bx"`) || strings.Contains(r.body, `rel="next"`) {
		t.Fatalf("second page:\n%s", r.body)
	}
}

const hostile1 = `<script>alert(1)</script>`
const hostile2 = `"><img src=x onerror=alert(1)>`

func TestInjectionRendersAsText(t *testing.T) {
	e := startEngine(t, nil)
	in := order.Input{OrderID: hostile1, Items: []order.Item{{SKU: hostile2, Qty: 1}}, Amount: 1}
	e.run(t, "order", "inj-1", in, saga.StatusCompleted)
	// The order's error names its order id: the list shows it.
	in = order.Input{OrderID: hostile2 + hostile1, Amount: 1, FailStep: order.StepShipOrder}
	e.run(t, "order", "inj-2", in, saga.StatusFailed)
	for _, path := range []string{"/sagas/inj-1", "/sagas", "/sagas/inj-1/live", "/sagas/inj-2"} {
		r := e.get(t, path)
		wantCode(t, r, http.StatusOK)
		for _, raw := range []string{hostile1, hostile2, "<img", "<script>alert"} {
			if strings.Contains(r.body, raw) {
				t.Fatalf("%s holds %q unescaped:\n%s", path, raw, r.body)
			}
		}
		contains(t, r.body, "&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;")
	}
	// A hostile id cannot be made (ids are validated).
	contains(t, e.get(t, "/sagas").body, `href="/sagas/inj-1"`, `href="/sagas/inj-2"`)
}

func TestSignalAction(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-1", approval.Input{RequestID: "r-1", Amount: 10, Timeout: "1h"}, "")
	token := e.csrf(t, "ap-1")
	r := e.post(t, "/sagas/ap-1/signal", url.Values{"csrf": {token}, "confirm": {"yes"}, "name": {approval.SignalApprove}, "input": {`{"by":"alice"}`}})
	wantCode(t, r, http.StatusSeeOther)
	if loc := r.hdr.Get("Location"); !strings.HasPrefix(loc, "/sagas/ap-1?msg=") {
		t.Fatalf("redirect to %q", loc)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := e.cl.Wait(ctx, "ap-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCompleted {
		t.Fatalf("approval is %s", d.Status)
	}
	contains(t, e.get(t, "/sagas/ap-1").body, "SignalReceived", `class="mark signal"`)
	// A signal to an ended saga is refused as the CLI refuses it.
	r = e.post(t, "/sagas/ap-1/signal", url.Values{"csrf": {token}, "confirm": {"yes"}, "name": {approval.SignalReject}})
	wantCode(t, r, http.StatusConflict)
	contains(t, r.body, "already ended (completed)")
	// Bad input, and no confirmation.
	wantCode(t, e.post(t, "/sagas/ap-1/signal", url.Values{"csrf": {token}, "confirm": {"yes"}, "name": {"x"}, "input": {"{"}}), http.StatusBadRequest)
	wantCode(t, e.post(t, "/sagas/ap-1/signal", url.Values{"csrf": {token}, "name": {"x"}}), http.StatusBadRequest)
}

func TestCancelAndWake(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-c", approval.Input{RequestID: "r-c", Amount: 10, Timeout: "1h"}, "")
	e.run(t, "approval", "ap-w", approval.Input{RequestID: "r-w", Amount: 10, Timeout: "1h"}, "")
	token := e.csrf(t, "ap-c")
	r := e.get(t, "/sagas/ap-c")
	contains(t, r.body, `data-live="/sagas/ap-c/live"`)
	r = e.get(t, "/sagas/ap-c/live")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, `id="status">running<`, "Waiting on", "timer (event", "timer 1h0m0s: open for")
	if strings.Contains(r.body, "<html") {
		t.Fatalf("the live fragment is a whole page:\n%s", r.body)
	}

	wantCode(t, e.post(t, "/sagas/ap-w/wake", url.Values{"csrf": {token}, "confirm": {"yes"}}), http.StatusSeeOther)
	wantCode(t, e.post(t, "/sagas/nope/wake", url.Values{"csrf": {token}, "confirm": {"yes"}}), http.StatusNotFound)

	r = e.post(t, "/sagas/ap-c/cancel", url.Values{"csrf": {token}, "confirm": {"yes"}, "reason": {"changed my mind"}})
	wantCode(t, r, http.StatusSeeOther)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := e.cl.Wait(ctx, "ap-c")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCanceled || d.CancelRequested == nil || d.CancelRequested.Identity != ui.ActionIdentity {
		t.Fatalf("after cancel: %+v", d)
	}
	r = e.get(t, "/sagas/ap-c")
	contains(t, r.body, "changed my mind", "by saga-node ui", "release-budget")
	wantCode(t, e.post(t, "/sagas/ap-c/cancel", url.Values{"csrf": {token}, "confirm": {"yes"}}), http.StatusConflict)
}

func TestCSRF(t *testing.T) {
	e := startEngine(t, nil)
	e.run(t, "approval", "ap-x", approval.Input{RequestID: "r-x", Amount: 10, Timeout: "1h"}, "")
	for _, form := range []url.Values{
		{"confirm": {"yes"}, "name": {"approve"}},
		{"csrf": {"forged"}, "confirm": {"yes"}, "name": {"approve"}},
	} {
		wantCode(t, e.post(t, "/sagas/ap-x/signal", form), http.StatusForbidden)
		wantCode(t, e.post(t, "/sagas/ap-x/cancel", form), http.StatusForbidden)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := e.cl.Describe(ctx, "ap-x")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusRunning || d.CancelRequested != nil {
		t.Fatalf("a forged form acted: %+v", d)
	}
}

func TestReadOnly(t *testing.T) {
	e := startEngine(t, nil, func(o *ui.Options) { o.ReadOnly = true })
	e.run(t, "approval", "ap-r", approval.Input{RequestID: "r-r", Amount: 10, Timeout: "1h"}, "")
	r := e.get(t, "/sagas/ap-r")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "read-only")
	for _, s := range []string{"<form method=\"post\"", "Send signal", "Cancel saga", "Wake saga", `name="csrf"`} {
		if strings.Contains(r.body, s) {
			t.Fatalf("read-only page shows %q", s)
		}
	}
	for _, a := range []string{"signal", "cancel", "wake"} {
		r := e.post(t, "/sagas/ap-r/"+a, url.Values{"confirm": {"yes"}, "name": {"approve"}})
		wantCode(t, r, http.StatusForbidden)
		// Refused as read-only, before the form's token is looked at.
		contains(t, r.body, "read-only")
	}
}

func TestAuth(t *testing.T) {
	t.Run("basic", func(t *testing.T) {
		e := startEngine(t, nil, func(o *ui.Options) { o.User, o.Password = "ops", "s3cret" })
		r := e.get(t, "/sagas")
		wantCode(t, r, http.StatusUnauthorized)
		if !strings.HasPrefix(r.hdr.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("WWW-Authenticate %q", r.hdr.Get("WWW-Authenticate"))
		}
		for _, bad := range [][2]string{{"ops", "wrong"}, {"other", "s3cret"}} {
			req, _ := http.NewRequest(http.MethodGet, e.ui.URL+"/sagas", nil)
			req.SetBasicAuth(bad[0], bad[1])
			wantCode(t, do(t, req), http.StatusUnauthorized)
		}
		req, _ := http.NewRequest(http.MethodGet, e.ui.URL+"/sagas", nil)
		req.SetBasicAuth("ops", "s3cret")
		wantCode(t, do(t, req), http.StatusOK)
	})
	t.Run("token", func(t *testing.T) {
		e := startEngine(t, nil, func(o *ui.Options) { o.Token = "tok-123" })
		wantCode(t, e.get(t, "/assets/ui.js"), http.StatusUnauthorized)
		req, _ := http.NewRequest(http.MethodGet, e.ui.URL+"/sagas", nil)
		req.Header.Set("Authorization", "Bearer tok-123")
		wantCode(t, do(t, req), http.StatusOK)
		req, _ = http.NewRequest(http.MethodGet, e.ui.URL+"/sagas", nil)
		req.Header.Set("Authorization", "Bearer tok-124")
		wantCode(t, do(t, req), http.StatusUnauthorized)
	})
}

func TestAssets(t *testing.T) {
	e := startEngine(t, nil)
	r := e.get(t, "/assets/ui.js")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "version 2")
	wantCode(t, e.get(t, "/assets/ui.css"), http.StatusOK)
	r = e.get(t, "/")
	wantCode(t, r, http.StatusFound)
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr            string
		auth, allowOpen bool
		ok              bool
	}{
		{"127.0.0.1:8233", false, false, true},
		{"localhost:8233", false, false, true},
		{"[::1]:8233", false, false, true},
		{"0.0.0.0:8233", false, false, false},
		{":8233", false, false, false},
		{"10.0.0.5:8233", false, false, false},
		{"0.0.0.0:8233", true, false, true},
		{"0.0.0.0:8233", false, true, true},
		{"no-port", true, true, false},
	} {
		err := ui.CheckListen(tc.addr, tc.auth, tc.allowOpen)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, %v, %v) = %v", tc.addr, tc.auth, tc.allowOpen, err)
		}
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	srv := natstest.Start(t)
	for _, o := range []ui.Options{
		{},
		{Conn: srv.Conn(), User: "a"},
		{Conn: srv.Conn(), User: "a", Password: "b", Token: "c"},
	} {
		if h, err := ui.New(o); err == nil {
			h.Close()
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

func TestOperationsPages(t *testing.T) {
	e := startEngine(t, nil)
	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := e.get(t, "/dead-letters")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "No dead letters.")
	dl := stream.DeadLetter{Stream: "SAGA_HISTORY_0", Subject: "saga.h.0.o-1", Sequence: 17, Consumer: "saga-dispatch",
		Reason: "undecodable commit " + hostile1, Node: "node-a", Deliveries: 2, Time: time.Now(), Data: []byte{0xc1}}
	if err := st.PublishDeadLetter(ctx, dl); err != nil {
		t.Fatal(err)
	}
	r = e.get(t, "/dead-letters")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "saga.h.0.o-1", "node-a", "undecodable commit &lt;script&gt;alert(1)&lt;/script&gt;")
	if strings.Contains(r.body, hostile1) {
		t.Fatalf("a dead letter's reason is not escaped:\n%s", r.body)
	}

	r = e.get(t, "/nodes")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "<td>ui-test-node</td>", "approval, order", "reserve-inventory", "saga-api")
	// The node reports its work in flight through the discovery.
	if !regexp.MustCompile(`<td>\d+</td><td>\d+</td><td>\d+ \(\d+\)</td>`).MatchString(r.body) || strings.Contains(r.body, "not reported") {
		t.Fatalf("the nodes page shows no work in flight:\n%s", r.body)
	}

	e.run(t, "order", "lag-1", order.Input{OrderID: "lag-1", Amount: 1}, saga.StatusCompleted)
	r = e.get(t, "/lag")
	wantCode(t, r, http.StatusOK)
	contains(t, r.body, "SAGA_HISTORY_0", "saga-dispatch")
}
