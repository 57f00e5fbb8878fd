package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// The trip saga books steps 1..Steps in order, registering the undo of
// each after it succeeds; step FailAt fails for good.
type tripInput struct {
	Steps  int `json:"steps"`
	FailAt int `json:"fail_at,omitempty"`
	// HoldAt makes that step heartbeat until its context ends.
	HoldAt int `json:"hold_at,omitempty"`
	// FailUndo makes the undo of that step fail for good.
	FailUndo int `json:"fail_undo,omitempty"`
}

type tripStepInput struct {
	Step int  `json:"step"`
	Fail bool `json:"fail,omitempty"`
	Hold bool `json:"hold,omitempty"`
}

var (
	tripBook = saga.NewActivity[tripStepInput, string]("trip-book", nil)
	tripUndo = saga.NewActivity[tripStepInput, string]("trip-undo", nil,
		saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 50 * time.Millisecond, MaximumAttempts: 3}))
	tripWorkflow = saga.NewWorkflow("trip", 1, func(ctx saga.Context, in tripInput) (string, error) {
		for i := 1; i <= in.Steps; i++ {
			_, err := saga.ExecuteActivity(ctx, tripBook, tripStepInput{Step: i, Fail: i == in.FailAt, Hold: i == in.HoldAt}).Get(ctx)
			if err != nil {
				return "", err
			}
			if err := saga.AddCompensation(ctx, stepName(i), tripUndo, tripStepInput{Step: i, Fail: i == in.FailUndo}); err != nil {
				return "", err
			}
		}
		return "booked", nil
	})
)

func stepName(i int) string { return fmt.Sprintf("step-%d", i) }

// backOffice implements the trip's activities and records what ran.
type backOffice struct {
	mu     sync.Mutex
	booked []int
	undone []int
	// holdUndo, when set, blocks the undo of that step, after closing
	// undoHeld, until releaseUndo is closed or its context ends.
	holdUndo    int
	undoHeld    chan struct{}
	releaseUndo chan struct{}
	// holding is closed when a held booking starts heartbeating;
	// holdEnded receives the cause its context ended with.
	holding   chan struct{}
	holdEnded chan error
}

func newBackOffice() *backOffice {
	return &backOffice{undoHeld: make(chan struct{}), releaseUndo: make(chan struct{}), holding: make(chan struct{}), holdEnded: make(chan error, 1)}
}

