package stream_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// appendRuns appends to saga id a history of runs runs, each of a start, a
// signal and the end (continue-as-new, then the next run's start, in one
// commit; the last run ends with its completion), as the engine writes
// one, and returns the commits as read back.
func appendRuns(t *testing.T, st *stream.Store, id string, runs int) []stream.StoredCommit {
	t.Helper()
	ctx := t.Context()
	state := &stream.State{}
	at := time.Now()
	appendEvents := func(events ...stream.Event) {
		t.Helper()
		for i := range events {
			events[i].ID, events[i].SagaID, events[i].Time = state.NextEventID+uint64(i), id, at
		}
		c := state.NewCommit(events, true)
		if !state.Exists() {
			c = &stream.Commit{SagaID: id, WorkflowType: "loop", Events: events}
		}
		seq, err := st.Append(ctx, c, state.LastSeq)
		if err != nil {
			t.Fatal(err)
		}
		if err := state.Apply(stream.StoredCommit{Seq: seq, Commit: c}); err != nil {
			t.Fatal(err)
		}
	}
	signal := func(seq uint64) stream.Event {
		return stream.Event{Type: stream.SignalReceived, Attrs: &stream.SignalReceivedAttrs{Name: "tick", InboxSeq: seq, InboxEpoch: 7}}
	}
	appendEvents(stream.Event{Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "loop", Version: 1}})
	for run := uint32(1); run < uint32(runs); run++ {
		appendEvents(signal(uint64(run)))
		end := state.NextEventID
		seq, epoch := state.InboxAfter(nil)
		appendEvents(
			stream.Event{Type: stream.WorkflowExecutionContinuedAsNew, Attrs: &stream.WorkflowExecutionContinuedAsNewAttrs{NextRun: run + 1}},
			stream.Event{Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "loop", Version: 1,
				Input: mustMarshal(t, run+1), Continued: &stream.RunContinuation{Run: run + 1, PreviousEventID: end,
					PreviousStartEventID: state.RunStartEventID, PreviousStartSeq: state.RunStartSeq, LastInboxSeq: seq, LastInboxEpoch: epoch}}},
		)
	}
	appendEvents(signal(uint64(runs)), stream.Event{Type: stream.WorkflowExecutionCompleted, Attrs: &stream.WorkflowExecutionCompletedAttrs{}})
	commits, err := st.Read(ctx, id, 0)
	if err != nil {
		t.Fatal(err)
	}
	return commits
}

func TestRunsAreReadFromTheLatestRunsStart(t *testing.T) {
	st, _ := newStore(t)
	ctx := t.Context()
	all := appendRuns(t, st, "loop-1", 4)
	whole, err := stream.Fold(all)
	if err != nil {
		t.Fatal(err)
	}
	run, err := st.ReadRun(ctx, "loop-1")
	if err != nil {
		t.Fatal(err)
	}
	// The last commit names where its run starts: the commit that ended
	// run 3, and the two after it.
	if len(run) != 2 || run[0].Seq != all[len(all)-2].Seq {
		t.Fatalf("read %d commits from sequence %d, want 2 from %d", len(run), run[0].Seq, all[len(all)-2].Seq)
	}
	latest, err := st.ReadLatestRun(ctx, "loop-1")
	if err != nil || len(latest) != len(run) {
		t.Fatalf("latest run: %d commits, %v", len(latest), err)
	}
	folded, err := stream.Fold(run)
	if err != nil {
		t.Fatal(err)
	}
	// The run alone folds to the state the whole history folds to.
	for _, s := range []*stream.State{whole, folded} {
		if s.Run != 4 || s.Status != stream.StatusCompleted || s.NextEventID != 12 || s.RunStartEventID != 9 || s.RunEvents() != 3 ||
			s.RunStartSeq != all[len(all)-2].Seq || s.LastInboxSeq != 4 || s.LastInboxEpoch != 7 || s.ContinuedFrom.Run != 4 || s.ContinuedFrom.PreviousEventID != 8 {
			t.Fatalf("state %+v", s)
		}
	}
	if whole.RunBytes != folded.RunBytes || whole.RunBytes <= 0 {
		t.Fatalf("run bytes: %d from the whole history, %d from the run", whole.RunBytes, folded.RunBytes)
	}
	if events := stream.RunEventsOf(run); len(events) != 3 || events[0].ID != 9 || events[0].Type != stream.WorkflowExecutionStarted {
		t.Fatalf("run events %v", events)
	}
	// A saga that never continued is read whole.
	first := appendRuns(t, st, "once", 1)
	if got, err := st.ReadRun(ctx, "once"); err != nil || len(got) != len(first) {
		t.Fatalf("one run: %d commits of %d, %v", len(got), len(first), err)
	}
	// A read that starts mid-run is refused, not folded from the middle.
	if _, err := stream.Fold(all[len(all)-1:]); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("fold from the middle of a run: %v", err)
	}
}

// Commits of a later run carry format 2, which an engine that reads only
// format 1 refuses as unsupported: it leaves the saga to newer nodes.
func TestLaterRunsAreAFormatOlderEnginesRefuse(t *testing.T) {
	st, _ := newStore(t)
	all := appendRuns(t, st, "loop-2", 2)
	format := func(data []byte) int {
		var w struct {
			Format int `msgpack:"v"`
		}
		if err := msgpack.Unmarshal(data, &w); err != nil {
			t.Fatal(err)
		}
		return w.Format
	}
	if f := format(all[0].Data); f != 1 {
		t.Fatalf("first run's commit format %d", f)
	}
	for _, sc := range all[2:] {
		if f := format(sc.Data); f != 2 {
			t.Fatalf("commit at %d of run 2 has format %d", sc.Seq, f)
		}
	}
	// This engine refuses a format above its own the same way.
	future := mustMarshal(t, map[string]any{"v": 3, "saga_id": "x", "workflow_type": "loop", "events": []any{}})
	if _, err := stream.DecodeCommit(future); !errors.Is(err, stream.ErrUnsupported) {
		t.Fatalf("format 3: %v", err)
	}
}

