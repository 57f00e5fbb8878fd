package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// echo returns its input: the step every run of the looping workflows
// below takes.
var echo = saga.NewActivity("echo", func(_ context.Context, n int) (int, error) { return n, nil })

// counter counts its input up to 5, one run per step: each run echoes
// its input, then continues as new with the next number.
var counter = saga.NewWorkflow("counter", 1, func(ctx saga.Context, n int) (int, error) {
	got, err := saga.ExecuteActivity(ctx, echo, n).Get(ctx)
	if err != nil {
		return 0, err
	}
	if got < 5 {
		return 0, saga.ContinueAsNew(ctx, got+1)
	}
	return got, nil
})

// checkRunsLinked checks that the whole history of a saga is runs runs,
// each linked to the one before as continue-as-new records it.
func checkRunsLinked(t *testing.T, events []stream.Event, runs int) {
	t.Helper()
	var starts []stream.Event
	for _, e := range events {
		if e.Type == stream.WorkflowExecutionStarted {
			starts = append(starts, e)
		}
	}
	if len(starts) != runs {
		t.Fatalf("%d runs, want %d: %v", len(starts), runs, eventTypes(events))
	}
	for i, s := range starts[1:] {
		c := s.Attrs.(*stream.WorkflowExecutionStartedAttrs).Continued
		end := events[s.ID-1]
		if c == nil || c.Run != uint32(i+2) || c.PreviousEventID != end.ID || c.PreviousStartEventID != starts[i].ID ||
			end.Type != stream.WorkflowExecutionContinuedAsNew || end.Attrs.(*stream.WorkflowExecutionContinuedAsNewAttrs).NextRun != c.Run {
			t.Fatalf("run %d starts at event %d with %+v after %d %s", i+2, s.ID, c, end.ID, end.Type)
		}
	}
}

func TestContinueAsNewCountsToTheEndInRuns(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, counter, echo)
	cl := c.client()
	ctx := ctxTimeout(t, time.Minute)
	run, err := saga.StartWorkflow(ctx, cl, counter, 1, saga.StartOptions{ID: "count-1"})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run.Get(ctx); err != nil || out != 5 {
		t.Fatalf("output %d, %v", out, err)
	}
	all, err := cl.History(ctx, "count-1")
	if err != nil {
		t.Fatal(err)
	}
	checkRunsLinked(t, all, 5)
	latest, err := cl.RunHistory(ctx, "count-1")
	if err != nil {
		t.Fatal(err)
	}
	first := latest[0]
	if first.Type != stream.WorkflowExecutionStarted || first.Attrs.(*stream.WorkflowExecutionStartedAttrs).Continued.Run != 5 ||
		latest[len(latest)-1].Type != stream.WorkflowExecutionCompleted || latest[len(latest)-1].ID != all[len(all)-1].ID {
		t.Fatalf("latest run %v", eventTypes(latest))
	}
	// Describe shows the last run, linked to the one before.
	d, err := cl.Describe(ctx, "count-1")
	if err != nil {
		t.Fatal(err)
	}
	var in int
	if err := stream.Unmarshal(d.Input, &in); err != nil || in != 5 {
		t.Fatalf("run input %d, %v", in, err)
	}
	prev := all[first.ID-1]
	if d.Run != 5 || d.Events != uint64(len(all)) || d.RunEvents != uint64(len(latest)) || d.ContinuedFrom == nil ||
		d.ContinuedFrom.Run != 4 || d.ContinuedFrom.EndEventID != prev.ID || d.Status != saga.StatusCompleted {
		t.Fatalf("describe %+v (continued from %+v)", d, d.ContinuedFrom)
	}
	// The checker takes runs as the engine writes them.
	commits, err := c.store().ReadLatest(ctx, "count-1")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := invariant.CheckHistories([]invariant.History{{SagaID: "count-1", Commits: commits}}, invariant.Options{RequireEnded: true})
	if err != nil || rep.Err() != nil || rep.Runs != 5 || rep.Outcomes != 5 {
		t.Fatalf("invariants: %v %v (%d runs, %d outcomes)", err, rep.Err(), rep.Runs, rep.Outcomes)
	}
}

