package worker_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// activityConsumer returns what the server reports of the shared consumer
// of an activity type's tasks.
func (e *env) activityConsumer(activityType string) *jetstream.ConsumerInfo {
	e.t.Helper()
	js, err := jetstream.New(e.srv.Conn())
	if err != nil {
		e.t.Fatal(err)
	}
	cons, err := js.Consumer(e.ctx, stream.Config{}.Defaults().TaskStream(), stream.ActivityTaskConsumer(activityType))
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := cons.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info
}

// startAndStop starts a node and stops it at once, as a deploy rolled back
// would.
func (e *env) startAndStop(opts worker.Options, defs ...saga.Definition) {
	e.t.Helper()
	if err := e.node(opts, defs...).Stop(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

// takes is an activity body that takes d (or until canceled) and reports
// the attempt it ran as.
func takes(calls *atomic.Int32, d time.Duration) func(context.Context, int) (int, error) {
	return func(ctx context.Context, _ int) (int, error) {
		calls.Add(1)
		info, _ := saga.GetActivityInfo(ctx)
		select {
		case <-time.After(d):
			return info.Attempt, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Before the rewrite every node created the shared consumers with
// CreateOrUpdateConsumer and heartbeat at its own AckWait/3: the 1 s node
// left the consumer at 1 s while the 6 s nodes beat every 2 s, so the 4 s
// activity was redelivered and ran again (and a late 1 s node did the same
// to the 9 s node of the second part).
func TestSharedConsumerSettingsAreNotRewritten(t *testing.T) {
	t.Run("a short-lived node does not shorten the AckWait", func(t *testing.T) {
		e := newEnv(t)
		var calls atomic.Int32
		long := saga.NewActivity("long-running", takes(&calls, 4*time.Second))
		wf := saga.NewWorkflow("long-wf", 1, func(ctx saga.Context, n int) (int, error) {
			return saga.ExecuteActivity(ctx, long, n).Get(ctx)
		})
		e.node(worker.Options{NodeName: "a", AckWait: 6 * time.Second}, wf, long)
		e.node(worker.Options{NodeName: "b", AckWait: 6 * time.Second}, wf, long)
		e.startAndStop(worker.Options{NodeName: "rolled-back", AckWait: time.Second}, wf, long)
		if got := e.activityConsumer("long-running").Config.AckWait; got != 6*time.Second {
			t.Fatalf("activity consumer AckWait %s after a 1s node came and went, want 6s", got)
		}
		out, err := run(e, wf, "long-1", 0)
		if err != nil || out != 1 {
			t.Fatalf("got %d, %v; want the result of attempt 1", out, err)
		}
		if c := calls.Load(); c != 1 {
			t.Fatalf("activity ran %d times, want once", c)
		}
		started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("long-1"))
		if len(started) != 1 || started[0].Attempt != 1 {
			t.Fatalf("started events %+v: want one, for attempt 1", started)
		}
		if got := e.activityConsumer("long-running").Config.AckWait; got != 6*time.Second {
			t.Fatalf("activity consumer AckWait %s, want 6s", got)
		}
	})
	t.Run("heartbeats follow the consumer, not the node's option", func(t *testing.T) {
		e := newEnv(t)
		var calls atomic.Int32
		slow := saga.NewActivity("slower-than-ackwait", takes(&calls, 2500*time.Millisecond))
		wf := saga.NewWorkflow("slower-wf", 1, func(ctx saga.Context, n int) (int, error) {
			return saga.ExecuteActivity(ctx, slow, n).Get(ctx)
		})
		short := worker.Options{AckWait: time.Second}
		e.startAndStop(short, wf, slow) // creates the consumer with 1s
		e.node(worker.Options{NodeName: "patient", AckWait: 9 * time.Second}, wf, slow)
		e.startAndStop(short, wf, slow)
		if got := e.activityConsumer("slower-than-ackwait").Config.AckWait; got != time.Second {
			t.Fatalf("activity consumer AckWait %s, want the 1s it was created with", got)
		}
		// Beating every 3 s (its own 9 s / 3), the node would lose the task
		// after 1 s and run it again.
		out, err := run(e, wf, "slower-1", 0)
		if err != nil || out != 1 {
			t.Fatalf("got %d, %v; want the result of attempt 1", out, err)
		}
		if c := calls.Load(); c != 1 {
			t.Fatalf("activity ran %d times, want once", c)
		}
		started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history("slower-1"))
		if len(started) != 1 || started[0].Attempt != 1 {
			t.Fatalf("started events %+v: want one, for attempt 1", started)
		}
	})
}

// Before the rewrite a stopping node dropped the task it held for a slot
// without a nak: it came back only after AckWait (here 20 s, past the
// test's 10 s deadline), and then as delivery 2, counted as attempt 2, which
// fails an activity allowed one attempt without running it.
func TestDrainGivesBackUnstartedTasks(t *testing.T) {
	e := newEnv(t)
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseBusy := func() { releaseOnce.Do(func() { close(release) }) }
	defer releaseBusy() // a failing test does not hold a's drain until its context ends
	busy := saga.NewActivity("busy", func(ctx context.Context, _ int) (int, error) {
		entered <- struct{}{}
		select {
		case <-release:
			return 0, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	var charges, charges5 atomic.Int32
	chargeBody := func(calls *atomic.Int32) func(context.Context, int) (int, error) {
		return func(ctx context.Context, _ int) (int, error) {
			calls.Add(1)
			info, _ := saga.GetActivityInfo(ctx)
			return info.Attempt, nil
		}
	}
	charge := saga.NewActivity("charge", chargeBody(&charges), saga.WithRetryPolicy(saga.RetryPolicy{MaximumAttempts: 1}))
	charge5 := saga.NewActivity("charge-default-policy", chargeBody(&charges5))
	busyWF := saga.NewWorkflow("busy-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, busy, 0).Get(ctx)
	})
	chargeWF := saga.NewWorkflow("charge-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, charge, 0).Get(ctx)
	})
	charge5WF := saga.NewWorkflow("charge5-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, charge5, 0).Get(ctx)
	})
	// A long AckWait: only a give-back hands a task over within the test.
	const ackWait = 20 * time.Second
	a := e.node(worker.Options{NodeName: "a", AckWait: ackWait, ActivityConcurrency: 1}, busyWF, chargeWF, charge5WF, busy, charge, charge5)

	busyRun, err := saga.StartWorkflow(e.ctx, e.cl, busyWF, 0, saga.StartOptions{ID: "busy-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-entered // a's only slot is taken
	chargeRun, err := saga.StartWorkflow(e.ctx, e.cl, chargeWF, 0, saga.StartOptions{ID: "charge-1"})
	if err != nil {
		t.Fatal(err)
	}
	charge5Run, err := saga.StartWorkflow(e.ctx, e.cl, charge5WF, 0, saga.StartOptions{ID: "charge5-1"})
	if err != nil {
		t.Fatal(err)
	}
	// a fetched both tasks and holds them, waiting for a slot.
	natstest.WaitFor(t, 10*time.Second, "node a to hold both charge tasks", func() bool {
		return e.activityConsumer("charge").NumAckPending == 1 && e.activityConsumer("charge-default-policy").NumAckPending == 1
	})
	if charges.Load()+charges5.Load() != 0 {
		t.Fatal("a charge ran on a node without a free slot")
	}

	deadline, cancel := context.WithTimeout(e.ctx, 10*time.Second) // under AckWait
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop(e.ctx) }() // drains: waits for busy
	e.node(worker.Options{NodeName: "b", AckWait: ackWait}, busyWF, chargeWF, charge5WF, charge, charge5)

	for _, r := range []*saga.Run[int]{chargeRun, charge5Run} {
		out, err := r.Get(deadline)
		if err != nil || out != 1 {
			t.Fatalf("%s: got %d, %v; want the result of attempt 1 before AckWait could pass", r.ID, out, err)
		}
		started := findAttrs[*stream.ActivityTaskStartedAttrs](e.history(r.ID))
		if len(started) != 1 || started[0].Attempt != 1 || started[0].Node != "b" {
			t.Fatalf("%s: started events %+v: want one, attempt 1, on b", r.ID, started)
		}
	}
	if c, c5 := charges.Load(), charges5.Load(); c != 1 || c5 != 1 {
		t.Fatalf("charges ran %d and %d times, want once each", c, c5)
	}
	select {
	case err := <-stopped:
		t.Fatalf("a's drain returned (%v) while busy still ran", err)
	default:
	}
	releaseBusy()
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if _, err := busyRun.Get(deadline); err != nil {
		t.Fatalf("busy saga: %v", err)
	}
}

// Before the rewrite the handlers had no recover(): the panic in the hook
// took the whole process (here the test binary) down, and would have taken
// down every node the commit was redelivered to.
func TestHandlerPanicIsRecoveredAndSetAside(t *testing.T) {
	e := newEnv(t)
	step := saga.NewActivity("step", func(_ context.Context, n int) (int, error) { return n + 1, nil })
	wf := saga.NewWorkflow("stepping", 1, func(ctx saga.Context, n int) (int, error) {
		return saga.ExecuteActivity(ctx, step, n).Get(ctx)
	})
	var panics atomic.Int32
	hooks := &worker.Hooks{BeforeAppend: func(_ context.Context, sagaID string, _ *stream.Commit) error {
		if sagaID == "poison" {
			panics.Add(1)
			panic("bug on saga poison")
		}
		return nil
	}}
	n := e.node(worker.Options{Hooks: hooks}, wf, step)
	if _, err := e.cl.Start(e.ctx, "stepping", 0, saga.StartOptions{ID: "poison"}); err != nil {
		t.Fatal(err)
	}
	// Other sagas go on meanwhile.
	if out, err := run(e, wf, "healthy-1", 1); err != nil || out != 2 {
		t.Fatalf("healthy-1: got %d, %v", out, err)
	}

	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var letters []stream.DeadLetter
	natstest.WaitFor(t, 10*time.Second, "the poisoned commit in the dead-letter stream", func() bool {
		letters, err = st.DeadLetters(e.ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(letters) > 0
	})
	dl := letters[0]
	if len(letters) != 1 || !strings.Contains(dl.Reason, "panic") || !strings.Contains(dl.Reason, "bug on saga poison") ||
		dl.Deliveries != 3 || !strings.HasSuffix(dl.Subject, ".poison") {
		t.Fatalf("dead letters %+v: want one, for saga poison, after 3 deliveries, saying it panicked", letters)
	}
	if p := panics.Load(); p != 3 {
		t.Fatalf("the handler panicked %d times, want 3", p)
	}
	// The count follows the dead letter's publication: wait for it.
	natstest.WaitFor(t, 10*time.Second, "the dead letter counted", func() bool { return n.Stats().DeadLetters >= 1 })
	if got := n.Stats().DeadLetters; got != 1 {
		t.Fatalf("Stats().DeadLetters = %d, want 1", got)
	}
	if events := e.history("poison"); len(events) != 1 {
		t.Fatalf("poisoned saga has %d events, want only its start", len(events))
	}
	// The node still works.
	if out, err := run(e, wf, "healthy-2", 5); err != nil || out != 6 {
		t.Fatalf("healthy-2: got %d, %v", out, err)
	}
}

// Before the rewrite node b's start rewrote the shared consumer's AckWait to
// its own 20 s, so the task a left behind came back only after 20 s, past
// the test's 10 s deadline.
func TestStopAndCancelLeavesWorkForOthers(t *testing.T) {
	e := newEnv(t)
	var calls atomic.Int32
	entered := make(chan struct{}, 1)
	canceled := make(chan struct{})
	work := saga.NewActivity("cancelable", func(ctx context.Context, n int) (int, error) {
		if calls.Add(1) > 1 {
			return n * 10, nil
		}
		entered <- struct{}{}
		<-ctx.Done()
		close(canceled)
		return 0, ctx.Err()
	})
	wf := saga.NewWorkflow("cancelable-wf", 1, func(ctx saga.Context, n int) (int, error) {
		return saga.ExecuteActivity(ctx, work, n).Get(ctx)
	})
	a := e.node(worker.Options{NodeName: "a", AckWait: time.Second}, wf, work)
	r, err := saga.StartWorkflow(e.ctx, e.cl, wf, 4, saga.StartOptions{ID: "sc-1"})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	// b follows the consumer's 1 s, not its own option.
	e.node(worker.Options{NodeName: "b", AckWait: 20 * time.Second}, wf, work)

	began := time.Now()
	if err := a.StopAndCancel(e.ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("StopAndCancel took %s", took)
	}
	select {
	case <-canceled:
	default:
		t.Fatal("StopAndCancel returned before the running activity's context was canceled")
	}

	deadline, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	out, err := r.Get(deadline)
	if err != nil || out != 40 {
		t.Fatalf("got %d, %v", out, err)
	}
	if c := calls.Load(); c != 2 {
		t.Fatalf("activity ran %d times, want 2 (canceled on a, then on b)", c)
	}
	events := e.history("sc-1")
	count := map[stream.EventType]int{}
	for i, ev := range events {
		if ev.ID != uint64(i) {
			t.Fatalf("event %d has id %d", i, ev.ID)
		}
		count[ev.Type]++
	}
	for _, typ := range []stream.EventType{stream.WorkflowExecutionStarted, stream.ActivityTaskScheduled, stream.ActivityTaskStarted, stream.ActivityTaskCompleted, stream.WorkflowExecutionCompleted} {
		if count[typ] != 1 {
			t.Errorf("%s recorded %d times, want once", typ, count[typ])
		}
	}
	if len(events) != 5 {
		t.Errorf("%d events, want 5: %v", len(events), count)
	}
	started := findAttrs[*stream.ActivityTaskStartedAttrs](events)
	// a's canceled attempt started without a record: it counts.
	if len(started) != 1 || started[0].Node != "b" || started[0].Attempt != 2 {
		t.Fatalf("started events %+v: want one, attempt 2, on b", started)
	}
}
