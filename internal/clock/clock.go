// Package clock owns the engine's view of time: the real clock, and a fake
// one that tests move by hand. Code whose behaviour depends on time (retry
// schedules, due times, age checks) takes a Clock instead of calling
// time.Now and time.Sleep.
package clock

import (
	"context"
	"sort"
	"sync"
	"time"
)

// Clock tells the time and waits.
type Clock interface {
	Now() time.Time
	// Sleep waits d, or until ctx ends, whose error it then returns.
	Sleep(ctx context.Context, d time.Duration) error
}

// Real is the system clock.
var Real Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Fake is a clock that moves only when told to. Sleepers wake when Advance
// passes their deadline. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
	// slept receives every Sleep call's duration, when the channel is set
	// (see Sleeps), so that a test can wait for a sleeper to arrive.
	slept chan time.Duration
}

type fakeWaiter struct {
	at   time.Time
	wake chan struct{}
}

// NewFake returns a fake clock showing t.
func NewFake(t time.Time) *Fake { return &Fake{now: t} }

// Sleeps returns a channel that receives the duration of every Sleep
// started from now on.
func (f *Fake) Sleeps() <-chan time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.slept == nil {
		f.slept = make(chan time.Duration, 1024)
	}
	return f.slept
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Sleep waits until Advance moves the clock d past now, or ctx ends.
func (f *Fake) Sleep(ctx context.Context, d time.Duration) error {
	f.mu.Lock()
	if f.slept != nil {
		select {
		case f.slept <- d:
		default:
		}
	}
	if d <= 0 {
		f.mu.Unlock()
		return ctx.Err()
	}
	w := &fakeWaiter{at: f.now.Add(d), wake: make(chan struct{})}
	f.waiters = append(f.waiters, w)
	f.mu.Unlock()
	select {
	case <-w.wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Advance moves the clock by d and wakes the sleepers whose time came, in
// the order of their deadlines.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	sort.SliceStable(f.waiters, func(i, j int) bool { return f.waiters[i].at.Before(f.waiters[j].at) })
	keep := f.waiters[:0]
	for _, w := range f.waiters {
		if w.at.After(f.now) {
			keep = append(keep, w)
			continue
		}
		close(w.wake)
	}
	f.waiters = keep
}
