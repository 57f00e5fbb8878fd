package cli

import (
	"runtime/metrics"

	"github.com/jetsaga/saga/internal/procmem"
)

// peakRSS returns the process's peak resident set in MiB and where the
// figure comes from. Linux keeps the peak (VmHWM); elsewhere the Go
// runtime's memory is the best available, and it is a current value, not a
// peak, and leaves out memory that is not the runtime's.
func peakRSS() (mib float64, source string) {
	if mib, ok := procmem.StatusMiB("VmHWM"); ok {
		return mib, "VmHWM (/proc/self/status)"
	}
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0, "unavailable"
	}
	return float64(s[0].Value.Uint64()) / (1 << 20), "Go runtime /memory/classes/total:bytes (current, not a peak)"
}