func (b *backOffice) definitions() []saga.Definition {
	return []saga.Definition{
		tripWorkflow,
		tripBook.Implement(func(ctx context.Context, in tripStepInput) (string, error) {
			b.mu.Lock()
			b.booked = append(b.booked, in.Step)
			b.mu.Unlock()
			if in.Hold {
				close(b.holding)
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for {
					if err := saga.Heartbeat(ctx, in.Step); err != nil {
						return "", err
					}
					select {
					case <-ctx.Done():
						b.holdEnded <- context.Cause(ctx)
						return "", ctx.Err()
					case <-tick.C:
					}
				}
			}
			if in.Fail {
				return "", saga.Permanent(fmt.Errorf("step %d cannot be booked", in.Step))
			}
			return fmt.Sprintf("booking-%d", in.Step), nil
		}),
		tripUndo.Implement(func(ctx context.Context, in tripStepInput) (string, error) {
			if in.Step == b.holdUndo {
				close(b.undoHeld)
				select {
				case <-b.releaseUndo:
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			b.mu.Lock()
			b.undone = append(b.undone, in.Step)
			b.mu.Unlock()
			if in.Fail {
				return "", saga.Permanent(fmt.Errorf("step %d cannot be undone", in.Step))
			}
			return fmt.Sprintf("undone-%d", in.Step), nil
		}),
	}
}

func (b *backOffice) calls() (booked, undone []int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.booked), slices.Clone(b.undone)
}

// compensationSteps returns, in history order, the step of every event of
// type typ.
func compensationSteps(events []stream.Event, typ stream.EventType) []string {
	var out []string
	for _, e := range events {
		if e.Type != typ {
			continue
		}
		switch a := e.Attrs.(type) {
		case *stream.CompensationStepScheduledAttrs:
			out = append(out, a.Step)
		case *stream.CompensationStepCompletedAttrs:
			out = append(out, a.Step)
		case *stream.CompensationStepFailedAttrs:
			out = append(out, a.Step)
		}
	}
	return out
}

func runTrip(t *testing.T, cl *saga.Client, id string, in tripInput, opts saga.StartOptions) (*saga.Description, []stream.Event) {
	t.Helper()
	ctx := ctxTimeout(t, 60*time.Second)
	opts.ID = id
	if _, err := cl.Start(ctx, "trip", in, opts); err != nil {
		t.Fatal(err)
	}
	return waitTrip(t, ctx, cl, id)
}

func waitTrip(t *testing.T, ctx context.Context, cl *saga.Client, id string) (*saga.Description, []stream.Event) {
	t.Helper()
	d, err := cl.Wait(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	events, err := cl.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return d, events
}

func lastEvent(events []stream.Event) stream.Event { return events[len(events)-1] }

// The manual's flow, and a non-retryable error: the failing step runs
// once, compensation starts at once and undoes the steps last first.
func TestFailedStepCompensatesLIFO(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	c.node(worker.Options{}, bo.definitions()...)
	d, events := runTrip(t, c.client(), "trip-lifo", tripInput{Steps: 3, FailAt: 3}, saga.StartOptions{})
	if d.Status != saga.StatusFailed {
		t.Fatalf("status %s", d.Status)
	}
	booked, undone := bo.calls()
	if !slices.Equal(booked, []int{1, 2, 3}) || !slices.Equal(undone, []int{2, 1}) {
		t.Fatalf("booked %v undone %v", booked, undone)
	}
	if got := compensationSteps(events, stream.CompensationStepCompleted); !slices.Equal(got, []string{"step-2", "step-1"}) {
		t.Fatalf("completed compensations %v", got)
	}
	// Non-retryable: one attempt, and the next decision is compensation.
	for i, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskFailedAttrs); ok {
			if a.Attempts != 1 {
				t.Fatalf("failing step ran %d attempts", a.Attempts)
			}
			if next := events[i+1]; next.Type != stream.CompensationStepScheduled {
				t.Fatalf("after the failure: %s", next.Type)
			}
		}
	}
	end := lastEvent(events).Attrs.(*stream.WorkflowExecutionFailedAttrs)
	if o := end.Compensation; o == nil || o.Status != stream.CompensationCompleted || o.Completed != 2 {
		t.Fatalf("outcome %+v", end.Compensation)
	}
}

// A compensation that fails for good stops the compensation: the saga
// ends failed, its outcome names the step, and the steps before it are
// listed as not undone.
func TestCompensationFailingForGoodNeedsAnOperator(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	c.node(worker.Options{}, bo.definitions()...)
	d, events := runTrip(t, c.client(), "trip-undo-fails", tripInput{Steps: 4, FailAt: 4, FailUndo: 2}, saga.StartOptions{})
	if d.Status != saga.StatusFailed {
		t.Fatalf("status %s", d.Status)
	}
	if got := compensationSteps(events, stream.CompensationStepFailed); !slices.Equal(got, []string{"step-2"}) {
		t.Fatalf("failed compensations %v", got)
	}
	o := lastEvent(events).Attrs.(*stream.WorkflowExecutionFailedAttrs).Compensation
	if o.Status != stream.CompensationFailed || !slices.Equal(o.FailedSteps, []string{"step-2"}) || !slices.Equal(o.NotRun, []string{"step-1"}) {
		t.Fatalf("outcome %+v", o)
	}
	if _, undone := bo.calls(); !slices.Equal(undone, []int{3, 2}) {
		t.Fatalf("undone %v: step 1 must wait for an operator", undone)
	}
}