// Writers and readers refuse run positions that do not hold together.
func TestRunPositionsAreChecked(t *testing.T) {
	at := time.Now()
	ev := func(id uint64, typ stream.EventType, attrs any) stream.Event {
		return stream.Event{ID: id, SagaID: "s", Type: typ, Time: at, Attrs: attrs}
	}
	can := func(id uint64, next uint32) stream.Event {
		return ev(id, stream.WorkflowExecutionContinuedAsNew, &stream.WorkflowExecutionContinuedAsNewAttrs{NextRun: next})
	}
	start := func(id uint64, run uint32) stream.Event {
		return ev(id, stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w", Continued: &stream.RunContinuation{Run: run, PreviousEventID: id - 1}})
	}
	signal := ev(6, stream.SignalReceived, &stream.SignalReceivedAttrs{Name: "x"})
	for name, c := range map[string]*stream.Commit{
		"continue-as-new in a first run's commit": {Events: []stream.Event{can(4, 2), start(5, 2)}},
		"continue-as-new without a start after":   {Events: []stream.Event{can(4, 2)}, Run: stream.RunPosition{Run: 2, StartEventID: 5}},
		"start of run 3 in a commit of run 2":     {Events: []stream.Event{can(4, 3), start(5, 3)}, Run: stream.RunPosition{Run: 2, StartEventID: 5}},
		"a second start without its predecessor":  {Events: []stream.Event{start(5, 2)}, Run: stream.RunPosition{Run: 2, StartEventID: 5}},
		"a run whose start is after the commit":   {Events: []stream.Event{signal}, Run: stream.RunPosition{Run: 2, StartEventID: 9, StartSeq: 3}},
		"a held start the commit does not hold":   {Events: []stream.Event{signal}, Run: stream.RunPosition{Run: 2, StartEventID: 5}},
	} {
		c.SagaID, c.WorkflowType = "s", "w"
		if _, err := c.Encode(); !errors.Is(err, stream.ErrCodec) {
			t.Errorf("%s: encoded (%v)", name, err)
		}
	}
	good := &stream.Commit{SagaID: "s", WorkflowType: "w", Events: []stream.Event{can(4, 2), start(5, 2)}, Run: stream.RunPosition{Run: 2, StartEventID: 5}}
	data, err := good.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := stream.DecodeCommit(data)
	if err != nil || back.Run != good.Run || back.StartsRun() != 1 || back.EncodedSize() != len(data) {
		t.Fatalf("decoded %+v, %v", back, err)
	}
}

func TestHistoryLimitsAreRecordedOnceForTheFleet(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	first := stream.HistoryLimits{WarnEvents: 20, LimitEvents: 40}
	a, err := stream.Open(srv.Conn(), stream.Config{HistoryLimits: first})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want := first.Defaults()
	if got, err := stream.CheckHistoryLimits(ctx, a.JetStream(), a.Config(), first); err != nil || got != want {
		t.Fatalf("recorded %+v, %v; want %+v", got, err, want)
	}
	// A node set up with a weaker limit follows the recorded one.
	weaker := stream.HistoryLimits{WarnEvents: 1_000_000, LimitEvents: 5_000_000}
	b, err := stream.Open(srv.Conn(), stream.Config{HistoryLimits: weaker})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := stream.CheckHistoryLimits(ctx, b.JetStream(), b.Config(), weaker); err != nil || got != want {
		t.Fatalf("second node follows %+v, %v; want %+v", got, err, want)
	}
	// An operator changes them deliberately.
	raised := want
	raised.LimitEvents = 80
	if err := stream.SetHistoryLimits(ctx, b.JetStream(), b.Config(), raised); err != nil {
		t.Fatal(err)
	}
	if got, recorded, err := stream.FleetHistoryLimits(ctx, a.JetStream(), a.Config()); err != nil || !recorded || got != raised {
		t.Fatalf("after the change %+v %v %v", got, recorded, err)
	}
	bad := raised
	bad.WarnEvents = 100
	if err := stream.SetHistoryLimits(ctx, b.JetStream(), b.Config(), bad); !errors.Is(err, stream.ErrInvalidHistoryLimits) {
		t.Fatalf("a warning above the limit: %v", err)
	}

	// Streams created before the limits existed get the first node's.
	js, err := jetstream.New(natstest.Start(t).Conn())
	if err != nil {
		t.Fatal(err)
	}
	legacy := stream.Config{}.Defaults()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: legacy.HistoryStream(0), Subjects: []string{legacy.HistoryFilter(0)}}); err != nil {
		t.Fatal(err)
	}
	if _, recorded, err := stream.FleetHistoryLimits(ctx, js, legacy); err != nil || recorded {
		t.Fatalf("legacy stream records limits: %v %v", recorded, err)
	}
	if got, err := stream.CheckHistoryLimits(ctx, js, legacy, first); err != nil || got != want {
		t.Fatalf("recorded on a legacy stream %+v, %v", got, err)
	}
}
