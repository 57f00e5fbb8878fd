package stream_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// filled sets every settable field of v, recursively, to a value other
// than its zero value: a State filled so carries whatever field State
// gains, without this test naming it.
func filled(v reflect.Value, depth int) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("s")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(7)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(7)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Slice:
		if v.Type() == reflect.TypeFor[stream.Payload]() {
			p, _ := stream.Marshal("value")
			v.SetBytes(p)
			return
		}
		s := reflect.MakeSlice(v.Type(), 1, 1)
		filled(s.Index(0), depth+1)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		key, val := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		filled(key, depth+1)
		filled(val, depth+1)
		m.SetMapIndex(key, val)
		v.Set(m)
	case reflect.Pointer:
		if depth > 4 {
			return // a chain of causes ends somewhere
		}
		p := reflect.New(v.Type().Elem())
		filled(p.Elem(), depth+1)
		v.Set(p)
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Unix(1_767_225_600, 123_456_789)))
			return
		}
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				filled(v.Field(i), depth+1)
			}
		}
	}
}

// Every field of State, and of every type a State holds, comes back from
// a snapshot as it went in: a field added to State and not carried by the
// snapshot fails here.
func TestSnapshotCarriesEveryStateField(t *testing.T) {
	var st stream.State
	filled(reflect.ValueOf(&st).Elem(), 0)
	for f := range reflect.TypeFor[stream.State]().Fields() {
		if reflect.ValueOf(st).FieldByIndex(f.Index).IsZero() {
			t.Fatalf("the filler left State.%s zero", f.Name)
		}
	}
	data, err := stream.EncodeSnapshot(&st)
	if err != nil {
		t.Fatal(err)
	}
	back, err := stream.DecodeSnapshot(st.SagaID, data, true)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, &st) {
		t.Fatalf("round trip changed the state:\n got %+v\nwant %+v", *back, st)
	}
	// One state always encodes to the same bytes (maps go in key order).
	again, err := stream.EncodeSnapshot(&st)
	if err != nil || !bytes.Equal(again, data) {
		t.Fatalf("one state encodes to different bytes (err %v)", err)
	}
}

func TestDecodeSnapshotRefusesWhatIsNotTheSagasOwn(t *testing.T) {
	st := foldedFixture(t, "snap-1")
	good, err := stream.EncodeSnapshot(st)
	if err != nil {
		t.Fatal(err)
	}
	// The workflow type is inside the checksummed state only.
	altered := bytes.Replace(good, []byte(fixtureType), []byte("snapshotteX"), 1)
	if bytes.Equal(altered, good) {
		t.Fatal("the fixture's workflow type is not in the snapshot")
	}
	otherVersion := envelope(t, st.SagaID, st.LastSeq, stream.SnapshotVersion+1, []byte{0x80})
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"garbage", []byte("not a snapshot at all"), stream.ErrSnapshotCorrupt},
		{"empty", nil, stream.ErrSnapshotCorrupt},
		{"truncated", good[:len(good)/2], stream.ErrSnapshotCorrupt},
		{"state changed under its checksum", altered, stream.ErrSnapshotCorrupt},
		{"another format version", otherVersion, stream.ErrUnsupported},
		{"a state that does not decode", envelope(t, st.SagaID, st.LastSeq, stream.SnapshotVersion, []byte{0xc1}), stream.ErrSnapshotCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := stream.DecodeSnapshot(st.SagaID, c.data, true); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	t.Run("another saga's", func(t *testing.T) {
		if _, err := stream.DecodeSnapshot("snap-2", good, true); !errors.Is(err, stream.ErrSnapshotCorrupt) {
			t.Fatalf("got %v, want ErrSnapshotCorrupt", err)
		}
	})
	t.Run("without the checksum check, damage that decodes is taken", func(t *testing.T) {
		back, err := stream.DecodeSnapshot(st.SagaID, altered, false)
		if err != nil || back.WorkflowType != "snapshotteX" {
			t.Fatalf("got %v, %v", back, err)
		}
	})
}

