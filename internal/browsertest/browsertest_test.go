package browsertest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The harness drives a real page: it loads it, clicks a button whose
// script changes the page, reads the change back, and saves a screenshot.
func TestBrowserDrivesAPage(t *testing.T) {
	page := `<!doctype html><html><body>
<p id="out">waiting</p>
<button id="go" onclick="document.getElementById('out').textContent='clicked &lt;b&gt;'">go</button>
</body></html>`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, page)
	}))
	defer srv.Close()
	ctx := Start(t, time.Minute)
	t.Log(Describe(ctx))
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL), chromedp.Click(chromedp.ID("go"))); err != nil {
		t.Fatal(err)
	}
	got, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("out")))
	if err != nil {
		t.Fatal(err)
	}
	if got != "clicked <b>" {
		t.Fatalf("page says %q after the click", got)
	}
	path := Screenshot(t, ctx, "page")
	data, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(data, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s is not a PNG (%v)", path, err)
	}
}
