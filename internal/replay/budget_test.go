package replay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// pingPong is a livelock: two coroutines hand a turn back and forth, so
// each always makes progress and the decision never settles. onTurn runs
// on every hand-over.
func pingPong(onTurn func()) replay.WorkflowFunc {
	return func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		turn := 0
		for me := range 2 {
			env.Go(func(env *replay.Env) {
				for {
					env.Await(func() bool { return turn == me })
					onTurn()
					turn = 1 - me
				}
			})
		}
		env.Await(func() bool { return false })
		return nil, nil
	}
}

var startEvent = stream.Event{ID: 0, Type: stream.WorkflowExecutionStarted, Time: t0, Attrs: &stream.WorkflowExecutionStartedAttrs{}}

// feedWithin feeds events and fails the test if Feed has not returned
// within limit: a machine that never settles would otherwise hang the
// test binary.
func feedWithin(t *testing.T, ctx context.Context, m *replay.Machine, limit time.Duration, events ...stream.Event) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- m.Feed(ctx, events...) }()
	select {
	case err := <-res:
		return err
	case <-time.After(limit):
		t.Fatalf("Feed did not return within %s", limit)
		return nil
	}
}

func TestLivelockExhaustsTheDecisionBudget(t *testing.T) {
	m := replay.New(replay.Config{SagaID: "s", DeadlockTimeout: 200 * time.Millisecond, Workflow: pingPong(func() {})})
	err := feedWithin(t, t.Context(), m, 5*time.Second, startEvent)
	if !errors.Is(err, replay.ErrDeadlock) || !strings.Contains(err.Error(), "did not settle within 200ms") {
		t.Fatalf("got %v, want a livelock matching ErrDeadlock", err)
	}
	if !errors.Is(m.Err(), replay.ErrDeadlock) || len(m.Propose(1, t0)) != 0 {
		t.Fatalf("the machine is still usable: %v", m.Err())
	}
	m.Close() // the coroutines were parked between resumes: they exit now
	goleak.VerifyNone(t)
}

// A decision that resumes coroutines many times but settles is no
// livelock: many coroutines, each taking its turn in reverse order of
// creation, so that every pass of the driver advances one of them.
func TestLongDecisionWithinTheBudgetSettles(t *testing.T) {
	const n = 40
	wf := func(env *replay.Env, _ stream.Payload) (stream.Payload, *stream.Failure) {
		next := n - 1
		for i := range n {
			env.Go(func(env *replay.Env) {
				env.Await(func() bool { return next == i })
				env.ScheduleActivity(env.RootScope(), fmt.Sprint(i), nil, stream.ActivityOptions{})
				next--
			})
		}
		env.Await(func() bool { return next < 0 })
		env.Await(func() bool { return false })
		return nil, nil
	}
	m := replay.New(replay.Config{SagaID: "s", Workflow: wf})
	defer m.Close()
	if err := feedWithin(t, t.Context(), m, 10*time.Second, startEvent); err != nil {
		t.Fatal(err)
	}
	props := m.Propose(1, t0)
	if len(props) != n {
		t.Fatalf("proposed %d commands, want %d", len(props), n)
	}
	for k, p := range props {
		if got, want := p.Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType, fmt.Sprint(n-1-k); got != want {
			t.Fatalf("command %d schedules %s, want %s", k, got, want)
		}
	}
}

// The end of Feed's context stops a decision that would otherwise run to
// its budget (a minute here), between two resumes.
func TestCanceledContextInterruptsTheDecision(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	turns := 0
	looping := make(chan struct{})
	m := replay.New(replay.Config{SagaID: "s", DeadlockTimeout: time.Minute, Workflow: pingPong(func() {
		if turns++; turns == 100 {
			close(looping)
		}
	})})
	canceled := make(chan struct{})
	go func() {
		defer close(canceled)
		<-looping
		cancel()
	}()
	err := feedWithin(t, ctx, m, 10*time.Second, startEvent)
	<-canceled
	if !errors.Is(err, replay.ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want ErrInterrupted and context.Canceled", err)
	}
	if err := m.Feed(t.Context()); !errors.Is(err, replay.ErrInterrupted) {
		t.Fatalf("an interrupted machine was used again: %v", err)
	}
	m.Close()
	goleak.VerifyNone(t)
}