// envelope is a stored snapshot made by hand, with a valid checksum.
func envelope(t *testing.T, sagaID string, lastSeq uint64, version int, state []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(state)
	data, err := stream.Marshal(map[string]any{"version": version, "saga_id": sagaID, "last_seq": lastSeq, "state": state, "sha256": sum[:]})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

const fixtureType = "snapshotted"

// fixtureCommits is a history that goes through every kind of event the
// state folds: activities scheduled, completed, failed, timed out and
// canceled, timers created, fired and canceled, signals, markers, a block
// and its end, a cancellation, a compensation, and the saga's end.
func fixtureCommits(sagaID string) []*stream.Commit {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	input, _ := stream.Marshal(map[string]int{"amount": 10})
	failure := &stream.Failure{Kind: "Activity", Message: "declined", Context: map[string]string{"code": "51"}}
	opts := stream.ActivityOptions{StartToCloseTimeout: time.Minute,
		RetryPolicy: stream.RetryPolicy{MaximumAttempts: 3, NonRetryableErrorKinds: []string{"Validation"}}}
	ev := func(typ stream.EventType, attrs any) stream.Event { return stream.Event{Type: typ, Attrs: attrs} }
	schedule := func(activity string, detached bool) stream.Event {
		return ev(stream.ActivityTaskScheduled, &stream.ActivityTaskScheduledAttrs{ActivityType: activity, Input: input, Options: opts, Detached: detached})
	}
	undo := stream.CompensationRegistration{Step: "reserve", ActivityType: "release", Input: input}
	// Event ids in the comments.
	groups := [][]stream.Event{
		{ev(stream.WorkflowExecutionStarted, &stream.WorkflowExecutionStartedAttrs{WorkflowType: fixtureType, Version: 2, Input: input, RequestID: "r1", RunTimeout: time.Hour})}, // 0
		{
			schedule("reserve", false), // 1
			schedule("charge", true),   // 2
			ev(stream.TimerCreated, &stream.TimerCreatedAttrs{Duration: 5 * time.Second}),                                // 3
			ev(stream.MarkerRecorded, &stream.MarkerRecordedAttrs{Name: stream.MarkerCompensation, Compensation: &undo}), // 4
		},
		{
			ev(stream.ActivityTaskStarted, &stream.ActivityTaskStartedAttrs{ScheduledEventID: 1, Attempt: 1, Node: "n1"}), // 5
			ev(stream.ActivityTaskCompleted, &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1, Result: input}),      // 6
			ev(stream.SignalReceived, &stream.SignalReceivedAttrs{Name: "go", Input: input, InboxSeq: 41, InboxEpoch: 9}), // 7
			schedule("ship", false), // 8
		},
		{
			ev(stream.TimerFired, &stream.TimerFiredAttrs{StartedEventID: 3}),                                                                                   // 9
			ev(stream.TimerCreated, &stream.TimerCreatedAttrs{Duration: time.Minute}),                                                                           // 10
			ev(stream.WorkflowExecutionBlocked, &stream.WorkflowExecutionBlockedAttrs{Reason: stream.BlockedPanic, Message: "boom", AtEventID: 10, Node: "n1"}), // 11
		},
		{
			ev(stream.WorkflowExecutionUnblocked, &stream.WorkflowExecutionUnblockedAttrs{Node: "n2"}),                         // 12
			ev(stream.ActivityTaskFailed, &stream.ActivityTaskFailedAttrs{ScheduledEventID: 2, Failure: failure, Attempts: 3}), // 13
			ev(stream.TimerCanceled, &stream.TimerCanceledAttrs{StartedEventID: 10}),                                           // 14
		},
		{
			ev(stream.WorkflowExecutionCancelRequested, &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: "customer", Identity: "support"}), // 15
			ev(stream.CompensationStepScheduled, &stream.CompensationStepScheduledAttrs{CompensationRegistration: undo, RegisteredEventID: 4}),                                 // 16
		},
		{
			ev(stream.CompensationStepFailed, &stream.CompensationStepFailedAttrs{ScheduledEventID: 16, Step: "reserve", Failure: failure, Attempts: 1}), // 17
			ev(stream.ActivityTaskTimedOut, &stream.ActivityTaskTimedOutAttrs{ScheduledEventID: 8, Failure: failure, Attempts: 1}),                       // 18
			schedule("notify", false), // 19
			ev(stream.SignalReceived, &stream.SignalReceivedAttrs{Name: "go", InboxSeq: 3, InboxEpoch: 10}), // 20
		},
		{
			ev(stream.ActivityTaskCanceled, &stream.ActivityTaskCanceledAttrs{ScheduledEventID: 19}), // 21
			ev(stream.WorkflowExecutionCanceled, &stream.WorkflowExecutionCanceledAttrs{Reason: "customer",
				Compensation: &stream.CompensationOutcome{Status: stream.CompensationFailed, FailedSteps: []string{"reserve"}, Failure: failure}}), // 22
		},
	}
	var commits []*stream.Commit
	var id uint64
	for _, events := range groups {
		for i := range events {
			// Times apart to the nanosecond: a snapshot's time is checked.
			events[i].ID, events[i].SagaID, events[i].Time = id, sagaID, at.Add(time.Duration(id)*(time.Second+time.Nanosecond))
			id++
		}
		commits = append(commits, &stream.Commit{SagaID: sagaID, WorkflowType: fixtureType, Events: events})
	}
	return commits
}

