package saga

import (
	"testing"
	"time"
)

// A heartbeat timeout is recorded in whole seconds, rounded up (it runs on
// a durable timer), and a negative one means none: no option can make the
// heartbeat writer tick at zero intervals.
func TestHeartbeatTimeoutIsRecordedInWholeSeconds(t *testing.T) {
	for _, c := range []struct{ in, want time.Duration }{
		{0, 0},
		{-time.Second, 0},
		{time.Nanosecond, time.Second},
		{1500 * time.Millisecond, 2 * time.Second},
		{30 * time.Second, 30 * time.Second},
	} {
		if got := resolveActivityOptions(ActivityOptions{HeartbeatTimeout: c.in}, ActivityOptions{}).HeartbeatTimeout; got != c.want {
			t.Errorf("heartbeat timeout %s recorded as %s, want %s", c.in, got, c.want)
		}
	}
}
