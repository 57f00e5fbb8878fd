package cli

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/internal/natstest"
)

func TestUIBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"ui", "--ui-listen", "0.0.0.0:8233"},
		{"ui", "--ui-listen", ":8233"},
		{"ui", "--ui-listen", ""},
		{"ui", "--ui-listen", "no-port"},
		{"ui", "--ui-user", "ops"},
		{"ui", "--ui-password", "p"},
		{"ui", "--ui-user", "ops", "--ui-password", "p", "--ui-token", "t"},
		{"ui", "extra"},
		{"ui", "--log-level", "loud"},
		{"run", "--ui-listen", "10.1.2.3:8233"},
		{"run", "--ui-user", "ops"},
		{"demo", "--ui", "--ui-listen", ""},
		{"demo", "--ui-listen", "0.0.0.0:1"},
	} {
		r := runCLI(t, noEnv, args...)
		if r.code != ExitUsage {
			t.Errorf("%q: want exit %d, got:\n%s", args, ExitUsage, r)
		}
	}
	// A password in the environment without a user would leave the UI
	// open while its operator believes it closed.
	withPassword := func(k string) string {
		if k == "SAGA_UI_PASSWORD" {
			return "s3cret"
		}
		return ""
	}
	if r := runCLI(t, withPassword, "ui", "--ui-listen", "127.0.0.1:0"); r.code != ExitUsage || !strings.Contains(r.stderr, "--ui-user") {
		t.Errorf("SAGA_UI_PASSWORD without --ui-user: want a usage error naming --ui-user, got:\n%s", r)
	}
}

// command runs a long-lived command in a goroutine until the test ends.
func command(t *testing.T, args ...string) *node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{stderr: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	env := Env{Stdout: io.Discard, Stderr: n.stderr, Getenv: noEnv, Registry: orderRegistry(t)}
	go func() { n.done <- Run(ctx, args, env) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop", args[0])
		}
	})
	return n
}

var uiURLRE = regexp.MustCompile(`serving the web UI" url=(http://\S+/)`)

func getStatus(t *testing.T, url string, user, password string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func TestUICommand(t *testing.T) {
	url := startEngine(t, nil)
	expectCode(t, withURL(t, url, "start", "order", "--id", "ui-1", "--input", okInput, "--wait"), ExitOK)
	n := command(t, "ui", "--nats-url", url, "--ui-listen", "127.0.0.1:0", "--ui-user", "ops", "--ui-password", "pw")
	m := uiURLRE.FindStringSubmatch(n.waitLog(t, "serving the web UI"))
	if m == nil {
		t.Fatalf("no UI address logged:\n%s", n.stderr)
	}
	if code := getStatus(t, m[1]+"sagas/ui-1", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("without credentials: %d", code)
	}
	if code := getStatus(t, m[1]+"sagas/ui-1", "ops", "pw"); code != http.StatusOK {
		t.Fatalf("with credentials: %d", code)
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("ui exited %d:\n%s", code, n.stderr)
	}
}

func TestRunServesUI(t *testing.T) {
	srv := natstest.Start(t)
	n := command(t, "run", "--nats-url", srv.ClientURL(), "--ui-listen", "127.0.0.1:0", "--ui-read-only")
	m := uiURLRE.FindStringSubmatch(n.waitLog(t, "serving the web UI"))
	if m == nil {
		t.Fatalf("no UI address logged:\n%s", n.stderr)
	}
	if code := getStatus(t, m[1]+"sagas", "", ""); code != http.StatusOK {
		t.Fatalf("GET /sagas: %d", code)
	}
	res, err := http.Post(m[1]+"sagas/x/wake", "application/x-www-form-urlencoded", strings.NewReader("confirm=yes"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("read-only wake: %d", res.StatusCode)
	}
	if code := n.stop(t); code != ExitOK {
		t.Fatalf("run exited %d:\n%s", code, n.stderr)
	}
}

func TestDemoUI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, []string{"demo", "--ui", "--ui-listen", "127.0.0.1:0"}, Env{Stdout: &out, Stderr: io.Discard, Getenv: noEnv})
	}()
	re := regexp.MustCompile(`web UI at (http://\S+/)`)
	var url string
	natstest.WaitFor(t, 60*time.Second, "the demo to print the UI's address", func() bool {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
			return true
		}
		select {
		case code := <-done:
			t.Fatalf("demo exited %d before serving the UI:\n%s", code, out.String())
		default:
		}
		return false
	})
	if code := getStatus(t, url+"sagas/demo-order-2", "", ""); code != http.StatusOK {
		t.Fatalf("GET the demo's failed order: %d", code)
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Fatalf("demo exited %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop when its context ended")
	}
}