// A node killed in the middle of a three-step compensation: another node
// resumes it where it stopped, still LIFO, and no compensation is
// recorded twice.
func TestNodeKilledDuringCompensation(t *testing.T) {
	c := newCluster(t)
	doomedOffice := newBackOffice()
	doomedOffice.holdUndo = 2
	doomed := c.node(worker.Options{NodeName: "doomed"}, doomedOffice.definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "trip", tripInput{Steps: 4, FailAt: 4}, saga.StartOptions{ID: "trip-crash"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-doomedOffice.undoHeld:
	case <-ctx.Done():
		t.Fatal("the undo of step 2 never started")
	}
	doomed.kill(t)
	survivorOffice := newBackOffice()
	c.node(worker.Options{NodeName: "survivor"}, survivorOffice.definitions()...)
	d, events := waitTrip(t, ctx, cl, "trip-crash")
	if d.Status != saga.StatusFailed {
		t.Fatalf("status %s", d.Status)
	}
	if _, undone := doomedOffice.calls(); !slices.Equal(undone, []int{3}) {
		t.Fatalf("doomed node undid %v", undone)
	}
	if _, undone := survivorOffice.calls(); !slices.Equal(undone, []int{2, 1}) {
		t.Fatalf("survivor undid %v", undone)
	}
	want := []string{"step-3", "step-2", "step-1"}
	if got := compensationSteps(events, stream.CompensationStepScheduled); !slices.Equal(got, want) {
		t.Fatalf("scheduled compensations %v", got)
	}
	if got := compensationSteps(events, stream.CompensationStepCompleted); !slices.Equal(got, want) {
		t.Fatalf("completed compensations %v, want each once, in %v", got, want)
	}
}

// Cancel during step 2: step 2's attempt sees its context canceled at its
// next heartbeat and is recorded canceled, step 1 is undone, and the saga
// ends canceled. A second cancel, and a cancel of an ended saga, are
// clear errors.
func TestCancelDuringAStepCompensatesAndEndsCanceled(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	bo.holdUndo = 1 // the saga cannot end before the test says
	c.node(worker.Options{}, bo.definitions()...)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "trip", tripInput{Steps: 3, HoldAt: 2}, saga.StartOptions{ID: "trip-cancel"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bo.holding:
	case <-ctx.Done():
		t.Fatal("step 2 never started")
	}
	if err := cl.Cancel(ctx, "trip-cancel", "customer changed plans"); err != nil {
		t.Fatal(err)
	}
	select {
	case cause := <-bo.holdEnded:
		if !errors.Is(cause, saga.ErrCanceled) {
			t.Fatalf("step 2's context ended with %v, want the saga's cancellation", cause)
		}
	case <-ctx.Done():
		t.Fatal("step 2 never saw the cancellation")
	}
	select {
	case <-bo.undoHeld:
	case <-ctx.Done():
		t.Fatal("step 1 was never undone")
	}
	if err := cl.Cancel(ctx, "trip-cancel", "again"); !errors.Is(err, saga.ErrCancelRequested) || !errors.Is(err, saga.KindValidation) {
		t.Fatalf("second cancel: %v", err)
	}
	// The workflow compensates without waiting for step 2's outcome: the
	// saga may end before an outcome recorded later, so step 2's is
	// awaited before step 1's undo may finish.
	natstest.WaitFor(t, 10*time.Second, "step 2 recorded canceled", func() bool {
		events, err := cl.History(ctx, "trip-cancel")
		return err == nil && slices.Contains(eventTypes(events), stream.ActivityTaskCanceled)
	})
	close(bo.releaseUndo)
	d, events := waitTrip(t, ctx, cl, "trip-cancel")
	if d.Status != saga.StatusCanceled {
		t.Fatalf("status %s", d.Status)
	}
	if n := slices.Index(eventTypes(events), stream.ActivityTaskCanceled); n < 0 {
		t.Fatalf("step 2 not recorded canceled: %v", eventTypes(events))
	}
	if got := compensationSteps(events, stream.CompensationStepCompleted); !slices.Equal(got, []string{"step-1"}) {
		t.Fatalf("completed compensations %v", got)
	}
	end := lastEvent(events).Attrs.(*stream.WorkflowExecutionCanceledAttrs)
	if end.Reason != "customer changed plans" || end.Compensation.Status != stream.CompensationCompleted {
		t.Fatalf("end %+v", end)
	}
	if booked, _ := bo.calls(); slices.Contains(booked, 3) {
		t.Fatal("step 3 ran after the cancellation")
	}
	var requested int
	for _, e := range events {
		if e.Type == stream.WorkflowExecutionCancelRequested {
			requested++
		}
	}
	if requested != 1 {
		t.Fatalf("%d cancel requests recorded", requested)
	}
	if err := cl.Cancel(ctx, "trip-cancel", "again"); !errors.Is(err, saga.ErrAlreadyEnded) {
		t.Fatalf("cancel of a canceled saga: %v", err)
	}

	// A completed saga.
	if d, _ := runTrip(t, cl, "trip-done", tripInput{Steps: 1}, saga.StartOptions{}); d.Status != saga.StatusCompleted {
		t.Fatalf("status %s", d.Status)
	}
	if err := cl.Cancel(ctx, "trip-done", ""); !errors.Is(err, saga.ErrAlreadyEnded) || !errors.Is(err, saga.KindValidation) {
		t.Fatalf("cancel of a completed saga: %v", err)
	}
	if err := cl.Cancel(ctx, "no-such-trip", ""); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("cancel of an unknown saga: %v", err)
	}
}

