// Package backoff owns the engine's retry schedules: exponential delays with
// jitter, and the one loop that retries an operation with them, bounded in
// attempts or time and logging as it goes. Every retry in the engine goes
// through it, so that none spins without a bound, without jitter or
// without a trace.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jetsaga/saga/internal/clock"
)

// Policy is an exponential schedule: Initial, then each delay Multiplier
// times the last, at most Max, each spread by ±Jitter.
type Policy struct {
	// Initial is the first delay. Defaults to 50ms.
	Initial time.Duration
	// Max caps the delays (before jitter). Defaults to 2s.
	Max time.Duration
	// Multiplier grows the delays. Defaults to 2.
	Multiplier float64
	// Jitter spreads each delay uniformly over [d·(1-Jitter), d·(1+Jitter)],
	// so that writers that failed together do not retry together.
	// Defaults to 0.2; a negative value means none.
	Jitter float64
	// Rand returns a number in [0, 1). Defaults to math/rand/v2.
	Rand func() float64
}

func (p Policy) withDefaults() Policy {
	if p.Initial <= 0 {
		p.Initial = 50 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 2 * time.Second
	}
	if p.Multiplier < 1 {
		p.Multiplier = 2
	}
	if p.Jitter == 0 {
		p.Jitter = 0.2
	}
	if p.Jitter < 0 {
		p.Jitter = 0
	}
	if p.Jitter > 1 {
		p.Jitter = 1
	}
	if p.Rand == nil {
		p.Rand = rand.Float64
	}
	return p
}

// Delay is the wait after the attempt-th failure (1-based).
func (p Policy) Delay(attempt int) time.Duration {
	p = p.withDefaults()
	d := float64(p.Initial) * math.Pow(p.Multiplier, float64(max(attempt, 1)-1))
	d = min(d, float64(p.Max))
	d *= 1 - p.Jitter + 2*p.Jitter*p.Rand()
	return time.Duration(d)
}

// Retry retries an operation on a Policy.
type Retry struct {
	Policy Policy
	// Clock defaults to the real clock.
	Clock clock.Clock
	// MaxAttempts bounds the calls, the first included; 0: no bound.
	MaxAttempts int
	// MaxElapsed bounds the time from the first call; 0: no bound. The
	// operation is not started again once it has passed.
	MaxElapsed time.Duration
	// Retryable says which errors are worth another call; nil: all.
	Retryable func(error) bool
	// OnRetry is called before each wait, with the number of the call that
	// failed, the coming delay and the error: log there.
	OnRetry func(attempt int, delay time.Duration, err error)
}

// ErrExhausted wraps the last error of a Retry that ran out of attempts or
// time.
var ErrExhausted = errors.New("retries exhausted")

// Do calls op until it succeeds, returns an error Retryable refuses, the
// bounds are reached (the last error, wrapped with ErrExhausted), or ctx
// ends (the last error, or ctx's if op never ran).
func (r Retry) Do(ctx context.Context, op func(ctx context.Context) error) error {
	clk := r.Clock
	if clk == nil {
		clk = clock.Real
	}
	began := clk.Now()
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := op(ctx)
		if err == nil {
			return nil
		}
		if r.Retryable != nil && !r.Retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return err
		}
		delay := r.Policy.Delay(attempt)
		if r.MaxAttempts > 0 && attempt >= r.MaxAttempts ||
			r.MaxElapsed > 0 && clk.Now().Add(delay).Sub(began) > r.MaxElapsed {
			return fmt.Errorf("%w after %d attempts: %w", ErrExhausted, attempt, err)
		}
		if r.OnRetry != nil {
			r.OnRetry(attempt, delay, err)
		}
		if clk.Sleep(ctx, delay) != nil {
			return err
		}
	}
}
