package cli

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/internal/natstest"
)

// TestRunServesMetricsAndHealth: "run --metrics-listen" serves the node's
// metrics, with the process's, and its health.
func TestRunServesMetricsAndHealth(t *testing.T) {
	n := startRun(t, noEnv, "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--sync", "interval", "--metrics-listen", "127.0.0.1:0")
	line := n.waitLog(t, "serving metrics")
	m := regexp.MustCompile(`url=(http://\S+)/metrics`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no metrics URL in the log:\n%s", line)
	}
	base := m[1]
	fetch := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	natstest.WaitFor(t, 15*time.Second, "/healthz to say ok", func() bool {
		code, _ := fetch("/healthz")
		return code == http.StatusOK
	})
	code, body := fetch("/metrics")
	for _, want := range []string{`jetsaga_consumer_pending_messages{consumer="saga-dispatch",stream="SAGA_HISTORY_0"} 0`, "go_goroutines", "process_start_time_seconds"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Fatalf("/metrics (%d) lacks %q:\n%s", code, want, body)
		}
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d:\n%s", code, n.stderr)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("metrics still served after run returned")
	}
}

func TestRunBadObservabilityFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--metrics-listen", "9090"}, "--metrics-listen must be HOST:PORT"},
		{[]string{"--otlp-endpoint", "collector"}, "--otlp-endpoint must be HOST:PORT"},
		{[]string{"--otlp-insecure"}, "--otlp-insecure needs --otlp-endpoint"},
	} {
		args := append([]string{"run", "--data", t.TempDir(), "--listen", "127.0.0.1:0"}, tc.args...)
		r := runCLI(t, noEnv, args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%q: want exit %d and %q, got:\n%s", tc.args, ExitUsage, tc.want, r)
		}
	}
}
