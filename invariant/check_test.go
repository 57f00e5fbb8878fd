package invariant_test

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// flaky fails the first attempt for each input, then succeeds: its saga
// records one attempt beyond the first.
type flaky struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (f *flaky) definitions() []saga.Definition {
	act := saga.NewActivity("flaky-step", func(_ context.Context, key string) (string, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.seen[key] {
			f.seen[key] = true
			return "", saga.NewError(saga.KindActivityExecution, "first attempt fails")
		}
		return "done " + key, nil
	}, saga.WithRetryPolicy(saga.RetryPolicy{InitialInterval: 50 * time.Millisecond, MaximumAttempts: 3}))
	wf := saga.NewWorkflow("flaky", 1, func(ctx saga.Context, key string) (string, error) {
		return saga.ExecuteActivity(ctx, act, key).Get(ctx)
	})
	return []saga.Definition{wf, act}
}

// engine is an embedded nats-server with one node running the examples,
// a client and a history store.
type engine struct {
	srv   *natstest.Server
	node  *worker.Node
	cl    *saga.Client
	store *stream.Store
}

func startEngine(t *testing.T, ctx context.Context, opts worker.Options) *engine {
	t.Helper()
	srv := natstest.Start(t)
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	reg.MustRegister(approval.NewService().Definitions()...)
	reg.MustRegister((&flaky{seen: map[string]bool{}}).definitions()...)
	opts.Logger = natstest.Logger()
	opts.AckWait = 5 * time.Second
	node, err := worker.New(srv.Conn(), reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Stopping twice is harmless: a test may stop the node early.
	t.Cleanup(func() { _ = node.Stop(context.Background()) })
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	store, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return &engine{srv: srv, node: node, cl: cl, store: store}
}

// start starts a saga and records the acknowledgement.
func (e *engine) start(t *testing.T, ctx context.Context, acked *invariant.Acked, typ, id string, in any) {
	t.Helper()
	if _, err := e.cl.Start(ctx, typ, in, saga.StartOptions{ID: id, IfExists: saga.IfExistsUseExisting}); err != nil {
		t.Fatal(err)
	}
	acked.Starts = append(acked.Starts, id)
}

// waitWaiting waits until an approval saga waits for its decision: its
// budget reserved and its timer created.
func (e *engine) waitWaiting(t *testing.T, ctx context.Context, id string) {
	t.Helper()
	natstest.WaitFor(t, 30*time.Second, id+" waiting for a decision", func() bool {
		events, err := e.cl.History(ctx, id)
		return err == nil && slices.ContainsFunc(events, func(ev stream.Event) bool { return ev.Type == stream.TimerCreated })
	})
}

func (e *engine) waitEnded(t *testing.T, ctx context.Context, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if d, err := e.cl.Wait(ctx, id); err != nil || !d.Status.Terminal() {
			t.Fatalf("saga %s: %v %+v", id, err, d)
		}
	}
}

// rulesBySaga returns the rules each saga breaks.
func rulesBySaga(r invariant.Report) map[string][]invariant.Rule {
	out := map[string][]invariant.Rule{}
	for _, v := range r.Violations {
		if !slices.Contains(out[v.SagaID], v.Rule) {
			out[v.SagaID] = append(out[v.SagaID], v.Rule)
		}
	}
	return out
}

