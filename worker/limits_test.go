package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// newEnvWith is newEnv on a server whose options adjust changes, or next
// to a stream an operator created before any node started (prepare).
func newEnvWith(t *testing.T, adjust func(*embeddednats.Options), prepare func(*natstest.Server)) *env {
	t.Helper()
	var srv *natstest.Server
	if adjust != nil {
		srv = natstest.Start(t, adjust)
	} else {
		srv = natstest.Start(t)
	}
	if prepare != nil {
		prepare(srv)
	}
	return newEnvOn(t, srv)
}

// link is a value that nests one msgpack level per element.
type link struct{ Next *link }

// chain returns a list of n links: its deepest value (the last nil) sits n
// levels below the root.
func chain(n int) *link {
	var l *link
	for range n {
		l = &link{Next: l}
	}
	return l
}

func (l *link) length() int {
	n := 0
	for ; l != nil; l = l.Next {
		n++
	}
	return n
}

// The old encoder checked only sizes, so a 70-deep result, start input or
// activity input was appended, and the reader's 64-level limit then made
// the saga's history unreadable for good (blocked, history_unreadable;
// History failed) instead of failing the activity, the start or the call.
func TestDeeplyNestedValuesAreRefusedWhereMade(t *testing.T) {
	const tooDeep = 70
	e := newEnv(t)
	var deepRuns atomic.Int32
	deepResult := saga.NewActivity("deep-result", func(_ context.Context, _ int) (*link, error) {
		deepRuns.Add(1)
		return chain(tooDeep), nil
	})
	echoLink := saga.NewActivity("echo-link", func(_ context.Context, l *link) (*link, error) { return l, nil })
	returnsDeep := saga.NewWorkflow("returns-deep", 1, func(ctx saga.Context, _ int) (int, error) {
		_, err := saga.ExecuteActivity(ctx, deepResult, 0).Get(ctx)
		return 0, err
	})
	sendsDeep := saga.NewWorkflow("sends-deep", 1, func(ctx saga.Context, _ int) (string, error) {
		_, err := saga.ExecuteActivity(ctx, echoLink, chain(tooDeep)).Get(ctx)
		if !errors.Is(err, saga.KindValidation) || !errors.Is(err, stream.ErrTooLarge) {
			return "", fmt.Errorf("unexpected: %v", err)
		}
		return "refused: " + err.Error(), nil
	})
	echoes := saga.NewWorkflow("echoes-link", 1, func(ctx saga.Context, in *link) (*link, error) {
		return saga.ExecuteActivity(ctx, echoLink, in).Get(ctx)
	})
	e.node(worker.Options{}, returnsDeep, sendsDeep, echoes, deepResult, echoLink)

	t.Run("activity result", func(t *testing.T) {
		_, err := run(e, returnsDeep, "deep-result-1", 0)
		if !errors.Is(err, saga.KindValidation) || !strings.Contains(fmt.Sprint(err), "nested deeper than 56 levels") {
			t.Fatalf("got %v, want a validation failure naming the nesting", err)
		}
		d, err := e.cl.Describe(e.ctx, "deep-result-1")
		if err != nil || d.Status != saga.StatusFailed {
			t.Fatalf("describe: %+v, %v; want failed", d, err)
		}
		failed := findAttrs[*stream.ActivityTaskFailedAttrs](e.history("deep-result-1"))
		if len(failed) != 1 || !failed[0].Failure.NonRetryable {
			t.Fatalf("failed events %+v: want one, non-retryable", failed)
		}
		if deepRuns.Load() != 1 {
			t.Fatalf("activity ran %d times, want once", deepRuns.Load())
		}
	})

	t.Run("start input", func(t *testing.T) {
		_, err := saga.StartWorkflow(e.ctx, e.cl, echoes, chain(tooDeep), saga.StartOptions{ID: "deep-start-1"})
		if !errors.Is(err, saga.KindValidation) || !errors.Is(err, stream.ErrTooLarge) {
			t.Fatalf("got %v, want a validation error with ErrTooLarge", err)
		}
		if _, err := e.cl.Describe(e.ctx, "deep-start-1"); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("describe after a refused start: %v, want not found", err)
		}
	})

	t.Run("activity input", func(t *testing.T) {
		out, err := run(e, sendsDeep, "deep-input-1", 0)
		if err != nil || !strings.Contains(out, "nested deeper than 56 levels") {
			t.Fatalf("got %q, %v", out, err)
		}
		if n := len(findAttrs[*stream.ActivityTaskScheduledAttrs](e.history("deep-input-1"))); n != 0 {
			t.Fatalf("%d activities scheduled", n)
		}
	})

	t.Run("at the bound", func(t *testing.T) {
		for n, ok := range map[int]bool{stream.MaxPayloadDepth: true, stream.MaxPayloadDepth + 1: false} {
			b, err := stream.Marshal(chain(n))
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.CheckValue("value", b, 0); (err == nil) != ok {
				t.Fatalf("%d links: CheckValue says %v", n, err)
			}
		}
		out, err := run(e, echoes, "deep-bound-1", chain(stream.MaxPayloadDepth))
		if err != nil || out.length() != stream.MaxPayloadDepth {
			t.Fatalf("got %d links, %v; want %d links back", out.length(), err, stream.MaxPayloadDepth)
		}
	})
}

