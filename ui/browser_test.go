package ui_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/browsertest"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/pgarchive"
)

// An operator in a real browser (headless Chromium) finds the failed
// order: the list, filtered to failed sagas with the page's own form,
// links to it, and its page shows the compensation with the payment
// refunded before the inventory is released. Then, on the page of an
// approval waiting for its decision, the operator sends the approve
// signal, and the page, never reloaded, shows the saga completed.
// Screenshots of the list and the detail page are saved as artifacts.
func TestBrowserFindsTheFailedOrderAndApproves(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgarchive.Open(ctx, pgtest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	e := startEngine(t, pg)
	e.run(t, "order", "order-ok-1", order.Input{OrderID: "ok-1", Amount: 12, Items: []order.Item{{SKU: "pen", Qty: 2}}}, saga.StatusCompleted)
	e.run(t, "order", "order-ok-2", order.Input{OrderID: "ok-2", Amount: 30, Items: []order.Item{{SKU: "ink", Qty: 1}}}, saga.StatusCompleted)
	e.run(t, "order", "order-bad", order.Input{OrderID: "bad", Amount: 99, Items: []order.Item{{SKU: "desk", Qty: 1}}, FailStep: order.StepShipOrder}, saga.StatusFailed)
	e.run(t, "approval", "approval-1", approval.Input{RequestID: "r-1", Amount: 250, Requester: "bob", Timeout: "1h"}, "")
	natstest.WaitFor(t, 30*time.Second, "four sagas projected", func() bool {
		rows, _, err := pg.List(ctx, pgarchive.Filter{})
		return err == nil && len(rows) == 4
	})

	b := browsertest.Start(t, time.Minute)
	t.Log(browsertest.Describe(b))

	// The list, then the failed ones through the filter form.
	if err := chromedp.Do(b, chromedp.Navigate(e.ui.URL+"/sagas"), chromedp.WaitVisible(chromedp.CSS("table.sagas"))); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"order-ok-1", "order-ok-2", "order-bad", "approval-1"} {
		if !strings.Contains(text(t, b, "table.sagas"), id) {
			t.Fatalf("the list lacks %s", id)
		}
	}
	browsertest.Screenshot(t, b, "list")
	if err := chromedp.Do(b,
		chromedp.SetValue(chromedp.CSS(`select[name="status"]`), "failed"),
		chromedp.Click(chromedp.CSS(`form.filters button[type="submit"]`)),
	); err != nil {
		t.Fatal(err)
	}
	// The filtered page, once the browser has loaded it (an evaluation
	// while it navigates fails, and is tried again).
	natstest.WaitFor(t, 20*time.Second, "the filtered list", func() bool {
		ok, err := chromedp.Run(b, chromedp.Evaluate[bool](`location.search.includes("status=failed") && document.readyState === "complete"`))
		return err == nil && ok
	})
	if err := chromedp.Do(b, chromedp.WaitVisible(chromedp.CSS(`a[href="/sagas/order-bad"]`))); err != nil {
		t.Fatal(err)
	}
	if rows := text(t, b, "table.sagas tbody"); strings.Contains(rows, "order-ok") || strings.Contains(rows, "approval-1") {
		t.Fatalf("the failed sagas' list shows others:\n%s", rows)
	}

	// The failed order's page: the undo ran last registered first.
	if err := chromedp.Do(b,
		chromedp.Click(chromedp.CSS(`a[href="/sagas/order-bad"]`)),
		chromedp.WaitVisible(chromedp.CSS("section.compensation ol.undo")),
	); err != nil {
		t.Fatal(err)
	}
	if st := text(t, b, "#status"); st != "failed" {
		t.Fatalf("the failed order's page says %q", st)
	}
	undo := text(t, b, "section.compensation ol.undo")
	refund, release := strings.Index(undo, order.StepRefundPayment), strings.Index(undo, order.StepReleaseInventory)
	if refund < 0 || release < 0 || refund > release {
		t.Fatalf("the compensation view shows, in order:\n%s\nwant %s before %s", undo, order.StepRefundPayment, order.StepReleaseInventory)
	}
	browsertest.Screenshot(t, b, "detail")

	// The approval: sent from its page, seen completing on it.
	if err := chromedp.Do(b,
		chromedp.Navigate(e.ui.URL+"/sagas/approval-1"),
		chromedp.WaitVisible(chromedp.CSS(`form[action$="/signal"]`)),
	); err != nil {
		t.Fatal(err)
	}
	if st := text(t, b, "#status"); st != "running" {
		t.Fatalf("the approval's page says %q, want running", st)
	}
	// A mark on this page's window: a reload would wipe it. The dialog
	// that asks to confirm is answered yes.
	if _, err := chromedp.Run(b, chromedp.Evaluate[bool](`window.notReloaded = true; window.confirm = () => true; true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(b,
		chromedp.SetValue(chromedp.CSS(`form[action$="/signal"] input[name="name"]`), approval.SignalApprove),
		chromedp.SetValue(chromedp.CSS(`form[action$="/signal"] textarea[name="input"]`), `{"by": "alice", "comment": "fine"}`),
		chromedp.Click(chromedp.CSS(`form[action$="/signal"] input[name="confirm"]`)),
		chromedp.Click(chromedp.CSS(`form[action$="/signal"] button[type="submit"]`)),
	); err != nil {
		t.Fatal(err)
	}
	// The page's own refresh brings the end in: the test only watches.
	if _, err := chromedp.Run(b, chromedp.Poll[bool](`document.getElementById("status").textContent === "completed"`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("the approval's page says %q after the signal (%v); action result: %q", text(t, b, "#status"), err, text(t, b, "#action-result"))
	}
	kept, err := chromedp.Run(b, chromedp.Evaluate[bool](`window.notReloaded === true`))
	if err != nil || !kept {
		t.Fatalf("the page was reloaded (%v)", err)
	}
	if msg := text(t, b, "#action-result"); !strings.Contains(msg, approval.SignalApprove) {
		t.Fatalf("the action's result says %q", msg)
	}
	d, err := e.cl.Describe(ctx, "approval-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("approval-1: %+v, %v", d, err)
	}
	browsertest.Screenshot(t, b, "approved")
}

// text is the text of the first element the CSS selector finds.
func text(t *testing.T, b context.Context, css string) string {
	t.Helper()
	s, err := chromedp.Run(b, chromedp.Text(chromedp.CSS(css)))
	if err != nil {
		t.Fatalf("text of %s: %v", css, err)
	}
	return strings.TrimSpace(s)
}