// Real sagas of every kind the examples have (completed, failed and
// compensated, approved by a signal, timed out on a timer, canceled, an
// activity retried) pass every check; then histories broken on the
// streams by hand, and acknowledgements the engine never had, are each
// reported under their rule.
func TestCheckRealSagas(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	e := startEngine(t, ctx, worker.Options{})
	var acked invariant.Acked

	e.start(t, ctx, &acked, "order", "o-ok", order.Input{OrderID: "o-ok", Amount: 10})
	e.start(t, ctx, &acked, "order", "o-ok", order.Input{OrderID: "o-ok", Amount: 10}) // a retried start
	e.start(t, ctx, &acked, "order", "o-fail", order.Input{OrderID: "o-fail", Amount: 10, FailStep: order.StepShipOrder})
	e.start(t, ctx, &acked, "flaky", "f-1", "f-1")
	e.start(t, ctx, &acked, approval.WorkflowType, "a-late", approval.Input{RequestID: "a-late", Amount: 5, Timeout: "1s"})
	for _, id := range []string{"a-yes", "a-cancel"} {
		e.start(t, ctx, &acked, approval.WorkflowType, id, approval.Input{RequestID: id, Amount: 5, Timeout: "1h"})
	}
	e.waitWaiting(t, ctx, "a-yes")
	decision, err := stream.Marshal(approval.Decision{By: "ann"})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // a sender retrying with the same msg id
		if _, err := e.cl.SignalPayload(ctx, "a-yes", approval.SignalApprove, decision, "m-yes"); err != nil {
			t.Fatal(err)
		}
		acked.Signals = append(acked.Signals, invariant.SignalAck{SagaID: "a-yes", Name: approval.SignalApprove, MsgID: "m-yes"})
	}
	e.waitWaiting(t, ctx, "a-cancel")
	if err := e.cl.Cancel(ctx, "a-cancel", "changed plans"); err != nil {
		t.Fatal(err)
	}
	all := []string{"o-ok", "o-fail", "f-1", "a-late", "a-yes", "a-cancel"}
	e.waitEnded(t, ctx, all...)
	// A signal to a saga that has ended is acknowledged by the inbox, then
	// set aside, not recorded: accounted for, not lost.
	if _, err := e.cl.SignalPayload(ctx, "a-late", approval.SignalApprove, decision, "m-late"); err != nil {
		t.Fatal(err)
	}
	acked.Signals = append(acked.Signals, invariant.SignalAck{SagaID: "a-late", Name: approval.SignalApprove, MsgID: "m-late"})
	natstest.WaitFor(t, 10*time.Second, "the late signal set aside", func() bool {
		letters, err := e.store.DeadLetters(ctx, 0)
		return err == nil && len(letters) == 1
	})

	r, err := invariant.Check(ctx, invariant.Options{Histories: e.store, Acked: acked, RequireEnded: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("real sagas: %s", r)
	if len(r.Violations) > 0 {
		t.Fatalf("violations in the engine's own histories:\n%s", r)
	}
	wantStatus := map[string]int{
		string(stream.WorkflowExecutionCompleted): 3, // o-ok, f-1, a-yes
		string(stream.WorkflowExecutionFailed):    2, // o-fail, a-late
		string(stream.WorkflowExecutionCanceled):  1, // a-cancel
	}
	if r.Sagas != len(all) || r.Ended != len(all) || !maps.Equal(r.ByStatus, wantStatus) {
		t.Fatalf("%d sagas, %d ended, by status %v", r.Sagas, r.Ended, r.ByStatus)
	}
	// Outcomes: o-ok 3, o-fail 3 and 2 undone, f-1 1, a-late and a-cancel
	// a reservation and its release each, a-yes a reservation and a
	// payment. f-1's activity took two attempts; a-late's timer fired;
	// a-yes recorded its signal once, though it was sent twice.
	if r.Outcomes != 15 || r.ExtraAttempts != 1 || r.TimersFired != 1 || r.Signals != 1 || r.SignalsSetAside != 1 {
		t.Fatalf("%d outcomes, %d extra attempts, %d timers fired, %d signals, %d set aside", r.Outcomes, r.ExtraAttempts, r.TimersFired, r.Signals, r.SignalsSetAside)
	}

	// Nothing writes to the streams from here but the test.
	if err := e.node.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// A timer fired a second early and then again.
	created := t0.Add(time.Hour)
	forged := []*stream.Commit{
		{SagaID: "forged-timer", WorkflowType: "forged", Events: []stream.Event{
			{ID: 0, Type: stream.WorkflowExecutionStarted, Time: created, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "forged", Version: 1}},
			{ID: 1, Type: stream.TimerCreated, Time: created, Attrs: &stream.TimerCreatedAttrs{Duration: 2 * time.Second}}}},
		{SagaID: "forged-timer", WorkflowType: "forged", Decided: true, Events: []stream.Event{
			{ID: 2, Type: stream.TimerFired, Time: created.Add(time.Second), Attrs: &stream.TimerFiredAttrs{StartedEventID: 1}}}},
		{SagaID: "forged-timer", WorkflowType: "forged", Decided: true, Events: []stream.Event{
			{ID: 3, Type: stream.TimerFired, Time: created.Add(3 * time.Second), Attrs: &stream.TimerFiredAttrs{StartedEventID: 1}}}},
	}
	var seq uint64
	for _, c := range forged {
		if seq, err = e.store.Append(ctx, c, seq); err != nil {
			t.Fatal(err)
		}
	}
	// Two registrations undone first registered first.
	reg := func(step string) *stream.CompensationRegistration {
		return &stream.CompensationRegistration{Step: step, ActivityType: "undo-" + step}
	}
	if _, err := e.store.Append(ctx, &stream.Commit{SagaID: "forged-lifo", WorkflowType: "forged", Events: []stream.Event{
		{ID: 0, Type: stream.WorkflowExecutionStarted, Time: created, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "forged", Version: 1}},
		{ID: 1, Type: stream.MarkerRecorded, Time: created, Attrs: &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation, Compensation: reg("a")}},
		{ID: 2, Type: stream.MarkerRecorded, Time: created, Attrs: &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation, Compensation: reg("b")}},
		{ID: 3, Type: stream.CompensationStepScheduled, Time: created, Attrs: &stream.CompensationStepScheduledAttrs{CompensationRegistration: *reg("a"), RegisteredEventID: 1}},
	}}, 0); err != nil {
		t.Fatal(err)
	}
	// o-fail's first compensation recorded a second time, after the end.
	last, err := e.store.Last(ctx, "o-fail")
	if err != nil {
		t.Fatal(err)
	}
	events, err := e.cl.History(ctx, "o-fail")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(events, func(ev stream.Event) bool { return ev.Type == stream.CompensationStepCompleted })
	again := events[i]
	again.ID = last.Commit.NextEventID()
	if _, err := e.store.Append(ctx, &stream.Commit{SagaID: "o-fail", WorkflowType: "order", Events: []stream.Event{again}}, last.Seq); err != nil {
		t.Fatal(err)
	}
	// A message on a saga's subject that no engine wrote.
	if _, err := e.store.JetStream().Publish(ctx, e.store.Config().HistorySubject("junk"), []byte("not a commit")); err != nil {
		t.Fatal(err)
	}
	acked.Starts = append(acked.Starts, "never-started")
	acked.Signals = append(acked.Signals, invariant.SignalAck{SagaID: "a-yes", Name: approval.SignalApprove, MsgID: "m-lost"})

	r, err = invariant.Check(ctx, invariant.Options{Histories: e.store, Acked: acked, RequireEnded: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after forging: %s", r)
	want := map[string][]invariant.Rule{
		"a-yes":         {invariant.RuleAckedSignal},
		"forged-lifo":   {invariant.RuleCompensationLIFO, invariant.RuleEnded},
		"forged-timer":  {invariant.RuleTimerNotEarly, invariant.RuleTimerOnce, invariant.RuleEnded},
		"junk":          {invariant.RuleHistory},
		"never-started": {invariant.RuleAckedStart},
		"o-fail":        {invariant.RuleTerminalLast, invariant.RuleOneOutcome},
	}
	if got := rulesBySaga(r); !maps.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("rules by saga %v, want %v:\n%s", got, want, r)
	}
	if r.Sagas != len(all)+2 {
		t.Fatalf("%d sagas checked, want the %d run and the two forged (junk does not decode)", r.Sagas, len(all))
	}
	if d := r.Of(invariant.RuleOneOutcome)[0].Detail; !strings.Contains(d, "is a second outcome of compensation step") {
		t.Fatalf("o-fail: %s", d)
	}

	// IDs narrows the check.
	r, err = invariant.Check(ctx, invariant.Options{Histories: e.store, IDs: []string{"o-ok", "o-fail"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := rulesBySaga(r); r.Sagas != 2 || !maps.EqualFunc(got, map[string][]invariant.Rule{"o-fail": want["o-fail"]}, slices.Equal) {
		t.Fatalf("%d sagas, rules %v:\n%s", r.Sagas, got, r)
	}
}

// A saga named but absent is a violation; a stream that does not exist
// is an error, not a clean report.
func TestCheckMissingSagasAndStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	store, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := invariant.Check(ctx, invariant.Options{Histories: store}); err == nil {
		t.Fatal("a check of streams no node created passed")
	}
	if _, err := invariant.Check(ctx, invariant.Options{}); err == nil {
		t.Fatal("a check without Histories passed")
	}
	if err := store.EnsureStreams(ctx, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	r, err := invariant.Check(ctx, invariant.Options{Histories: store, IDs: []string{"ghost"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := rulesBySaga(r); !maps.EqualFunc(got, map[string][]invariant.Rule{"ghost": {invariant.RuleHistory}}, slices.Equal) {
		t.Fatalf("rules %v:\n%s", got, r)
	}
}

// With a Projection, Check compares it with the histories and reads
// archived sagas from it; without one, archived sagas are listed as not
// checked.
func TestCheckProjectionAndArchive(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	pg, err := pgarchive.Open(ctx, pgtest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	// Verify reads the tables the projector creates: create them first.
	if _, err := pg.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	e := startEngine(t, ctx, worker.Options{Projection: pg})
	var acked invariant.Acked
	e.start(t, ctx, &acked, "order", "p-ok", order.Input{OrderID: "p-ok", Amount: 1})
	e.waitEnded(t, ctx, "p-ok")
	e.start(t, ctx, &acked, "order", "p-fail", order.Input{OrderID: "p-fail", Amount: 1, FailStep: order.StepProcessPayment})
	e.waitEnded(t, ctx, "p-fail")

	opts := invariant.Options{Histories: e.store, Projection: pg, Acked: acked, RequireEnded: true}
	var r invariant.Report
	natstest.WaitFor(t, 30*time.Second, "the projection to catch up", func() bool {
		r, err = invariant.Check(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Violations) == 0
	})
	if _, err := pg.Pool().Exec(ctx, "UPDATE saga_sagas SET status = 'running' WHERE saga_id = 'p-fail'"); err != nil {
		t.Fatal(err)
	}
	if r, err = invariant.Check(ctx, opts); err != nil {
		t.Fatal(err)
	}
	v := r.Of(invariant.RuleProjection)
	if len(v) != 1 || len(r.Violations) != 1 || v[0].SagaID != "p-fail" || v[0].Detail != `status is "running" in the projection, "failed" in the history` {
		t.Fatalf("after changing a row:\n%s", r)
	}
	if _, err := pg.Pool().Exec(ctx, "UPDATE saga_sagas SET status = 'failed' WHERE saga_id = 'p-fail'"); err != nil {
		t.Fatal(err)
	}

	// p-ok ended first: it goes to the archive.
	var res pgarchive.ArchiveResult
	natstest.WaitFor(t, 30*time.Second, "p-ok archived", func() bool {
		res, err = pg.Archive(ctx, e.store, time.Now().Add(time.Hour), 1)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Equal(res.Archived, []string{"p-ok"})
	})
	if r, err = invariant.Check(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if len(r.Violations) > 0 || r.Sagas != 2 || r.Ended != 2 || len(r.Archived) != 0 {
		t.Fatalf("with the projection, the archived saga is checked from it:\n%s", r)
	}
	opts.Projection = nil
	if r, err = invariant.Check(ctx, opts); err != nil {
		t.Fatal(err)
	}
	if len(r.Violations) > 0 || r.Sagas != 1 || !slices.Equal(r.Archived, []string{"p-ok"}) {
		t.Fatalf("without the projection, the archived saga is left out (and its acknowledged start is no violation):\n%s", r)
	}
	// The stream really holds only the marker now.
	if _, err := e.store.ReadLatest(ctx, "p-ok"); err == nil {
		t.Fatal("p-ok still readable from the streams")
	}
}
