package procmem

import (
	"os"
	"testing"
)

func TestStatusMiB(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc/self/status here")
	}
	rss, ok := StatusMiB("VmRSS")
	peak, okPeak := StatusMiB("VmHWM")
	if !ok || !okPeak || rss <= 0 || peak < rss {
		t.Fatalf("VmRSS %v (%v), VmHWM %v (%v)", rss, ok, peak, okPeak)
	}
	if _, ok := StatusMiB("NoSuchField"); ok {
		t.Fatal("a missing field was read")
	}
}
