package integration

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

// rollingSteps are the activities of the rolling-deploy workflows: each
// appends its name to the value and counts its runs.
type rollingSteps struct {
	x, a, b *saga.Activity[string, string]
	runs    map[string]*atomic.Int64
}

func newRollingSteps() *rollingSteps {
	s := &rollingSteps{runs: map[string]*atomic.Int64{}}
	step := func(name string) *saga.Activity[string, string] {
		n := new(atomic.Int64)
		s.runs[name] = n
		return saga.NewActivity(name, func(_ context.Context, in string) (string, error) {
			n.Add(1)
			return in + "-" + name, nil
		})
	}
	s.x, s.a, s.b = step("x"), step("a"), step("b")
	return s
}

// workflow returns the workflow name/version running x (when withX says so
// for this saga), then a, then b.
func (s *rollingSteps) workflow(name string, version int, withX func(saga.Context) bool) *saga.Workflow[string, string] {
	return saga.NewWorkflow(name, version, func(ctx saga.Context, in string) (string, error) {
		out := in
		var err error
		if withX(ctx) {
			if out, err = saga.ExecuteActivity(ctx, s.x, out).Get(ctx); err != nil {
				return "", err
			}
		}
		if out, err = saga.ExecuteActivity(ctx, s.a, out).Get(ctx); err != nil {
			return "", err
		}
		return saga.ExecuteActivity(ctx, s.b, out).Get(ctx)
	})
}

// appendLog records the commits each node appends.
type appendLog struct {
	mu      sync.Mutex
	commits map[string][]*stream.Commit
}

func (l *appendLog) hooks(node string) *worker.Hooks {
	return &worker.Hooks{AfterAppend: func(_ context.Context, _ string, c *stream.Commit) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.commits == nil {
			l.commits = map[string][]*stream.Commit{}
		}
		l.commits[node] = append(l.commits[node], c)
	}}
}

// eventsBy returns the types of the events the node appended, and whether
// any of its commits claimed a decision.
func (l *appendLog) eventsBy(node string) (types []stream.EventType, decided bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.commits[node] {
		decided = decided || c.Decided
		types = append(types, eventTypes(c.Events)...)
	}
	return types, decided
}

// runRollingDeploy starts a saga on a node "new" running newDef (and no
// activities), waits until the saga took the new code's path (x
// scheduled), then starts a node "old" running oldDef and every activity:
// old records every result and, after each, meets a history its code
// cannot replay. The saga must complete with the new code's result,
// decided by the new node, never blocked.
func runRollingDeploy(t *testing.T, steps *rollingSteps, oldDef, newDef *saga.Workflow[string, string], tookNewPath func([]stream.Event) bool) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 30*time.Second)
	var log appendLog

	c.node(worker.Options{NodeName: "new", Hooks: log.hooks("new")}, newDef)
	run, err := saga.StartWorkflow(ctx, cl, newDef, "s", saga.StartOptions{ID: "roll-1"})
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the new code to schedule x", func() bool {
		events, err := cl.History(ctx, "roll-1")
		return err == nil && tookNewPath(events)
	})

	c.node(worker.Options{NodeName: "old", Hooks: log.hooks("old")}, oldDef, steps.x, steps.a, steps.b)
	out, err := run.Get(ctx)
	if err != nil || out != "s-x-a-b" {
		d, _ := cl.Describe(ctx, "roll-1")
		t.Fatalf("result %q, %v; saga %+v", out, err, d)
	}

	events, err := cl.History(ctx, "roll-1")
	if err != nil {
		t.Fatal(err)
	}
	started := 0
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.WorkflowExecutionBlockedAttrs:
			t.Fatalf("event %d: saga blocked by node %s: %s (history %v)", e.ID, a.Node, a.Message, eventTypes(events))
		case *stream.ActivityTaskStartedAttrs:
			started++
			if a.Node != "old" {
				t.Errorf("event %d: activity run on node %q, only old runs activities", e.ID, a.Node)
			}
		}
	}
	if started != 3 {
		t.Errorf("%d activity attempts recorded, want 3: %v", started, eventTypes(events))
	}
	for name, n := range steps.runs {
		if got := n.Load(); got != 1 {
			t.Errorf("activity %s ran %d times, want once", name, got)
		}
	}

	// Old recorded the results and decided nothing; new made every
	// decision, those after its results included. A hook runs after its
	// append has landed: wait for the last ones.
	natstest.WaitFor(t, 5*time.Second, "the append hooks", func() bool {
		oldEvents, _ := log.eventsBy("old")
		newEvents, _ := log.eventsBy("new")
		return countTypes(oldEvents, stream.ActivityTaskCompleted) >= 3 && countTypes(newEvents, stream.WorkflowExecutionCompleted) >= 1
	})
	oldEvents, oldDecided := log.eventsBy("old")
	if oldDecided {
		t.Errorf("old node appended a decided commit: %v", oldEvents)
	}
	for _, typ := range oldEvents {
		if stream.RoleOf(typ) == stream.RoleCommand || typ == stream.WorkflowExecutionBlocked {
			t.Errorf("old node appended %s: %v", typ, oldEvents)
		}
	}
	if got := countTypes(oldEvents, stream.ActivityTaskCompleted); got != 3 {
		t.Errorf("old node recorded %d results, want 3: %v", got, oldEvents)
	}
	newEvents, _ := log.eventsBy("new")
	if got := countTypes(newEvents, stream.ActivityTaskScheduled); got != 3 || countTypes(newEvents, stream.WorkflowExecutionCompleted) != 1 {
		t.Errorf("new node appended %v, want x, a, b scheduled and the completion", newEvents)
	}
}

