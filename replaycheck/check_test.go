package replaycheck_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

var (
	actA = saga.NewActivity("a", func(_ context.Context, s string) (string, error) { return s + "a", nil })
	actB = saga.NewActivity("b", func(_ context.Context, s string) (string, error) { return s + "b", nil })
)

// pair is the code as deployed: a, then b.
func pair(version int) *saga.Workflow[string, string] {
	return saga.NewWorkflow("pair", version, func(ctx saga.Context, in string) (string, error) {
		a, err := saga.ExecuteActivity(ctx, actA, in).Get(ctx)
		if err != nil {
			return "", err
		}
		return saga.ExecuteActivity(ctx, actB, a).Get(ctx)
	})
}

// swapped is a careless change of pair: b first, same name and version.
var swapped = saga.NewWorkflow("pair", 1, func(ctx saga.Context, in string) (string, error) {
	b, err := saga.ExecuteActivity(ctx, actB, in).Get(ctx)
	if err != nil {
		return "", err
	}
	return saga.ExecuteActivity(ctx, actA, b).Get(ctx)
})

// withChange is pair after a change made safely behind GetVersion: the
// histories it writes hold a version marker older code does not know.
var withChange = saga.NewWorkflow("pair", 1, func(ctx saga.Context, in string) (string, error) {
	if ctx.GetVersion("add-step", saga.DefaultVersion, 1) == 1 {
		in = "v1:" + in
	}
	a, err := saga.ExecuteActivity(ctx, actA, in).Get(ctx)
	if err != nil {
		return "", err
	}
	return saga.ExecuteActivity(ctx, actB, a).Get(ctx)
})

var panicky = saga.NewWorkflow("pair", 1, func(ctx saga.Context, in string) (string, error) {
	if _, err := saga.ExecuteActivity(ctx, actA, in).Get(ctx); err != nil {
		return "", err
	}
	panic("boom after a")
})

func registry(t *testing.T, defs ...saga.Definition) *saga.Registry {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		t.Fatal(err)
	}
	return reg
}

// record runs wf as a node would, each activity completing with its type
// appended to its input, and returns the history it writes: stopAfter
// results (-1: all), so that a history can end with the saga running.
func record(t *testing.T, wf saga.Definition, id string, started time.Time, stopAfter int) []stream.Event {
	t.Helper()
	reg := registry(t, wf)
	name := reg.WorkflowNames()[0]
	rw, _ := reg.Workflow(name)
	m := replay.New(replay.Config{SagaID: id, WorkflowType: name, Workflow: rw.Func})
	defer m.Close()
	var history []stream.Event
	var open []stream.Event // scheduled activities without a result, in order
	now := started
	feed := func(typ stream.EventType, attrs any) {
		t.Helper()
		e := stream.Event{ID: m.NextEventID(), SagaID: id, Type: typ, Category: stream.CategoryOf(typ), Time: now, Attrs: attrs}
		if err := m.Feed(t.Context(), e); err != nil {
			t.Fatalf("record %s: feed %s: %v", id, typ, err)
		}
		props := m.Propose(m.NextEventID(), now)
		if err := m.Feed(t.Context(), props...); err != nil {
			t.Fatalf("record %s: feed decision: %v", id, err)
		}
		history = append(history, e)
		history = append(history, props...)
		for _, p := range props {
			if p.Type == stream.ActivityTaskScheduled {
				open = append(open, p)
			}
		}
		now = now.Add(time.Second)
	}
	feed(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: name, Version: rw.Version, Input: payload(t, "in")})
	for n := 0; len(open) > 0 && n != stopAfter; n++ {
		s := open[0]
		open = open[1:]
		a := s.Attrs.(*stream.ActivityTaskScheduledAttrs)
		var in string
		if err := stream.Unmarshal(a.Input, &in); err != nil {
			t.Fatal(err)
		}
		feed(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: s.ID, Result: payload(t, in+a.ActivityType)})
	}
	return history
}