// paced waits for a "next" signal in each run, after three steps, and
// continues as new with the count of runs; it ends at run 6.
var paced = saga.NewWorkflow("paced", 1, func(ctx saga.Context, runs int) (int, error) {
	for i := range 3 {
		if _, err := saga.ExecuteActivity(ctx, echo, i).Get(ctx); err != nil {
			return 0, err
		}
	}
	if _, err := saga.GetSignalChannel[struct{}](ctx, "next").Receive(ctx); err != nil {
		return 0, err
	}
	if runs < 5 {
		return 0, saga.ContinueAsNew(ctx, runs+1)
	}
	return runs + 1, nil
})

// A node meeting a saga that continued as new reads and replays its latest
// run only, not the runs before.
func TestFreshNodeReplaysOnlyTheLatestRun(t *testing.T) {
	c := newCluster(t)
	a := c.node(worker.Options{NodeName: "a"}, paced, echo)
	cl := c.client()
	ctx := ctxTimeout(t, time.Minute)
	if _, err := saga.StartWorkflow(ctx, cl, paced, 1, saga.StartOptions{ID: "paced-1"}); err != nil {
		t.Fatal(err)
	}
	// The run waits for its signal once its three steps are recorded:
	// start, then three of scheduled, started and completed.
	waiting := func(run uint32) func() bool {
		return func() bool {
			d, err := cl.Describe(ctx, "paced-1")
			return err == nil && d.Run == run && d.RunEvents == 10
		}
	}
	for run := uint32(1); run < 4; run++ {
		natstest.WaitFor(t, 30*time.Second, fmt.Sprintf("run %d waiting", run), waiting(run))
		if err := cl.Signal(ctx, "paced-1", "next", struct{}{}); err != nil {
			t.Fatal(err)
		}
	}
	natstest.WaitFor(t, 30*time.Second, "run 4 waiting", waiting(4))
	stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Describe(ctx, "paced-1")
	if err != nil {
		t.Fatal(err)
	}
	earlier := d.Events - d.RunEvents // the events of runs 1 to 3

	b := c.node(worker.Options{NodeName: "b"}, paced, echo)
	if err := cl.Signal(ctx, "paced-1", "next", struct{}{}); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, "run 5 waiting", waiting(5))
	// b replayed run 4 (its 10 events and the signal) to decide on the
	// signal, and run 5 from its start: never an event of runs 1 to 3.
	s := b.Stats()
	if s.Replays == 0 || s.ReplayedEvents > int64(2*d.RunEvents+2) || s.ReplayedEvents >= int64(earlier) {
		t.Fatalf("node b replayed %d events in %d replays; run 4 has %d events, runs 1-3 %d", s.ReplayedEvents, s.Replays, d.RunEvents, earlier)
	}
	if err := cl.Signal(ctx, "paced-1", "next", struct{}{}); err != nil {
		t.Fatal(err)
	}
	if d, err := cl.Wait(ctx, "paced-1"); err != nil || d.Status != saga.StatusCompleted || d.Run != 5 {
		t.Fatalf("end: %+v %v", d, err)
	}
}

// collector takes one "item" signal per run, a second after the run
// starts, and continues as new with what it collected until it holds
// four: the signals sent meanwhile wait, and are passed on to the next
// run untaken.
var collector = saga.NewWorkflow("collector", 1, func(ctx saga.Context, got []string) ([]string, error) {
	if err := saga.Sleep(ctx, time.Second); err != nil {
		return nil, err
	}
	item, err := saga.GetSignalChannel[string](ctx, "item").Receive(ctx)
	if err != nil {
		return nil, err
	}
	got = append(got, item)
	if len(got) < 4 {
		return nil, saga.ContinueAsNew(ctx, got)
	}
	return got, nil
})