func countTypes(types []stream.EventType, want stream.EventType) int {
	n := 0
	for _, typ := range types {
		if typ == want {
			n++
		}
	}
	return n
}

// Before the rewrite, the old node replayed its older code after recording
// the first result (a mismatch on the version marker, or on the extra step
// of a VERSION it did not compare) and appended WorkflowExecutionBlocked,
// so the saga never completed.
func TestRollingDeployDoesNotBlockSagas(t *testing.T) {
	t.Run("GetVersion", func(t *testing.T) {
		steps := newRollingSteps()
		oldDef := steps.workflow("rolling", 1, func(saga.Context) bool { return false })
		newDef := steps.workflow("rolling", 1, func(ctx saga.Context) bool {
			return ctx.GetVersion("add-step", saga.DefaultVersion, 1) == 1
		})
		runRollingDeploy(t, steps, oldDef, newDef, func(events []stream.Event) bool {
			var marker bool
			for _, e := range events {
				switch a := e.Attrs.(type) {
				case *stream.MarkerRecordedAttrs:
					marker = marker || a.Name == stream.MarkerVersion && a.ChangeID == "add-step"
				case *stream.ActivityTaskScheduledAttrs:
					if a.ActivityType == "x" {
						return marker
					}
				}
			}
			return false
		})
	})
	t.Run("Version", func(t *testing.T) {
		steps := newRollingSteps()
		oldDef := steps.workflow("versioned", 1, func(saga.Context) bool { return false })
		newDef := steps.workflow("versioned", 2, func(saga.Context) bool { return true })
		runRollingDeploy(t, steps, oldDef, newDef, func(events []stream.Event) bool {
			if len(events) == 0 {
				return false
			}
			if a, ok := events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs); !ok || a.Version != 2 {
				t.Fatalf("start %s %+v, want version 2", events[0].Type, events[0].Attrs)
			}
			for _, e := range events {
				if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok && a.ActivityType == "x" {
					return true
				}
			}
			return false
		})
	})
}