func payload(t *testing.T, v any) stream.Payload {
	t.Helper()
	b, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// memSource serves histories held in memory, listed in insertion order.
type memSource struct {
	ids       []string
	histories map[string][]stream.Event
	errs      map[string]error
	listed    replaycheck.Filter
}

func newMemSource() *memSource {
	return &memSource{histories: map[string][]stream.Event{}, errs: map[string]error{}}
}

func (s *memSource) add(id string, events []stream.Event) *memSource {
	s.ids = append(s.ids, id)
	s.histories[id] = events
	return s
}

func (s *memSource) fail(id string, err error) *memSource {
	s.ids = append(s.ids, id)
	s.errs[id] = err
	return s
}

func (s *memSource) SagaIDs(_ context.Context, f replaycheck.Filter) ([]string, error) {
	s.listed = f
	return s.ids, nil
}

func (s *memSource) Events(_ context.Context, id string) ([]stream.Event, error) {
	if err := s.errs[id]; err != nil {
		return nil, err
	}
	return s.histories[id], nil
}

func check(t *testing.T, src replaycheck.Source, reg *saga.Registry, opts replaycheck.Options) *replaycheck.Report {
	t.Helper()
	rep, err := replaycheck.Check(t.Context(), src, reg, opts)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	return rep
}

func counts(r *replaycheck.Report) string {
	return fmt.Sprintf("checked %d ok %d failed %d newer %d skipped %d", r.Checked, r.OK, r.Failed, r.NewerCode, r.Skipped)
}

func TestSameCodeReplaysEveryHistory(t *testing.T) {
	src := newMemSource().
		add("done", record(t, pair(1), "done", t0, -1)).
		add("halfway", record(t, pair(1), "halfway", t0, 1)).
		add("just-started", record(t, pair(1), "just-started", t0, 0))
	rep := check(t, src, registry(t, pair(1)), replaycheck.Options{})
	if got := counts(rep); got != "checked 3 ok 3 failed 0 newer 0 skipped 0" || len(rep.Failures) != 0 || rep.Types["pair"] != 3 {
		t.Fatalf("%s %+v", got, rep)
	}
	if err := rep.Err(); err != nil {
		t.Fatalf("Err: %v", err)
	}
}

func TestReorderedCodeIsNonDeterministic(t *testing.T) {
	src := newMemSource().
		add("done", record(t, pair(1), "done", t0, -1)).
		// A saga that has only its start replays on any code: the code's
		// first decision is not recorded yet.
		add("new", record(t, pair(1), "new", t0, 0)[:1])
	rep := check(t, src, registry(t, swapped), replaycheck.Options{})
	if got := counts(rep); got != "checked 2 ok 1 failed 1 newer 0 skipped 0" {
		t.Fatalf("%s %+v", got, rep)
	}
	f := rep.Failures[0]
	want := "event 1: history has ActivityTaskScheduled a, code asked for ActivityTaskScheduled b"
	if f.SagaID != "done" || f.Type != "pair" || f.Version != 1 || f.Kind != replaycheck.KindNondeterminism || f.Error != want || f.EventID == nil || *f.EventID != 1 {
		t.Fatalf("failure %+v", f)
	}
	if err := rep.Err(); !errors.Is(err, replaycheck.ErrWouldNotReplay) || !strings.Contains(err.Error(), "1 of 2") {
		t.Fatalf("Err: %v", err)
	}
}

func TestPanicIsReportedWithItsStack(t *testing.T) {
	src := newMemSource().add("p", record(t, pair(1), "p", t0, 1))
	rep := check(t, src, registry(t, panicky), replaycheck.Options{})
	if rep.Failed != 1 {
		t.Fatalf("%s", counts(rep))
	}
	f := rep.Failures[0]
	if f.Kind != replaycheck.KindPanic || f.Error != "workflow code panicked: boom after a" || !strings.Contains(f.Detail, "goroutine") || f.EventID != nil {
		t.Fatalf("failure %+v", f)
	}
}

func TestDeadlockIsReported(t *testing.T) {
	block := make(chan struct{})
	stuck := saga.NewWorkflow("pair", 1, func(ctx saga.Context, in string) (string, error) {
		if _, err := saga.ExecuteActivity(ctx, actA, in).Get(ctx); err != nil {
			return "", err
		}
		<-block // a native channel: forbidden in workflow code
		return saga.ExecuteActivity(ctx, actB, in).Get(ctx)
	})
	// The stuck coroutine is abandoned by the check; it unwinds at its
	// next call into the engine once released.
	t.Cleanup(func() { close(block) })
	src := newMemSource().add("d", record(t, pair(1), "d", t0, -1))
	rep := check(t, src, registry(t, stuck), replaycheck.Options{DeadlockTimeout: 50 * time.Millisecond})
	if rep.Failed != 1 || rep.Failures[0].Kind != replaycheck.KindDeadlock || !strings.Contains(rep.Failures[0].Error, "did not yield") {
		t.Fatalf("%s %+v", counts(rep), rep.Failures)
	}
}

func TestNewerCodeIsNotAFailure(t *testing.T) {
	v2 := record(t, pair(2), "v2", t0, -1)
	src := newMemSource().
		add("marker", record(t, withChange, "marker", t0, -1)).
		add("v2", v2)
	rep := check(t, src, registry(t, pair(1)), replaycheck.Options{})
	if got := counts(rep); got != "checked 2 ok 0 failed 0 newer 2 skipped 0" {
		t.Fatalf("%s %+v", got, rep.Failures)
	}
	marker, version := rep.Failures[0], rep.Failures[1]
	if marker.Kind != replaycheck.KindNewerCode || !strings.Contains(marker.Error, "written by newer code, with change add-step") || marker.EventID == nil || *marker.EventID != 1 {
		t.Fatalf("marker: %+v", marker)
	}
	if version.Kind != replaycheck.KindNewerCode || version.Version != 2 || version.Error != "the saga runs version 2 of workflow pair, this code is version 1" {
		t.Fatalf("version: %+v", version)
	}
	if err := rep.Err(); !errors.Is(err, replaycheck.ErrWouldNotReplay) || !strings.Contains(err.Error(), "2 written by newer code") {
		t.Fatalf("Err: %v", err)
	}
	// The code that wrote them replays them.
	if rep := check(t, newMemSource().add("marker", record(t, withChange, "marker", t0, -1)), registry(t, withChange), replaycheck.Options{}); rep.OK != 1 {
		t.Fatalf("%s %+v", counts(rep), rep.Failures)
	}
}

func TestCorruptHistories(t *testing.T) {
	good := record(t, pair(1), "x", t0, -1)
	// A result for an event that is not a scheduled activity.
	bogus := append([]stream.Event(nil), good[:2]...)
	bogus = append(bogus, stream.Event{ID: 2, SagaID: "bogus", Type: stream.ActivityTaskCompleted, Time: t0, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 0}})
	src := newMemSource().
		add("bogus", bogus).
		add("headless", good[1:]).
		add("empty", nil).
		fail("undecodable", &stream.CodecError{Subject: "saga.h.0.undecodable", Seq: 7, Err: fmt.Errorf("%w: not msgpack", stream.ErrCodec)}).
		fail("future", fmt.Errorf("%w: commit format 9", stream.ErrUnsupported))
	rep := check(t, src, registry(t, pair(1)), replaycheck.Options{Filter: replaycheck.Filter{Type: "pair"}})
	if got := counts(rep); got != "checked 5 ok 0 failed 4 newer 1 skipped 0" {
		t.Fatalf("%s %+v", got, rep.Failures)
	}
	wants := []struct {
		kind replaycheck.Kind
		msg  string
	}{
		{replaycheck.KindCorrupt, "event 2 is a result for event 0, which is not a scheduled activity"},
		{replaycheck.KindCorrupt, "the history starts with ActivityTaskScheduled"},
		{replaycheck.KindCorrupt, "the history has no events"},
		{replaycheck.KindCorrupt, "history message saga.h.0.undecodable at stream sequence 7"},
		{replaycheck.KindNewerCode, "commit format 9"},
	}
	for i, w := range wants {
		if f := rep.Failures[i]; f.Kind != w.kind || !strings.Contains(f.Error, w.msg) {
			t.Errorf("failure %d: %+v, want %s %q", i, f, w.kind, w.msg)
		}
	}
}