// foldedFixture is the fixture's state folded in memory, at made-up
// sequences.
func foldedFixture(t *testing.T, sagaID string) *stream.State {
	t.Helper()
	var stored []stream.StoredCommit
	for i, c := range fixtureCommits(sagaID) {
		stored = append(stored, stream.StoredCommit{Seq: uint64(i + 1), Commit: c})
	}
	st, err := stream.Fold(stored)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// snapshotEnv is a store with the engine's streams and the snapshots
// bucket, and one fixture saga appended.
type snapshotEnv struct {
	t       *testing.T
	ctx     context.Context
	store   *stream.Store
	nc      *nats.Conn
	kv      jetstream.KeyValue
	commits []stream.StoredCommit // the fixture's, as read back
}

func newSnapshotEnv(t *testing.T, sagaIDs ...string) *snapshotEnv {
	t.Helper()
	st, nc := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	kv, err := stream.EnsureSnapshotBucket(ctx, st.JetStream(), st.Config(), stream.DefaultMaxSnapshots, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &snapshotEnv{t: t, ctx: ctx, store: st, nc: nc, kv: kv}
	for _, id := range sagaIDs {
		e.appendFixture(id)
	}
	e.commits = e.read(sagaIDs[0])
	return e
}

func (e *snapshotEnv) appendFixture(sagaID string) {
	e.t.Helper()
	var seq uint64
	for _, c := range fixtureCommits(sagaID) {
		var err error
		if seq, err = e.store.Append(e.ctx, c, seq); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *snapshotEnv) read(sagaID string) []stream.StoredCommit {
	e.t.Helper()
	commits, err := e.store.ReadLatest(e.ctx, sagaID)
	if err != nil {
		e.t.Fatal(err)
	}
	return commits
}

// snapshotAt encodes the fold of the first n of commits.
func (e *snapshotEnv) snapshotAt(commits []stream.StoredCommit, n int) []byte {
	e.t.Helper()
	st, err := stream.Fold(commits[:n])
	if err != nil {
		e.t.Fatal(err)
	}
	data, err := stream.EncodeSnapshot(st)
	if err != nil {
		e.t.Fatal(err)
	}
	return data
}

func (e *snapshotEnv) put(sagaID string, data []byte) {
	e.t.Helper()
	if _, err := e.kv.Put(e.ctx, sagaID, data); err != nil {
		e.t.Fatal(err)
	}
}

// load loads the saga's state and checks it against a fold of its whole
// history.
func (e *snapshotEnv) load(sagaID string) stream.StateLoad {
	e.t.Helper()
	st, load, err := e.store.LoadState(e.ctx, sagaID, stream.LoadOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	want, err := stream.Fold(e.read(sagaID))
	if err != nil {
		e.t.Fatal(err)
	}
	if !reflect.DeepEqual(st, want) {
		e.t.Fatalf("state of %s:\n got %+v\nwant %+v", sagaID, *st, *want)
	}
	return load
}

// A snapshot taken after any commit of a real history, with the commits
// after it folded on, is the state a fold of the whole history gives, and
// only the commits from the snapshot's on are read.
func TestLoadStateFromASnapshotAtEveryCommit(t *testing.T) {
	const id = "snap-1"
	e := newSnapshotEnv(t, id)
	if load := e.load(id); load.SnapshotSeq != 0 || load.Rejected != nil || load.CommitsRead != len(e.commits) {
		t.Fatalf("without a snapshot: %+v, want the %d commits read", load, len(e.commits))
	}
	for n := 1; n <= len(e.commits); n++ {
		e.put(id, e.snapshotAt(e.commits, n))
		load := e.load(id)
		if load.SnapshotSeq != e.commits[n-1].Seq || load.Rejected != nil || load.CommitsRead != len(e.commits)-n+1 {
			t.Fatalf("snapshot after commit %d: %+v, want it used and %d commits read", n, load, len(e.commits)-n+1)
		}
	}
}

// A snapshot that is damaged, another saga's, or does not continue the
// history is passed over, said so, and the state is the whole history's.
func TestLoadStatePassesOverSnapshotsThatDoNotFit(t *testing.T) {
	const id, other = "snap-1", "snap-2"
	e := newSnapshotEnv(t, id, other)
	valid := e.snapshotAt(e.commits, 3)
	beyond := func(change func(*stream.State)) []byte {
		st, err := stream.Fold(e.commits)
		if err != nil {
			t.Fatal(err)
		}
		change(st)
		data, err := stream.EncodeSnapshot(st)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"garbage", []byte{0xde, 0xad, 0xbe, 0xef}, stream.ErrSnapshotCorrupt},
		{"wrong checksum", bytes.Replace(valid, []byte(fixtureType), []byte("snapshotteX"), 1), stream.ErrSnapshotCorrupt},
		{"another saga's snapshot", e.snapshotAt(e.read(other), 3), stream.ErrSnapshotCorrupt},
		{"another format version", envelope(t, id, e.commits[2].Seq, stream.SnapshotVersion+1, []byte{0x80}), stream.ErrUnsupported},
		{"taken beyond the history", beyond(func(st *stream.State) { st.LastSeq += 1000 }), stream.ErrSnapshotMismatch},
		{"of another commit at the same sequence", beyond(func(st *stream.State) { st.UpdatedAt = st.UpdatedAt.Add(time.Second) }), stream.ErrSnapshotMismatch},
		{"of a longer history", beyond(func(st *stream.State) { st.NextEventID += 3 }), stream.ErrSnapshotMismatch},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := e.kv.Delete(e.ctx, id); err != nil {
				t.Fatal(err) // no older snapshot to fall back on
			}
			e.put(id, c.data)
			load := e.load(id)
			if load.SnapshotSeq != 0 || !errors.Is(load.Rejected, c.want) || load.CommitsRead < len(e.commits) {
				t.Fatalf("got %+v, want the snapshot passed over with %v and the whole history read", load, c.want)
			}
		})
	}

	t.Run("an older valid snapshot under a damaged one is used", func(t *testing.T) {
		e.put(id, valid)
		e.put(id, []byte("damaged"))
		load := e.load(id)
		if load.SnapshotSeq != e.commits[2].Seq || !errors.Is(load.Rejected, stream.ErrSnapshotCorrupt) {
			t.Fatalf("got %+v, want the snapshot at %d, the latest reported corrupt", load, e.commits[2].Seq)
		}
	})
	t.Run("a deleted key hides its older snapshots", func(t *testing.T) {
		e.put(id, valid)
		if err := e.kv.Delete(e.ctx, id); err != nil {
			t.Fatal(err)
		}
		if load := e.load(id); load.SnapshotSeq != 0 || load.Rejected != nil {
			t.Fatalf("got %+v, want the history read, nothing rejected", load)
		}
	})
	t.Run("the checksum check can be turned off", func(t *testing.T) {
		if err := e.kv.Delete(e.ctx, id); err != nil {
			t.Fatal(err)
		}
		e.put(id, bytes.Replace(valid, []byte(fixtureType), []byte("snapshotteX"), 1))
		st, load, err := e.store.LoadState(e.ctx, id, stream.LoadOptions{SkipChecksum: true})
		if err != nil || load.SnapshotSeq != e.commits[2].Seq || st.WorkflowType != "snapshotteX" {
			t.Fatalf("got %+v, %+v, %v: want the damaged snapshot taken", st, load, err)
		}
	})
}

// Archiving a saga purges its snapshots; one written after is never
// read: the saga is archived.
func TestArchivePurgesSnapshots(t *testing.T) {
	const id = "snap-1"
	e := newSnapshotEnv(t, id)
	e.put(id, e.snapshotAt(e.commits, 2))
	e.put(id, e.snapshotAt(e.commits, 4))
	if err := e.store.Archive(e.ctx, id, e.commits[len(e.commits)-1].Seq, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.kv.Get(e.ctx, id); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("snapshot after archiving: %v, want none", err)
	}
	status, err := e.kv.Status(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.Values() != 0 {
		t.Fatalf("the bucket keeps %d messages of the archived saga, want 0", status.Values())
	}
	e.put(id, e.snapshotAt(e.commits, 4))
	if _, _, err := e.store.LoadState(e.ctx, id, stream.LoadOptions{}); !errors.Is(err, stream.ErrArchived) {
		t.Fatalf("load of an archived saga with a snapshot: %v, want ErrArchived", err)
	}
}

// Without a snapshots bucket (no node set one up), states are folded
// from the whole history.
func TestLoadStateWithoutABucket(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	var seq uint64
	for _, c := range fixtureCommits("snap-1") {
		var err error
		if seq, err = st.Append(ctx, c, seq); err != nil {
			t.Fatal(err)
		}
	}
	got, load, err := st.LoadState(ctx, "snap-1", stream.LoadOptions{})
	if err != nil || !got.Exists() || load.SnapshotSeq != 0 || load.Rejected != nil {
		t.Fatalf("got %+v, %+v, %v", got, load, err)
	}
	if missing, _, err := st.LoadState(ctx, "snap-none", stream.LoadOptions{}); err != nil || missing.Exists() {
		t.Fatalf("a saga without history: %+v, %v", missing, err)
	}
}
