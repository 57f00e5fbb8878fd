package backoff

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jetsaga/saga/internal/clock"
)

func TestDelayGrowsCapsAndJitters(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: -1}
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 50: time.Second} {
		if got := p.Delay(attempt); got != want {
			t.Errorf("attempt %d: %s, want %s", attempt, got, want)
		}
	}
	low, high := p, p
	low.Jitter, low.Rand = 0.2, func() float64 { return 0 }
	high.Jitter, high.Rand = 0.2, func() float64 { return 0.999999 }
	if got := low.Delay(1); got != 80*time.Millisecond {
		t.Errorf("lowest jitter: %s", got)
	}
	if got := high.Delay(1); got < 119*time.Millisecond || got > 120*time.Millisecond {
		t.Errorf("highest jitter: %s", got)
	}
	// The default jitter spreads delays: two writers that failed together
	// do not all wait the same time.
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[Policy{}.Delay(3)] = true
	}
	if len(seen) < 10 {
		t.Errorf("20 delays with default jitter took only %d values", len(seen))
	}
}

func TestRetryStopsAtItsBounds(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	err := Retry{Policy: Policy{Initial: time.Microsecond}, MaxAttempts: 3}.Do(context.Background(), func(context.Context) error {
		calls++
		return boom
	})
	if calls != 3 || !errors.Is(err, ErrExhausted) || !errors.Is(err, boom) {
		t.Fatalf("%d calls, %v", calls, err)
	}

	permanent := errors.New("permanent")
	calls = 0
	err = Retry{Policy: Policy{Initial: time.Microsecond}, Retryable: func(err error) bool { return !errors.Is(err, permanent) }}.
		Do(context.Background(), func(context.Context) error {
			calls++
			if calls == 2 {
				return permanent
			}
			return boom
		})
	if calls != 2 || !errors.Is(err, permanent) || errors.Is(err, ErrExhausted) {
		t.Fatalf("%d calls, %v", calls, err)
	}
}

// MaxElapsed is measured on the injected clock, and every retry is
// reported before its wait.
func TestRetryOnAFakeClock(t *testing.T) {
	clk := clock.NewFake(time.Unix(0, 0))
	sleeps := clk.Sleeps()
	var reported []time.Duration
	r := Retry{
		Policy:     Policy{Initial: time.Second, Max: 4 * time.Second, Jitter: -1},
		Clock:      clk,
		MaxElapsed: 10 * time.Second,
		OnRetry:    func(_ int, d time.Duration, _ error) { reported = append(reported, d) },
	}
	done := make(chan error, 1)
	calls := 0
	go func() {
		done <- r.Do(context.Background(), func(context.Context) error {
			calls++
			return errors.New("down")
		})
	}()
	// 1s, 2s, 4s fit in 10s; the next 4s would end past it.
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
		if got := <-sleeps; got != want {
			t.Fatalf("slept %s, want %s", got, want)
		}
		clk.Advance(want)
	}
	err := <-done
	if !errors.Is(err, ErrExhausted) || calls != 4 || len(reported) != 3 {
		t.Fatalf("%d calls, %d reports: %v", calls, len(reported), err)
	}
}

func TestRetryEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	boom := errors.New("boom")
	calls := 0
	err := Retry{Policy: Policy{Initial: time.Hour}}.Do(ctx, func(context.Context) error {
		calls++
		cancel()
		return boom
	})
	if calls != 1 || !errors.Is(err, boom) {
		t.Fatalf("%d calls, %v", calls, err)
	}
}
