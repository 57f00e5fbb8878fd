// Package procmem reads the memory figures the kernel keeps for this
// process (Linux's /proc/self/status), for the benchmarks that report
// them.
package procmem

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// StatusMiB returns a "kB" field of /proc/self/status (VmRSS: the resident
// set now, VmHWM: its peak) in MiB; ok is false where there is no such
// file or field.
func StatusMiB(field string) (mib float64, ok bool) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, found := strings.CutPrefix(sc.Text(), field+":")
		if !found {
			continue
		}
		fields := strings.Fields(rest) // "123456 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, false
		}
		return kb / 1024, true
	}
	return 0, false
}