// A saga past its run timeout ends timed_out, after undoing what it did,
// although its code still waits.
func TestRunTimeoutEndsTheSagaTimedOutWithCompensation(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	c.node(worker.Options{}, bo.definitions()...)
	d, events := runTrip(t, c.client(), "trip-late", tripInput{Steps: 3, HoldAt: 2}, saga.StartOptions{RunTimeout: 2 * time.Second})
	if d.Status != saga.StatusTimedOut {
		t.Fatalf("status %s", d.Status)
	}
	if got := compensationSteps(events, stream.CompensationStepCompleted); !slices.Equal(got, []string{"step-1"}) {
		t.Fatalf("completed compensations %v", got)
	}
	end := lastEvent(events).Attrs.(*stream.WorkflowExecutionTimedOutAttrs)
	if end.RunTimeout != 2*time.Second || end.Compensation == nil || end.Compensation.Status != stream.CompensationCompleted {
		t.Fatalf("end %+v", end)
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.WorkflowExecutionCancelRequestedAttrs); ok && a.Cause != stream.CancelByRunTimeout {
			t.Fatalf("cancel cause %q", a.Cause)
		}
	}
}

// A heartbeating activity on a node that dies is retried once its
// heartbeat timeout passes, long before its start-to-close timeout or the
// ack wait would tell, and the new attempt gets the last details.
func TestHeartbeatTimeoutRetriesOnAnotherNodeWithTheLastDetails(t *testing.T) {
	c := newCluster(t)
	type progress struct {
		Done int `json:"done"`
	}
	job := saga.NewActivity[int, int]("long-job", nil)
	wf := saga.NewWorkflow("long", 1, func(ctx saga.Context, n int) (int, error) {
		return saga.ExecuteActivity(ctx, job, n,
			saga.WithHeartbeatTimeout(2*time.Second), saga.WithStartToCloseTimeout(10*time.Minute),
			saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 100 * time.Millisecond, MaximumAttempts: 3})).Get(ctx)
	})
	started := make(chan struct{})
	doomed := c.node(worker.Options{NodeName: "doomed", AckWait: 30 * time.Second}, wf,
		job.Implement(func(ctx context.Context, n int) (int, error) {
			if err := saga.Heartbeat(ctx, progress{Done: 3}); err != nil {
				return 0, err
			}
			close(started)
			<-ctx.Done()
			return 0, ctx.Err()
		}))
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "long", 10, saga.StartOptions{ID: "long-1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the job never started")
	}
	waitForHeartbeat(t, ctx, c, "long-1.1")
	doomed.kill(t)
	killed := time.Now()
	resumedFrom := make(chan progress, 1)
	c.node(worker.Options{NodeName: "survivor"}, wf, job.Implement(func(ctx context.Context, n int) (int, error) {
		var p progress
		if _, err := saga.HeartbeatDetails(ctx, &p); err != nil {
			return 0, err
		}
		resumedFrom <- p
		return n + p.Done, nil
	}))
	var p progress
	select {
	case p = <-resumedFrom:
	case <-ctx.Done():
		t.Fatal("the job was never retried")
	}
	// The ack wait in force is 30s: a retry before it is the heartbeat
	// timeout's doing.
	if waited := time.Since(killed); waited >= 30*time.Second {
		t.Fatalf("retried %s after the kill: not by the heartbeat timeout", waited)
	}
	if p.Done != 3 {
		t.Fatalf("the new attempt got details %+v", p)
	}
	d, err := cl.Wait(ctx, "long-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga %v %+v", err, d)
	}
	events, err := cl.History(ctx, "long-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskStartedAttrs); ok && (a.Attempt != 2 || a.Node != "survivor") {
			t.Fatalf("result recorded for attempt %d on %s", a.Attempt, a.Node)
		}
	}
}