func TestSignalsAcrossContinueAsNewAreRecordedOnce(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, collector)
	cl := c.client()
	ctx := ctxTimeout(t, time.Minute)
	if _, err := saga.StartWorkflow(ctx, cl, collector, nil, saga.StartOptions{ID: "collect-1"}); err != nil {
		t.Fatal(err)
	}
	var acked []invariant.SignalAck
	send := func(item string) {
		t.Helper()
		if _, err := cl.SignalPayload(ctx, "collect-1", "item", mustPayload(t, item), "m-"+item); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, invariant.SignalAck{SagaID: "collect-1", Name: "item", MsgID: "m-" + item})
	}
	// Two while run 1 sleeps: it takes one, and passes the other on.
	send("a")
	send("b")
	natstest.WaitFor(t, 30*time.Second, "run 2", func() bool {
		d, err := cl.Describe(ctx, "collect-1")
		return err == nil && d.Run >= 2
	})
	// Two more as runs switch.
	send("c")
	send("d")
	d, err := cl.Wait(ctx, "collect-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("end %+v %v", d, err)
	}
	var got []string
	if err := stream.Unmarshal(d.Output, &got); err != nil || !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("collected %v, %v", got, err)
	}
	events, err := cl.History(ctx, "collect-1")
	if err != nil {
		t.Fatal(err)
	}
	checkRunsLinked(t, events, 4)
	var passedOn int
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.WorkflowExecutionStartedAttrs); ok && a.Continued != nil {
			passedOn += len(a.Continued.Signals)
		}
	}
	if len(findSignals(events)) != 4 || passedOn == 0 {
		t.Fatalf("%d signals recorded, %d passed on: %v", len(findSignals(events)), passedOn, eventTypes(events))
	}
	commits, err := c.store().ReadLatest(ctx, "collect-1")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := invariant.CheckHistories([]invariant.History{{SagaID: "collect-1", Commits: commits}},
		invariant.Options{RequireEnded: true, Acked: invariant.Acked{Starts: []string{"collect-1"}, Signals: acked}})
	if err != nil || rep.Err() != nil || rep.Signals != 4 {
		t.Fatalf("invariants: %v %v", err, rep.Err())
	}
}

