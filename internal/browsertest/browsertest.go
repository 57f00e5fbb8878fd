// Package browsertest runs a headless Chromium for the web UI's browser
// tests: it finds the browser, starts one per test with chromedp, stops
// it when the test ends, and saves screenshots as the test's artifacts.
//
// Chromium comes from the OS packages (Debian's chromium; .ci/run
// installs it). A machine without it skips the browser tests, unless
// SAGA_BROWSER_TESTS=require (as in CI), which fails them instead: a
// missing browser must not pass for a green run there.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ErrNoChromium: no Chromium binary was found.
var ErrNoChromium = errors.New("no Chromium found (install Debian's chromium package, or set CHROMIUM to a Chromium binary)")

// Chromium returns the path of the Chromium binary to run: $CHROMIUM, or
// the first of chromium, chromium-browser, google-chrome on PATH.
func Chromium() (string, error) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoChromium
}

// required reports whether a missing browser fails the test.
func required() bool { return os.Getenv("SAGA_BROWSER_TESTS") == "require" }

// Start starts a headless Chromium for the test and returns the context
// chromedp actions run in, bounded by timeout. The browser is stopped,
// and waited for, when the test ends.
func Start(tb testing.TB, timeout time.Duration) context.Context {
	tb.Helper()
	path, err := Chromium()
	if err != nil {
		if required() {
			tb.Fatal(err)
		}
		tb.Skip(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		// CI runs as root, where Chromium's sandbox refuses to start.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(tb.TempDir()),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithErrorf(func(format string, args ...any) {
		tb.Logf("chromium: "+format, args...)
	}))
	// Start the browser now, on the browser's own context (a timeout on
	// it would stop the browser), so that one that cannot start fails
	// here, named, rather than in the test's first action.
	if err := chromedp.Do(ctx); err != nil {
		cancelBrowser()
		cancelAlloc()
		tb.Fatalf("start chromium (%s): %v", path, err)
	}
	actions, cancelTimeout := context.WithTimeout(ctx, timeout)
	tb.Cleanup(func() {
		cancelTimeout()
		cancelBrowser() // closes the browser and waits for it
		cancelAlloc()
	})
	return actions
}

// ArtifactsDir is where screenshots go: $SAGA_TEST_ARTIFACTS, or a
// directory under the system's temp dir named after the test (kept after
// the test, so that it can be looked at).
func ArtifactsDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("SAGA_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "saga-test-artifacts")
	}
	dir = filepath.Join(dir, filepath.Base(tb.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// Screenshot saves a full-page PNG (quality 100: PNG, not JPEG) of what the browser shows as
// <ArtifactsDir>/<name>.png and logs its path.
func Screenshot(tb testing.TB, ctx context.Context, name string) string {
	tb.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(ArtifactsDir(tb), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("screenshot %s: %s (%d bytes)", name, path, len(png))
	return path
}

// Describe names the browser for a test's log.
func Describe(ctx context.Context) string {
	ua, err := chromedp.Run(ctx, chromedp.Evaluate[string](`navigator.userAgent`))
	if err != nil {
		return fmt.Sprintf("unknown browser (%v)", err)
	}
	return ua
}