// dispatchInfo reads the shared dispatcher's consumer on the history
// stream.
func dispatchInfo(ctx context.Context, t *testing.T, st *stream.Store) *jetstream.ConsumerInfo {
	t.Helper()
	cons, err := st.JetStream().Consumer(ctx, st.Config().HistoryStream(0), "saga-dispatch")
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// deadLettered reports whether the dispatcher set aside a message of the
// saga's history.
func deadLettered(ctx context.Context, t *testing.T, st *stream.Store, sagaID string) bool {
	t.Helper()
	letters, err := st.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range letters {
		if d.Subject == st.Config().HistorySubject(sagaID) {
			return true
		}
	}
	return false
}

// Before the rewrite, the dispatcher terminated every commit it could not
// decode (too large for the node, an unknown event type) at its first
// delivery: neither was delivered again, and the saga never ran.
func TestCommitsANodeCannotReadAreLeftToOthers(t *testing.T) {
	c := newCluster(t)
	cl := c.client()
	ctx := ctxTimeout(t, 40*time.Second)
	length := saga.NewWorkflow("length", 1, func(_ saga.Context, s string) (int, error) { return len(s), nil })

	// The streams exist with the default limits; the small node reads at
	// most 16 KiB.
	st := c.store()
	if err := st.EnsureStreams(ctx, testLogger()); err != nil {
		t.Fatal(err)
	}
	small := c.node(worker.Options{NodeName: "small", Stream: stream.Config{MaxMsgSize: 16 << 10, MaxPayloadSize: 8 << 10}}, length)

	big := strings.Repeat("b", 40<<10)
	input, err := stream.Marshal(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, &stream.Commit{SagaID: "big-1", WorkflowType: "length", Events: []stream.Event{{
		Type: stream.WorkflowExecutionStarted, Time: time.Now(),
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "length", Version: 1, Input: input},
	}}}, 0); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the large start to be delivered to the small node again", func() bool {
		return dispatchInfo(ctx, t, st).NumRedelivered >= 1
	})
	if deadLettered(ctx, t, st, "big-1") {
		t.Fatal("the large start was dead-lettered by a node that merely could not read it")
	}
	if d, err := cl.Describe(ctx, "big-1"); err != nil || d.Status != saga.StatusRunning {
		t.Fatalf("before a node that can read it: %v %+v", err, d)
	}

	// A node with the default limits comes up and the small one goes, as
	// in a rolling deploy. (With both up, which one the next redelivery
	// reaches depends on the timing of their pull requests, while the
	// small node's delays grow: the test would take an unbounded time.)
	c.node(worker.Options{NodeName: "large"}, length)
	if err := small.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Wait(ctx, "big-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("%v %+v", err, d)
	}
	var n int
	if err := stream.Unmarshal(d.Output, &n); err != nil || n != len(big) {
		t.Fatalf("output %d %v", n, err)
	}
	natstest.WaitFor(t, 10*time.Second, "the dispatcher to settle", func() bool {
		info := dispatchInfo(ctx, t, st)
		return info.NumAckPending == 0 && info.NumRedelivered == 0
	})

	// A well-formed commit with an event type of a newer engine waits for
	// a node that knows it; bytes that are not msgpack are set aside.
	forge := func(sagaID string, typ stream.EventType) []byte {
		data, err := stream.Marshal(map[string]any{
			"v": 1, "saga_id": sagaID, "workflow_type": "length",
			"events": []any{map[string]any{
				"id": 0, "type": typ, "category": "Workflow", "time": time.Now().UTC(), "attrs": map[string]any{},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	// The forged envelope is well formed: with a known type it decodes.
	if _, err := stream.DecodeCommit(forge("future-1", stream.WorkflowExecutionStarted)); err != nil {
		t.Fatalf("forged envelope: %v", err)
	}
	future := forge("future-1", "FutureEvent")
	delivered := dispatchInfo(ctx, t, st).Delivered.Consumer
	js := st.JetStream()
	if _, err := js.Publish(ctx, st.Config().HistorySubject("future-1"), future); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, st.Config().HistorySubject("garbage-1"), []byte(`{"not": "msgpack"}`)); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the garbage to be set aside and the future commit delivered again", func() bool {
		info := dispatchInfo(ctx, t, st)
		return deadLettered(ctx, t, st, "garbage-1") && info.NumRedelivered >= 1 && info.Delivered.Consumer >= delivered+3
	})
	if deadLettered(ctx, t, st, "future-1") {
		t.Fatal("the commit of a newer engine was dead-lettered")
	}
	if info := dispatchInfo(ctx, t, st); info.NumAckPending != 1 {
		t.Fatalf("%d commits pending on the dispatcher, want the future one", info.NumAckPending)
	}
}
