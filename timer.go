package saga

import (
	"time"

	"github.com/jetsaga/saga/internal/replay"
)

// Timer is a durable timer's future: ready when the timer fires. It is an
// Awaitable, so it can be raced against other futures and signals (see
// Select). The wait holds no goroutine and no memory on any node: the
// timer is an entry with a TTL in the timers bucket, and the saga's
// history records TimerCreated, then TimerFired or TimerCanceled.
type Timer struct {
	f *replay.Future
}

var _ Awaitable = (*Timer)(nil)

// NewTimer starts a timer of d, rounded up to whole seconds. Canceling ctx
// before it fires stops the wait (Get returns an error matching
// ErrCanceled) and deletes the durable timer, recording TimerCanceled. A
// d of zero or less is ready at once.
func NewTimer(ctx Context, d time.Duration) *Timer {
	return &Timer{f: ctx.env.NewTimer(ctx.scope, d)}
}

// Ready reports whether the timer fired (or was canceled).
func (t *Timer) Ready() bool { return t.f.Ready() }

// Get waits until the timer fires. It returns an error matching
// ErrCanceled when ctx, or the context the timer was started in, is
// canceled first.
func (t *Timer) Get(ctx Context) error {
	if _, _, canceled := t.f.Get(ctx.scope); canceled {
		return canceledError("timer")
	}
	return nil
}

// Sleep waits d (rounded up to whole seconds) on a durable timer: the
// saga may wait hours or days, across node restarts, without holding
// anything on any node. It returns an error matching ErrCanceled when ctx
// is canceled first.
func Sleep(ctx Context, d time.Duration) error {
	return NewTimer(ctx, d).Get(ctx)
}
