package procmem

import (
	"runtime"
	"testing"
)

func TestStatusMiB(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("/proc/self/status is Linux's") // CI runs on Linux, where it must be read
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
