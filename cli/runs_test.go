package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
)

var hop = saga.NewWorkflow("hop", 1, func(ctx saga.Context, n int) (int, error) {
	if n < 3 {
		return 0, saga.ContinueAsNew(ctx, n+1)
	}
	return n, nil
})

func TestHistoryOfRunsAndHistoryLimits(t *testing.T) {
	srv := natstest.Start(t)
	node := startNode(t, srv, "runs-node", hop)
	url := srv.ClientURL()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := saga.StartWorkflow(ctx, node.Client(), hop, 1, saga.StartOptions{ID: "hop-1"}); err != nil {
		t.Fatal(err)
	}
	if d, err := node.Client().Wait(ctx, "hop-1"); err != nil || d.Run != 3 {
		t.Fatalf("%+v %v", d, err)
	}
	r := withURL(t, url, "history", "hop-1")
	expectCode(t, r, ExitOK)
	if strings.Count(r.stdout, "WorkflowExecutionStarted") != 3 || !strings.Contains(r.stdout, "run 3 (continues run 2, started at event 2)") {
		t.Fatalf("whole history:\n%s", r)
	}
	r = withURL(t, url, "history", "hop-1", "--latest-run")
	expectCode(t, r, ExitOK)
	if strings.Count(r.stdout, "WorkflowExecutionStarted") != 1 || strings.Contains(r.stdout, "WorkflowExecutionContinuedAsNew") {
		t.Fatalf("latest run:\n%s", r)
	}
	r = withURL(t, url, "describe", "hop-1")
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "events:   6 (2 in run 3)") || !strings.Contains(r.stdout, "run:      3, continues run 2 (events 2 to 3)") {
		t.Fatalf("describe:\n%s", r)
	}

	r = withURL(t, url, "history-limits")
	expectCode(t, r, ExitOK)
	if r.stdout != "warn at:  10240 events or 10485760 bytes\nlimit at: 51200 events or 52428800 bytes\n" {
		t.Fatalf("limits:\n%s", r)
	}
	r = withURL(t, url, "history-limits", "--history-limit-events", "100000")
	expectCode(t, r, ExitOK)
	if !strings.Contains(r.stdout, "limit at: 100000 events") || !strings.Contains(r.stdout, "recorded") {
		t.Fatalf("raised:\n%s", r)
	}
	// A warning above the limit is refused, and nothing changes.
	r = withURL(t, url, "history-limits", "--history-warn-events", "200000")
	expectCode(t, r, ExitUsage)
	r = withURL(t, url, "history-limits", "--json")
	expectCode(t, r, ExitOK)
	if m := decodeObject(t, r.stdout); m["limit_events"] != float64(100000) || m["warn_events"] != float64(10240) {
		t.Fatalf("after a refused change: %v", m)
	}
}
