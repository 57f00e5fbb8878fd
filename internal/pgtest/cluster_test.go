package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestFindBinariesPicksTheHighestVersion(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "10", "17"} {
		bin := filepath.Join(root, v, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		names := []string{"initdb", "postgres"}
		if v == "17" {
			names = names[:1] // a client-only install: no server
		}
		for _, name := range names {
			if err := os.WriteFile(filepath.Join(bin, name), nil, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Setenv("PATH", t.TempDir())
	defer func(old string) { debianRoot = old }(debianRoot)
	debianRoot = root
	got, err := findBinaries()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "15", "bin"); got != want {
		t.Fatalf("found %s, want %s", got, want)
	}
}

// recorder stands in for a test, recording whether it was skipped or
// failed; like a test, it stops the goroutine that skips or fails.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skip(args ...any) {
	r.skipped = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) {
	r.failed = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Fatalf(format string, args ...any) { r.Fatal(fmt.Sprintf(format, args...)) }

func TestNoBinariesFailsUnlessOptional(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	defer func(old string) { debianRoot = old }(debianRoot)
	debianRoot = t.TempDir()
	_, err := findBinaries()
	if !errors.Is(err, errNoBinaries) {
		t.Fatalf("findBinaries: %v, want errNoBinaries", err)
	}
	for _, optional := range []string{"", "0", "1"} {
		t.Setenv(EnvOptional, optional)
		r := &recorder{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			unavailable(r, err)
		}()
		<-done
		switch {
		case optional == "1" && (r.skipped == "" || r.failed != ""):
			t.Errorf("%s=%q: skipped %q, failed %q; want a skip", EnvOptional, optional, r.skipped, r.failed)
		case optional != "1" && (r.failed == "" || r.skipped != ""):
			t.Errorf("%s=%q: skipped %q, failed %q; want a failure", EnvOptional, optional, r.skipped, r.failed)
		}
		msg := r.skipped + r.failed
		if !strings.Contains(msg, "apt-get install postgresql") || !strings.Contains(msg, EnvURL) {
			t.Errorf("the message does not say how to get PostgreSQL: %s", msg)
		}
	}
}

func TestStartMovesOffATakenPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	first := StartOwn(t)
	// The second server is handed the first one's port, as when two test
	// binaries pick the same free port at once.
	defer func(old func() (int, error)) { pickPort = old }(pickPort)
	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return first.c.port, nil
		}
		return freePort()
	}
	c, err := newCluster(ctx)
	if err != nil {
		t.Fatalf("start on a taken port: %v", err)
	}
	defer func() {
		if err := c.remove(); err != nil {
			t.Error(err)
		}
	}()
	if c.port == first.c.port || calls != 2 {
		t.Fatalf("second server on port %d after %d picks; the first is on %d", c.port, calls, first.c.port)
	}
}