// waitForHeartbeat waits until the activity's attempt record holds
// heartbeat details.
func waitForHeartbeat(t *testing.T, ctx context.Context, c *cluster, key string) {
	t.Helper()
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, "SAGA_ACTIVITIES")
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "a recorded heartbeat", func() bool {
		e, err := kv.Get(ctx, key)
		return err == nil && bytes.Contains(e.Value(), []byte("details"))
	})
}

// An activity whose task no node took yet when the saga is canceled never
// starts: its task is removed and it is recorded canceled.
func TestCancelKeepsAnUndeliveredActivityFromStarting(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	defs := bo.definitions()
	c.node(worker.Options{NodeName: "workflows"}, defs[0], defs[2]) // no node runs trip-book yet
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "trip", tripInput{Steps: 1}, saga.StartOptions{ID: "trip-undelivered"}); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "step 1 scheduled", func() bool {
		d, err := cl.Describe(ctx, "trip-undelivered")
		return err == nil && len(d.PendingActivities) == 1
	})
	if err := cl.Cancel(ctx, "trip-undelivered", ""); err != nil {
		t.Fatal(err)
	}
	d, events := waitTrip(t, ctx, cl, "trip-undelivered")
	if d.Status != saga.StatusCanceled {
		t.Fatalf("status %s", d.Status)
	}
	var canceled *stream.ActivityTaskCanceledAttrs
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskCanceledAttrs); ok {
			canceled = a
		}
	}
	if canceled == nil || canceled.Attempts != 0 {
		t.Fatalf("step 1 not recorded canceled before it started: %v", eventTypes(events))
	}
	// Its task is gone: a node that runs trip-book finds nothing to run.
	if _, _, queued, err := c.store().QueuedTask(ctx, "trip-book", "trip-undelivered", 1); err != nil || queued {
		t.Fatalf("task still queued: %v %v", queued, err)
	}
	if booked, _ := bo.calls(); len(booked) != 0 {
		t.Fatalf("a canceled activity ran: %v", booked)
	}
}

// An activity waiting out a retry backoff when the saga is canceled does
// not run again: the saga ends at once, and the retry finds it ended.
func TestCancelDuringARetryBackoff(t *testing.T) {
	c := newCluster(t)
	var mu sync.Mutex
	calls := 0
	failed := make(chan struct{})
	flaky := saga.NewActivity("flaky-step", func(ctx context.Context, _ int) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			close(failed)
		}
		return 0, errors.New("try again later")
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 2 * time.Second, MaximumAttempts: 3}))
	wf := saga.NewWorkflow("flaky-wf", 1, func(ctx saga.Context, _ int) (int, error) {
		return saga.ExecuteActivity(ctx, flaky, 0).Get(ctx)
	})
	c.node(worker.Options{}, wf, flaky)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "flaky-wf", 0, saga.StartOptions{ID: "flaky-cancel"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-ctx.Done():
		t.Fatal("the first attempt never ran")
	}
	if err := cl.Cancel(ctx, "flaky-cancel", ""); err != nil {
		t.Fatal(err)
	}
	d, events := waitTrip(t, ctx, cl, "flaky-cancel")
	if d.Status != saga.StatusCanceled {
		t.Fatalf("status %s", d.Status)
	}
	if slices.Contains(eventTypes(events), stream.ActivityTaskStarted) {
		t.Fatalf("an attempt was recorded: %v", eventTypes(events))
	}
	// The saga ended without waiting for the activity; its retry comes due
	// later, finds the saga ended, and starts nothing.
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	timers, err := js.KeyValue(ctx, stream.Config{}.Defaults().TimersBucket())
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the retry timer to fire and be handled", func() bool {
		if keys, err := timers.Keys(ctx); !errors.Is(err, jetstream.ErrNoKeysFound) || len(keys) > 0 {
			return false
		}
		cons, err := js.Consumer(ctx, "KV_"+stream.Config{}.Defaults().TimersBucket(), "saga-timers")
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("the activity ran %d times", calls)
	}
}