// Before, the payload limit was 256 KiB whatever the server took, and a
// result whose append failed for good was retried in-process forever,
// holding its task and slot: the saga stayed running, and so did the other
// saga waiting for the only activity slot. An operator's smaller history
// stream limit was overwritten by the node (CreateOrUpdateStream), so the
// 40 KiB result was stored instead of failing the activity.
func TestResultLargerThanTheServerAcceptsFailsTheActivity(t *testing.T) {
	t.Run("server max_payload", func(t *testing.T) {
		e := newEnvWith(t, func(o *embeddednats.Options) { o.MaxPayload = 64 << 10 }, nil)
		st, err := stream.Open(e.srv.Conn(), stream.Config{})
		if err != nil {
			t.Fatal(err)
		}
		limit := st.Config().MaxPayloadSize
		st.Close()
		if limit >= 64<<10 {
			t.Fatalf("payload limit %d is not below the server's max_payload of 64 KiB", limit)
		}
		huge := saga.NewActivity("huge", func(_ context.Context, _ int) (string, error) {
			return strings.Repeat("h", 100<<10), nil
		})
		small := saga.NewActivity("small", func(_ context.Context, n int) (int, error) { return n + 1, nil })
		hugeWF := saga.NewWorkflow("huge-wf", 1, func(ctx saga.Context, _ int) (int, error) {
			s, err := saga.ExecuteActivity(ctx, huge, 0).Get(ctx)
			return len(s), err
		})
		smallWF := saga.NewWorkflow("small-wf", 1, func(ctx saga.Context, n int) (int, error) {
			return saga.ExecuteActivity(ctx, small, n).Get(ctx)
		})
		// One activity slot: a result stuck in recording would hold it.
		e.node(worker.Options{ActivityConcurrency: 1}, hugeWF, smallWF, huge, small)
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		hugeRun, err := saga.StartWorkflow(ctx, e.cl, hugeWF, 0, saga.StartOptions{ID: "huge-1"})
		if err != nil {
			t.Fatal(err)
		}
		smallRun, err := saga.StartWorkflow(ctx, e.cl, smallWF, 1, saga.StartOptions{ID: "small-1"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = hugeRun.Get(ctx)
		if !errors.Is(err, saga.KindValidation) || !strings.Contains(fmt.Sprint(err), "too large") {
			t.Fatalf("huge saga: got %v, want a validation failure saying the result is too large", err)
		}
		if out, err := smallRun.Get(ctx); err != nil || out != 2 {
			t.Fatalf("small saga: got %d, %v", out, err)
		}
	})

	t.Run("history stream max_msg_size", func(t *testing.T) {
		const streamLimit = 32 << 10
		cfg := stream.Config{}.Defaults()
		e := newEnvWith(t, nil, func(srv *natstest.Server) {
			js, err := jetstream.New(srv.Conn())
			if err != nil {
				t.Fatal(err)
			}
			// The history stream as a node would create it, but with a
			// smaller message limit chosen by the operator.
			_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{
				Name:        cfg.HistoryStream(0),
				Description: "saga histories, one subject per saga",
				Subjects:    []string{cfg.HistoryFilter(0)},
				Retention:   jetstream.LimitsPolicy,
				Storage:     cfg.Storage,
				Replicas:    cfg.Replicas,
				MaxMsgSize:  streamLimit,
				Duplicates:  cfg.DuplicateWindow,
				DenyDelete:  true,
				AllowDirect: true,
				Discard:     jetstream.DiscardNew,
			})
			if err != nil {
				t.Fatal(err)
			}
		})
		var runs atomic.Int32
		forty := saga.NewActivity("forty", func(_ context.Context, _ int) (string, error) {
			runs.Add(1)
			return strings.Repeat("f", 40<<10), nil
		})
		wf := saga.NewWorkflow("forty-wf", 1, func(ctx saga.Context, _ int) (int, error) {
			s, err := saga.ExecuteActivity(ctx, forty, 0).Get(ctx)
			return len(s), err
		})
		e.node(worker.Options{}, wf, forty)
		js, err := jetstream.New(e.srv.Conn())
		if err != nil {
			t.Fatal(err)
		}
		s, err := js.Stream(e.ctx, cfg.HistoryStream(0))
		if err != nil {
			t.Fatal(err)
		}
		if got := s.CachedInfo().Config.MaxMsgSize; got != streamLimit {
			t.Fatalf("the node changed the history stream's max_msg_size to %d", got)
		}
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		r, err := saga.StartWorkflow(ctx, e.cl, wf, 0, saga.StartOptions{ID: "forty-1"})
		if err != nil {
			t.Fatal(err)
		}
		// The node lowers the payload limit to the stream's message limit
		// in force, so the result is refused where it is made, as too
		// large (were it not, the append would fail for good and the
		// result be recorded as a failure that says so).
		_, err = r.Get(ctx)
		if !errors.Is(err, saga.KindValidation) || !strings.Contains(fmt.Sprint(err), "payload limit") {
			t.Fatalf("got %v, want a failure saying the result is over the payload limit", err)
		}
		failed := findAttrs[*stream.ActivityTaskFailedAttrs](e.history("forty-1"))
		if len(failed) != 1 || !failed[0].Failure.NonRetryable ||
			!strings.Contains(saga.FromFailure(failed[0].Failure).Error(), "payload limit") {
			t.Fatalf("failed events %+v: want one, non-retryable, saying the result is over the limit", failed)
		}
		if runs.Load() != 1 {
			t.Fatalf("activity ran %d times, want once", runs.Load())
		}
	})
}

// Before, a node blocked a deadlocked saga on the 5th delivery of its
// commit (lastChance = NumDelivered >= 5), whatever the earlier deliveries
// failed of: after four transient append failures, the first slow decision
// blocked the saga at once.
func TestDeadlockVerdictsNotDeliveriesBlockTheSaga(t *testing.T) {
	const deadlock = 300 * time.Millisecond
	e := newEnv(t)
	var appends, slowRuns, stuckRuns atomic.Int32
	var slow atomic.Bool
	hooks := &worker.Hooks{BeforeAppend: func(_ context.Context, sagaID string, _ *stream.Commit) error {
		if sagaID != "patient-1" {
			return nil
		}
		n := appends.Add(1)
		if n > 4 {
			return nil
		}
		if n == 4 {
			slow.Store(true) // the node comes back from the outage starved
		}
		return fmt.Errorf("injected append timeout %d: %w", n, stream.ErrUnavailable)
	}}
	inc := saga.NewActivity("inc", func(_ context.Context, n int) (int, error) { return n + 1, nil })
	patient := saga.NewWorkflow("patient", 1, func(ctx saga.Context, n int) (int, error) {
		if slow.CompareAndSwap(true, false) {
			slowRuns.Add(1)
			<-time.After(3 * deadlock) // a CPU-starved decision, once
		}
		return saga.ExecuteActivity(ctx, inc, n).Get(ctx)
	})
	gate := make(chan struct{})
	defer close(gate)
	stuck := saga.NewWorkflow("stuck", 1, func(ctx saga.Context, _ int) (int, error) {
		stuckRuns.Add(1)
		<-gate // a native channel: deadlocks on every decision
		return 0, nil
	})
	n := e.node(worker.Options{DeadlockTimeout: deadlock, Hooks: hooks}, patient, stuck, inc)

	for id, wf := range map[string]string{"patient-1": "patient", "stuck-1": "stuck"} {
		if _, err := e.cl.Start(e.ctx, wf, 1, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
	}

	d, err := e.cl.Wait(e.ctx, "patient-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCompleted {
		t.Fatalf("patient-1 %s %+v, want completed", d.Status, d.Blocked)
	}
	if appends.Load() < 5 || slowRuns.Load() != 1 {
		t.Fatalf("%d appends tried, %d slow decisions: the test did not exercise the outage", appends.Load(), slowRuns.Load())
	}
	if b := findAttrs[*stream.WorkflowExecutionBlockedAttrs](e.history("patient-1")); len(b) != 0 {
		t.Fatalf("patient-1 was blocked on the way: %+v", b[0])
	}

	d, err = e.cl.Wait(e.ctx, "stuck-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedDeadlock {
		t.Fatalf("stuck-1 %s %+v, want blocked for deadlock", d.Status, d.Blocked)
	}
	if got := stuckRuns.Load(); got != 5 {
		t.Fatalf("stuck-1 blocked after %d deadlocked decisions, want 5", got)
	}
	// A wake is the operator's last word: the next deadlock blocks at once
	// (a patient verdict would fail the wake and leave the saga for later).
	if err := n.Wake(e.ctx, "stuck-1"); err != nil {
		t.Fatal(err)
	}
	if got := stuckRuns.Load(); got != 6 {
		t.Fatalf("the wake ran %d decisions, want 1", got-5)
	}
	d, err = e.cl.Describe(e.ctx, "stuck-1")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedDeadlock {
		t.Fatalf("after the wake: %+v, %v; want blocked for deadlock", d, err)
	}
}

// pingPong is a livelock: two coroutines hand a turn back and forth with
// Await forever; turns counts the hand-overs.
func pingPong(name string, turns *atomic.Int64) *saga.Workflow[int, int] {
	return saga.NewWorkflow(name, 1, func(ctx saga.Context, _ int) (int, error) {
		turn := 0
		for me := range 2 {
			ctx.Go(func(ctx saga.Context) {
				for {
					ctx.Await(func() bool { return turn == me })
					turns.Add(1)
					turn = 1 - me
				}
			})
		}
		ctx.Await(func() bool { return false })
		return 0, nil
	})
}

// Before, a decision had no budget: coroutines that kept waking each other
// never returned to the node, so the saga was never blocked (Wait timed
// out), StopAndCancel timed out waiting for the handler, and the
// coroutines outlived the test (goleak in TestMain).
func TestLivelockIsADeadlockAndStopEndsIt(t *testing.T) {
	inc := saga.NewActivity("inc", func(_ context.Context, n int) (int, error) { return n + 1, nil })
	simple := saga.NewWorkflow("simple", 1, func(ctx saga.Context, n int) (int, error) {
		return saga.ExecuteActivity(ctx, inc, n).Get(ctx)
	})

	t.Run("blocked as a deadlock", func(t *testing.T) {
		e := newEnv(t)
		var turns atomic.Int64
		livelock := pingPong("livelock", &turns)
		n := e.node(worker.Options{DeadlockTimeout: 200 * time.Millisecond}, livelock, simple, inc)
		// Registered after e.node's, so it runs first: a livelock the node
		// cannot end fails the test rather than hanging it in Stop.
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if err := n.StopAndCancel(ctx); err != nil {
				t.Errorf("stop: %v", err)
			}
		})
		if _, err := e.cl.Start(e.ctx, "livelock", 0, saga.StartOptions{ID: "livelock-1"}); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 10*time.Second, "the livelock to run", func() bool { return turns.Load() > 0 })
		// The node still serves other sagas.
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		defer cancel()
		r, err := saga.StartWorkflow(ctx, e.cl, simple, 1, saga.StartOptions{ID: "simple-1"})
		if err != nil {
			t.Fatal(err)
		}
		if out, err := r.Get(ctx); err != nil || out != 2 {
			t.Fatalf("simple-1: got %d, %v", out, err)
		}
		d, err := e.cl.Wait(e.ctx, "livelock-1")
		if err != nil {
			t.Fatal(err)
		}
		if d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedDeadlock || !strings.Contains(d.Blocked.Message, "did not settle") {
			t.Fatalf("livelock-1 %s %+v, want blocked for a livelock", d.Status, d.Blocked)
		}
	})

	t.Run("stop cancels it", func(t *testing.T) {
		e := newEnv(t)
		var turns atomic.Int64
		livelock := pingPong("livelock", &turns)
		// A budget far longer than the test waits: only the stop can end
		// the decision in time.
		n := e.node(worker.Options{DeadlockTimeout: 20 * time.Second}, livelock)
		if _, err := e.cl.Start(e.ctx, "livelock", 0, saga.StartOptions{ID: "livelock-2"}); err != nil {
			t.Fatal(err)
		}
		natstest.WaitFor(t, 10*time.Second, "the livelock to run", func() bool { return turns.Load() > 100 })
		ctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
		defer cancel()
		if err := n.StopAndCancel(ctx); err != nil {
			t.Fatalf("StopAndCancel during a livelock: %v", err)
		}
		// Stopping is no verdict on the saga: it waits for another node.
		d, err := e.cl.Describe(e.ctx, "livelock-2")
		if err != nil || d.Status != saga.StatusRunning {
			t.Fatalf("after the stop: %+v, %v; want running", d, err)
		}
	})
}
