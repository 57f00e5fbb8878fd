package cli

import (
	"bufio"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
)

// peakRSS returns the process's peak resident set in MiB and where the
// figure comes from. Linux keeps the peak (VmHWM); elsewhere the Go
// runtime's memory is the best available, and it is a current value, not a
// peak, and leaves out memory that is not the runtime's.
func peakRSS() (mib float64, source string) {
	if kib, ok := vmHWM(); ok {
		return float64(kib) / 1024, "VmHWM (/proc/self/status)"
	}
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0, "unavailable"
	}
	return float64(s[0].Value.Uint64()) / (1 << 20), "Go runtime /memory/classes/total:bytes (current, not a peak)"
}

func vmHWM() (kib uint64, ok bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, found := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		return n, err == nil
	}
	return 0, false
}
