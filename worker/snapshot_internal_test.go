package worker

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

func TestReachesMultiple(t *testing.T) {
	for _, c := range []struct {
		first, last uint64
		interval    int
		want        bool
	}{
		{0, 0, 100, false}, // the start is no snapshot's
		{0, 99, 100, false},
		{98, 100, 100, true},
		{100, 100, 100, true},
		{101, 199, 100, false},
		{150, 420, 100, true}, // a commit spanning several multiples: one snapshot
		{1, 1, 1, true},
		{5, 9, 0, false}, // interval 0: none
	} {
		if got := reachesMultiple(c.first, c.last, c.interval); got != c.want {
			t.Errorf("events %d..%d, interval %d: %t, want %t", c.first, c.last, c.interval, got, c.want)
		}
	}
}

// startedNode starts a node registering nothing, stopped when the test
// ends.
func startedNode(t *testing.T, srv *natstest.Server, opts Options) *Node {
	t.Helper()
	opts.Logger = natstest.Logger()
	n, err := New(srv.Conn(), saga.NewRegistry(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop(context.Background()) })
	return n
}

// markerHistory appends a saga of a start and commits of three side
// effect markers each (no effects to carry out), commits+1 in all.
func markerHistory(t *testing.T, ctx context.Context, store *stream.Store, id string, commits int) uint64 {
	t.Helper()
	data, _ := stream.Marshal("recorded")
	now := time.Now()
	seq, err := store.Append(ctx, &stream.Commit{SagaID: id, WorkflowType: "hand", Events: []stream.Event{{
		ID: 0, SagaID: id, Type: stream.WorkflowExecutionStarted, Time: now, Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "hand"},
	}}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	next := uint64(1)
	for range commits {
		c := &stream.Commit{SagaID: id, WorkflowType: "hand", Decided: true}
		for range 3 {
			c.Events = append(c.Events, stream.Event{ID: next, SagaID: id, Type: stream.MarkerRecorded, Time: now,
				Attrs: &stream.MarkerRecordedAttrs{Name: stream.MarkerSideEffect, Data: data}})
			next++
		}
		if seq, err = store.Append(ctx, c, seq); err != nil {
			t.Fatal(err)
		}
	}
	return seq
}

// A node's lookup of a saga it does not hold folds the latest snapshot
// and what follows it, reading no whole history and caching nothing; a
// snapshot that does not fit sends it to the history, counted.
func TestColdLookupsStartFromTheSnapshot(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	writer := startedNode(t, srv, Options{Snapshots: &stream.SnapshotConfig{Interval: 10}})
	const id = "cold-1"
	last := markerHistory(t, ctx, writer.store, id, 15) // 46 events: snapshots at 10 … 40
	natstest.WaitFor(t, 20*time.Second, "the commits dispatched", func() bool {
		done, err := writer.store.Dispatched(ctx, id, last)
		return err == nil && done
	})
	if writer.Stats().SnapshotsWritten == 0 {
		t.Fatal("no snapshot written")
	}
	commits, err := writer.store.ReadLatest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want, err := stream.Fold(commits)
	if err != nil {
		t.Fatal(err)
	}

	reader := startedNode(t, srv, Options{Snapshots: &stream.SnapshotConfig{Interval: 0}})
	lookup := func() *stream.State {
		t.Helper()
		var got *stream.State
		if err := reader.withState(ctx, id, 45, func(st *stream.State) { c := *st; got = &c }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := lookup(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state from the snapshot:\n got %+v\nwant %+v", *got, *want)
	}
	if st := reader.Stats(); st.SnapshotLoads != 1 || st.HistoryReads != 0 || st.SnapshotsRejected != 0 {
		t.Fatalf("stats %+v, want one snapshot load and no history read", st)
	}
	if _, err := reader.snapshots.Put(ctx, id, []byte("damaged")); err != nil {
		t.Fatal(err)
	}
	if err := reader.snapshots.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.snapshots.Put(ctx, id, []byte("damaged")); err != nil {
		t.Fatal(err)
	}
	if got := lookup(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state from the history:\n got %+v\nwant %+v", *got, *want)
	}
	if st := reader.Stats(); st.SnapshotLoads != 1 || st.HistoryReads != 1 || st.SnapshotsRejected != 1 {
		t.Fatalf("stats %+v, want the damaged snapshot rejected and the history read", st)
	}
	// The history read filled the view: the next lookup uses it.
	lookup()
	if st := reader.Stats(); st.SnapshotLoads != 1 || st.SnapshotsRejected != 1 {
		t.Fatalf("stats %+v, want the view used", st)
	}

	t.Run("an event the snapshot and history lack is not in the history", func(t *testing.T) {
		fresh := startedNode(t, srv, Options{})
		if _, err := putSnapshotOf(ctx, writer, want); err != nil {
			t.Fatal(err)
		}
		err := fresh.withState(ctx, id, 1000, func(*stream.State) { t.Error("fn ran on a state that lacks the event") })
		if !errors.Is(err, errNotInHistory) || fresh.Stats().SnapshotLoads != 0 {
			t.Fatalf("got %v (stats %+v), want errNotInHistory", err, fresh.Stats())
		}
	})
}

func putSnapshotOf(ctx context.Context, n *Node, st *stream.State) (bool, error) {
	data, err := stream.EncodeSnapshot(st)
	if err != nil {
		return false, err
	}
	if err := n.snapshots.Delete(ctx, st.SagaID); err != nil {
		return false, err
	}
	return putSnapshot(ctx, n.snapshots, st.SagaID, st.LastSeq, data)
}

// The latest snapshot never goes back to an earlier commit, whatever
// order writers come in; a damaged one is replaced.
func TestSnapshotNeverGoesBack(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := startedNode(t, srv, Options{})
	const id = "back-1"
	at := func(seq uint64) []byte {
		t.Helper()
		data, err := stream.EncodeSnapshot(&stream.State{SagaID: id, Status: stream.StatusRunning, NextEventID: seq * 3, LastSeq: seq,
			OpenActivities: map[uint64]stream.OpenActivity{}, Timers: map[uint64]stream.TimerState{}})
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	latest := func() uint64 {
		t.Helper()
		entry, err := n.snapshots.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		seq, _ := stream.SnapshotSeq(id, entry.Value())
		return seq
	}
	for _, step := range []struct {
		seq           uint64
		wrote         bool
		latestAfterIt uint64
	}{
		{50, true, 50},
		{40, false, 50}, // an older one comes late
		{50, false, 50}, // the same again (a redelivered commit)
		{60, true, 60},
	} {
		wrote, err := putSnapshot(ctx, n.snapshots, id, step.seq, at(step.seq))
		if err != nil || wrote != step.wrote || latest() != step.latestAfterIt {
			t.Fatalf("put at %d: wrote %t, %v, latest at %d; want wrote %t, latest at %d", step.seq, wrote, err, latest(), step.wrote, step.latestAfterIt)
		}
	}
	if _, err := n.snapshots.Put(ctx, id, []byte("damaged")); err != nil {
		t.Fatal(err)
	}
	if wrote, err := putSnapshot(ctx, n.snapshots, id, 10, at(10)); err != nil || !wrote || latest() != 10 {
		t.Fatalf("over a damaged snapshot: wrote %t, %v, latest at %d", wrote, err, latest())
	}
}

// A snapshot that cannot be written fails nothing: the saga goes on, and
// the failure is counted.
func TestFailedSnapshotWritesFailNothing(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startedNode(t, srv, Options{Snapshots: &stream.SnapshotConfig{Interval: 10}})
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, "KV_SAGA_SNAPSHOTS"); err != nil {
		t.Fatal(err)
	}
	const id = "fail-1"
	last := markerHistory(t, ctx, n.store, id, 10)
	natstest.WaitFor(t, 20*time.Second, "the commits dispatched", func() bool {
		done, err := n.store.Dispatched(ctx, id, last)
		return err == nil && done
	})
	if st := n.Stats(); st.SnapshotWriteFailures != 3 || st.SnapshotsWritten != 0 {
		t.Fatalf("stats %+v, want 3 failed snapshot writes (events 10, 20, 30)", st)
	}
	st, _, err := n.store.LoadState(ctx, id, stream.LoadOptions{})
	if err != nil || st.NextEventID != 31 {
		t.Fatal(fmt.Errorf("state without snapshots: %+v, %w", st, err))
	}
}