func TestUnregisteredTypesAreSkipped(t *testing.T) {
	other := saga.NewWorkflow("legacy", 1, func(ctx saga.Context, in string) (string, error) {
		return saga.ExecuteActivity(ctx, actA, in).Get(ctx)
	})
	src := newMemSource().
		add("l-1", record(t, other, "l-1", t0, -1)).
		add("p-1", record(t, pair(1), "p-1", t0, -1)).
		add("l-2", record(t, other, "l-2", t0, 0))
	rep := check(t, src, registry(t, pair(1)), replaycheck.Options{})
	if got := counts(rep); got != "checked 1 ok 1 failed 0 newer 0 skipped 2" || rep.SkippedTypes["legacy"] != 2 || len(rep.Types) != 1 {
		t.Fatalf("%s %+v", got, rep)
	}
	if rep.Err() != nil {
		t.Fatalf("skipped sagas are not failures: %v", rep.Err())
	}
}

func TestFilter(t *testing.T) {
	other := saga.NewWorkflow("other", 1, func(ctx saga.Context, in string) (string, error) { return in, nil })
	src := newMemSource().
		add("old", record(t, pair(1), "old", t0.Add(-48*time.Hour), -1)).
		add("o-1", record(t, other, "o-1", t0, -1)).
		add("new-1", record(t, pair(1), "new-1", t0, -1)).
		add("new-2", record(t, pair(1), "new-2", t0.Add(time.Hour), -1)).
		add("new-3", record(t, pair(1), "new-3", t0.Add(2*time.Hour), -1))
	reg := registry(t, swapped, other)

	// Since keeps sagas started at or after it.
	f := replaycheck.Filter{Type: "pair", Since: t0}
	rep := check(t, src, reg, replaycheck.Options{Filter: f})
	if got := counts(rep); got != "checked 3 ok 0 failed 3 newer 0 skipped 0" || rep.Failures[0].SagaID != "new-1" {
		t.Fatalf("type and since: %s %+v", got, rep.Failures)
	}
	if src.listed != f {
		t.Fatalf("the source was asked for %+v, want %+v", src.listed, f)
	}
	// Limit counts the matching sagas only, in the source's order.
	f.Limit = 2
	rep = check(t, src, reg, replaycheck.Options{Filter: f})
	if got := counts(rep); got != "checked 2 ok 0 failed 2 newer 0 skipped 0" || rep.Failures[1].SagaID != "new-2" {
		t.Fatalf("limit: %s %+v", got, rep.Failures)
	}
	rep = check(t, src, reg, replaycheck.Options{Filter: replaycheck.Filter{Type: "other"}})
	if got := counts(rep); got != "checked 1 ok 1 failed 0 newer 0 skipped 0" {
		t.Fatalf("other: %s", got)
	}
	if !f.Matches("pair", t0) || f.Matches("pair", t0.Add(-time.Nanosecond)) || f.Matches("other", t0) {
		t.Fatal("Matches")
	}
}