func mustPayload(t *testing.T, v any) stream.Payload {
	t.Helper()
	p, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// forever echoes for ever, never continuing as new: the history limit
// stops it.
var forever = saga.NewWorkflow("forever", 1, func(ctx saga.Context, _ struct{}) (int, error) {
	for i := 0; ; i++ {
		if _, err := saga.ExecuteActivity(ctx, echo, i).Get(ctx); err != nil {
			return 0, err
		}
	}
})

// syncBuffer is a log sink tests read while nodes write to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// counterValue reads a counter of a registry, 0 when it has no sample.
func counterValue(t *testing.T, reg *prometheus.Registry, name, workflowType string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "workflow_type" && l.GetValue() == workflowType {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// The history limits are the fleet's, recorded by the first node: a
// later node started with a weaker limit follows them. A run that reaches
// the limit is blocked, not failed; raised, the limit lets a woken saga
// go on.
func TestHistoryLimitBlocksARunAndAWakeResumesIt(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, time.Minute)
	// The first node records the limits as it creates the streams.
	first := c.node(worker.Options{NodeName: "first", Stream: stream.Config{HistoryLimits: stream.HistoryLimits{WarnEvents: 20, LimitEvents: 40}}})
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	node := c.node(worker.Options{NodeName: "weaker", Metrics: reg, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Stream: stream.Config{HistoryLimits: stream.HistoryLimits{WarnEvents: 100_000, LimitEvents: 1_000_000}}}, forever, echo)
	if logs.count("this node's history limits differ from the fleet's") != 1 {
		t.Fatal("the node did not say it follows the fleet's limits")
	}
	cl := c.client()
	if _, err := saga.StartWorkflow(ctx, cl, forever, struct{}{}, saga.StartOptions{ID: "forever-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Wait(ctx, "forever-1"); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Describe(ctx, "forever-1")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedHistoryTooLong {
		t.Fatalf("at the limit: %+v %v", d, err)
	}
	if !strings.Contains(d.Blocked.Message, "the limit is 40") || !strings.Contains(d.Warning, fmt.Sprintf("history has %d events", d.RunEvents)) || len(d.PendingActivities) != 0 {
		t.Fatalf("blocked: %q, warning %q, %d pending", d.Blocked.Message, d.Warning, len(d.PendingActivities))
	}
	checkStoppedAtLimit(ctx, t, cl, "forever-1", 40)
	if w := counterValue(t, reg, "jetsaga_history_length_warnings_total", "forever"); w != 1 || logs.count("saga history is long") != 1 {
		t.Fatalf("warned %v times, logged %d times", w, logs.count("saga history is long"))
	}
	if b := counterValue(t, reg, "jetsaga_history_limit_blocks_total", "forever"); b != 1 {
		t.Fatalf("counted %v blocks", b)
	}

	// Raised by an operator, then woken: the saga goes on, to the new limit.
	st := c.store()
	limits, _, err := stream.FleetHistoryLimits(ctx, st.JetStream(), st.Config())
	if err != nil {
		t.Fatal(err)
	}
	limits.LimitEvents = 80
	if err := stream.SetHistoryLimits(ctx, st.JetStream(), st.Config(), limits); err != nil {
		t.Fatal(err)
	}
	if err := node.Wake(ctx, "forever-1"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 30*time.Second, "the saga blocked again at the raised limit", func() bool {
		d, err = cl.Describe(ctx, "forever-1")
		return err == nil && d.Status == saga.StatusBlocked && d.RunEvents > 60
	})
	if !strings.Contains(d.Blocked.Message, "the limit is 80") {
		t.Fatalf("blocked again at %d events: %q", d.RunEvents, d.Blocked.Message)
	}
	checkStoppedAtLimit(ctx, t, cl, "forever-1", 80)
	events, err := cl.History(ctx, "forever-1")
	if err != nil {
		t.Fatal(err)
	}
	var types []stream.EventType
	for _, e := range events {
		if e.Type == stream.WorkflowExecutionBlocked || e.Type == stream.WorkflowExecutionUnblocked {
			types = append(types, e.Type)
		}
	}
	if !slices.Equal(types, []stream.EventType{stream.WorkflowExecutionBlocked, stream.WorkflowExecutionUnblocked, stream.WorkflowExecutionBlocked}) {
		t.Fatalf("blocks and unblocks: %v", types)
	}
	commits, err := st.ReadLatest(ctx, "forever-1")
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := invariant.CheckHistories([]invariant.History{{SagaID: "forever-1", Commits: commits}}, invariant.Options{}); err != nil || rep.Err() != nil {
		t.Fatalf("invariants: %v %v", err, rep.Err())
	}
}

// checkStoppedAtLimit checks where the history limit stopped forever's
// run: the code's decisions end within limit-1 events (the last one is
// the blocked event's), the step that would have passed the limit
// records its activity's start and result (inputs are always recorded),
// then the block, and nothing is left open.
func checkStoppedAtLimit(ctx context.Context, t *testing.T, cl *saga.Client, id string, limit uint64) {
	t.Helper()
	events, err := cl.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var lastDecided, blocked uint64
	for _, e := range events {
		switch e.Type {
		case stream.ActivityTaskScheduled:
			lastDecided = e.ID
		case stream.WorkflowExecutionBlocked:
			blocked = e.ID
		}
	}
	if lastDecided+1 > limit-1 || lastDecided+1+3 <= limit-1 || blocked != lastDecided+3 || events[len(events)-1].ID != blocked {
		t.Fatalf("limit %d: last decision at event %d, blocked at event %d of %d", limit, lastDecided, blocked, len(events))
	}
}

// heavy echoes 64 KiB for ever: the byte limit stops it.
var heavy = saga.NewWorkflow("heavy", 1, func(ctx saga.Context, _ struct{}) (int, error) {
	blob := strings.Repeat("x", 64<<10)
	for i := 0; ; i++ {
		if _, err := saga.ExecuteActivity(ctx, echoText, blob).Get(ctx); err != nil {
			return 0, err
		}
	}
})

var echoText = saga.NewActivity("echo-text", func(_ context.Context, s string) (string, error) { return s, nil })

func TestHistoryByteLimitBlocksARun(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, time.Minute)
	limits := stream.HistoryLimits{WarnBytes: 512 << 10, LimitBytes: 1 << 20}
	c.node(worker.Options{Stream: stream.Config{HistoryLimits: limits}}, heavy, echoText)
	cl := c.client()
	if _, err := saga.StartWorkflow(ctx, cl, heavy, struct{}{}, saga.StartOptions{ID: "heavy-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Wait(ctx, "heavy-1"); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Describe(ctx, "heavy-1")
	if err != nil || d.Status != saga.StatusBlocked || d.Blocked.Reason != stream.BlockedHistoryTooLong ||
		!strings.Contains(d.Blocked.Message, "bytes, the limit is 1048576") || !strings.Contains(d.Warning, "consider continue-as-new") {
		t.Fatalf("%+v %v", d, err)
	}
	// The decisions stayed within the limit; the block's commit records
	// the last result (an input, always recorded) past it.
	commits, err := c.store().ReadLatest(ctx, "heavy-1")
	if err != nil {
		t.Fatal(err)
	}
	var decided int64
	for _, sc := range commits[:len(commits)-1] {
		decided += int64(len(sc.Data))
	}
	if decided > 1<<20 || d.RunBytes != decided+int64(len(commits[len(commits)-1].Data)) {
		t.Fatalf("decisions took the run to %d bytes; describe says %d", decided, d.RunBytes)
	}
}