// A saga canceled before its first decision: the code schedules its first
// step and sees the cancellation in the same decision, which ends the
// saga. That step must never run: nothing could record its result, and
// nothing would undo it.
func TestCancelBeforeTheFirstDecisionRunsNothing(t *testing.T) {
	c := newCluster(t)
	bo := newBackOffice()
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	st := c.store()
	if err := st.EnsureStreams(ctx, testLogger()); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Start(ctx, "trip", tripInput{Steps: 2}, saga.StartOptions{ID: "trip-early-cancel"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Cancel(ctx, "trip-early-cancel", "changed plans"); err != nil {
		t.Fatal(err)
	}
	c.node(worker.Options{}, bo.definitions()...)
	d, events := waitTrip(t, ctx, cl, "trip-early-cancel")
	if d.Status != saga.StatusCanceled {
		t.Fatalf("status %s", d.Status)
	}
	last := events[len(events)-1]
	commits, err := st.ReadLatest(ctx, "trip-early-cancel")
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the last commit dispatched", func() bool {
		done, err := st.Dispatched(ctx, "trip-early-cancel", commits[len(commits)-1].Seq)
		return err == nil && done
	})
	if _, _, queued, err := st.QueuedTask(ctx, "trip-book", "trip-early-cancel", 1); err != nil || queued {
		t.Fatalf("a task was queued for the step of an ended saga: %v %v (history %v)", queued, err, eventTypes(events))
	}
	if booked, _ := bo.calls(); len(booked) != 0 {
		t.Fatalf("a step of a saga canceled before it began ran: %v (last event %s)", booked, last.Type)
	}
}

// The same, for a workflow that registers a step's undo before running
// the step: the cancellation, seen in the first decision, reaches the step
// as it is scheduled. The step is recorded (replay meets it) but never
// runs, and its undo runs alone. Before, the step ran after the saga had
// ended, after its own undo, and its reservation leaked.
func TestCancelBeforeTheFirstDecisionReachesTheStepItSchedules(t *testing.T) {
	c := newCluster(t)
	svc := approval.NewService()
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	st := c.store()
	if err := st.EnsureStreams(ctx, testLogger()); err != nil {
		t.Fatal(err)
	}
	in := approval.Input{RequestID: "early", Amount: 3, Timeout: "1h"}
	if _, err := saga.StartWorkflow(ctx, cl, approval.Workflow, in, saga.StartOptions{ID: "approval-early-cancel"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Cancel(ctx, "approval-early-cancel", "withdrawn"); err != nil {
		t.Fatal(err)
	}
	c.node(worker.Options{}, svc.Definitions()...)
	d, err := cl.Wait(ctx, "approval-early-cancel")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status != saga.StatusCanceled {
		t.Fatalf("status %s", d.Status)
	}
	commits, err := st.ReadLatest(ctx, "approval-early-cancel")
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the last commit dispatched", func() bool {
		done, err := st.Dispatched(ctx, "approval-early-cancel", commits[len(commits)-1].Seq)
		return err == nil && done
	})
	var scheduled *stream.ActivityTaskScheduledAttrs
	var scheduledID uint64
	for _, c := range commits {
		for _, e := range c.Commit.Events {
			if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.ActivityType == approval.StepReserveBudget {
				scheduled, scheduledID = a, e.ID
			}
		}
	}
	if scheduled == nil || !scheduled.Canceled {
		t.Fatalf("the reservation is not recorded as canceled as it was scheduled: %+v", scheduled)
	}
	if n := svc.Calls(approval.StepReserveBudget); n != 0 {
		t.Fatalf("the reservation of a saga canceled before it began ran %d times", n)
	}
	if _, _, queued, err := st.QueuedTask(ctx, approval.StepReserveBudget, "approval-early-cancel", scheduledID); err != nil || queued {
		t.Fatalf("a task is queued for it: %v %v", queued, err)
	}
	r, err := invariant.Check(ctx, invariant.Options{Histories: st, IDs: []string{"approval-early-cancel"}, RequireEnded: true})
	if err != nil || len(r.Violations) > 0 {
		t.Fatalf("%v\n%s", err, r)
	}
}