func TestSourceFailureStopsTheCheck(t *testing.T) {
	src := newMemSource().
		add("p-1", record(t, pair(1), "p-1", t0, -1)).
		fail("p-2", fmt.Errorf("read: %w", stream.ErrUnavailable)).
		add("p-3", record(t, pair(1), "p-3", t0, -1))
	rep, err := replaycheck.Check(t.Context(), src, registry(t, pair(1)), replaycheck.Options{})
	if !errors.Is(err, stream.ErrUnavailable) || !strings.Contains(err.Error(), "p-2") {
		t.Fatalf("err %v", err)
	}
	if rep == nil || rep.OK != 1 {
		t.Fatalf("the report so far: %+v", rep)
	}

	// A saga gone between listing and reading is not counted.
	src = newMemSource().fail("gone", fmt.Errorf("saga %q: %w", "gone", stream.ErrNotFound))
	if rep := check(t, src, registry(t, pair(1)), replaycheck.Options{}); counts(rep) != "checked 0 ok 0 failed 0 newer 0 skipped 0" {
		t.Fatal(counts(rep))
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	src = newMemSource().add("p-1", record(t, pair(1), "p-1", t0, -1))
	if _, err := replaycheck.Check(ctx, src, registry(t, pair(1)), replaycheck.Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}
