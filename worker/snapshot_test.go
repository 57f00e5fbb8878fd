package worker_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// snapStep is the no-op activity of snapLoop's steps.
var snapStep = saga.NewActivity("snap-step", func(_ context.Context, i int) (int, error) { return i, nil })

// snapLoop runs n steps (three events each after the start), then waits
// for a "finish" signal: a saga of 1+3n events whose history then stays
// as it is.
var snapLoop = saga.NewWorkflow("snap-loop", 1, func(ctx saga.Context, n int) (int, error) {
	for i := range n {
		if _, err := saga.ExecuteActivity(ctx, snapStep, i).Get(ctx); err != nil {
			return i, err
		}
	}
	if _, err := saga.GetSignalChannel[struct{}](ctx, "finish").Receive(ctx); err != nil {
		return n, err
	}
	return n, nil
})

// snapshotSaga starts snapLoop with n steps and returns once its 1+3n
// events are in the history and the dispatcher has handled every commit
// (so every snapshot it writes is written).
func (e *env) snapshotSaga(id string, n int) []stream.StoredCommit {
	e.t.Helper()
	if _, err := saga.StartWorkflow(e.ctx, e.cl, snapLoop, n, saga.StartOptions{ID: id}); err != nil {
		e.t.Fatal(err)
	}
	store := e.store()
	var commits []stream.StoredCommit
	natstest.WaitFor(e.t, 30*time.Second, "the saga's steps and their dispatch", func() bool {
		var err error
		commits, err = store.ReadLatest(e.ctx, id)
		if err != nil || len(commits) == 0 || commits[len(commits)-1].Commit.NextEventID() != uint64(1+3*n) {
			return false
		}
		done, err := store.Dispatched(e.ctx, id, commits[len(commits)-1].Seq)
		return err == nil && done
	})
	return commits
}

// store is a stream.Store of the engine's default prefix, for checks.
func (e *env) store() *stream.Store {
	e.t.Helper()
	st, err := stream.Open(e.srv.Conn(), stream.Config{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(st.Close)
	return st
}

func (e *env) snapshotsBucket() jetstream.KeyValue {
	e.t.Helper()
	kv, err := jsOf(e.t, e).KeyValue(e.ctx, "SAGA_SNAPSHOTS")
	if err != nil {
		e.t.Fatal(err)
	}
	return kv
}

// storedSnapshot decodes the saga's latest snapshot.
func (e *env) storedSnapshot(id string) *stream.State {
	e.t.Helper()
	entry, err := e.snapshotsBucket().Get(e.ctx, id)
	if err != nil {
		e.t.Fatalf("snapshot of %s: %v", id, err)
	}
	st, err := stream.DecodeSnapshot(id, entry.Value(), true)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// fullDescription is the saga's description folded from its whole
// history, as describe gave it before snapshots.
func fullDescription(t *testing.T, id string, commits []stream.StoredCommit) *saga.Description {
	t.Helper()
	st, err := stream.Fold(commits)
	if err != nil {
		t.Fatal(err)
	}
	return saga.DescribeState(st)
}

// historyReadsWatch counts the history commits a connection's direct
// gets bring back, by listening on its inbox prefix.
type historyReadsWatch struct {
	t       *testing.T
	nc      *nats.Conn // the watched connection
	subject string     // the saga's history subject
	prefix  string

	mu       sync.Mutex
	commits  int
	sentinel chan struct{}
}

func watchHistoryReads(t *testing.T, srv *natstest.Server, watched *nats.Conn, prefix, id string) *historyReadsWatch {
	t.Helper()
	w := &historyReadsWatch{t: t, nc: watched, prefix: prefix, subject: stream.Config{}.Defaults().HistorySubject(id), sentinel: make(chan struct{}, 1)}
	watcher := srv.Conn()
	_, err := watcher.Subscribe(prefix+".>", func(m *nats.Msg) {
		if m.Subject == prefix+".sentinel" {
			w.sentinel <- struct{}{}
			return
		}
		if m.Header.Get(jetstream.SubjectHeader) == w.subject {
			w.mu.Lock()
			w.commits++
			w.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	return w
}

// read returns the commits read since the last call. The watched
// connection's replies came before its sentinel, which the watcher gets
// after them.
func (w *historyReadsWatch) read() int {
	w.t.Helper()
	if err := w.nc.Publish(w.prefix+".sentinel", nil); err != nil {
		w.t.Fatal(err)
	}
	select {
	case <-w.sentinel:
	case <-time.After(10 * time.Second):
		w.t.Fatal("the watcher never saw its sentinel")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n := w.commits
	w.commits = 0
	return n
}

// Describe of a saga of a few hundred events reads the commits from its
// latest snapshot on, not its history: also on a fresh connection, with
// the node that wrote the snapshots gone, and its result is the whole
// history's. The saga then goes on under another node.
func TestDescribeReadsOnlyTheTailAfterASnapshot(t *testing.T) {
	e := newEnv(t)
	const id, steps = "snap-tail", 110 // 331 events: snapshots at 100, 200, 300
	first := e.node(worker.Options{}, snapLoop, snapStep)
	commits := e.snapshotSaga(id, steps)
	// One at each of events 100, 200 and 300, unless a later one got
	// there first (a snapshot never goes back).
	if written := first.Stats().SnapshotsWritten; written < 1 || written > 3 {
		t.Fatalf("%d snapshots written, want 1 to 3 (events 100, 200, 300)", written)
	}
	snap := e.storedSnapshot(id)
	tail := 0
	for _, c := range commits {
		if c.Seq >= snap.LastSeq {
			tail++
		}
	}
	if snap.NextEventID <= 300 || tail > len(commits)/4 {
		t.Fatalf("snapshot at event %d leaves %d of %d commits to read", snap.NextEventID, tail, len(commits))
	}
	if err := first.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}

	const prefix = "_INBOX_snap_describe"
	nc, err := e.srv.Connect(nats.CustomInboxPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	fresh, err := saga.NewClient(nc, saga.ClientOptions{Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fresh.Close)
	reads := watchHistoryReads(t, e.srv, nc, prefix, id)
	d, err := fresh.Describe(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if got := reads.read(); got != tail {
		t.Fatalf("describe read %d commits, want the %d from the snapshot on (of %d)", got, tail, len(commits))
	}
	if want := fullDescription(t, id, commits); !reflect.DeepEqual(d, want) {
		t.Fatalf("describe from the snapshot:\n got %+v\nwant %+v", d, want)
	}
	// The same through a whole history read, for comparison: the count
	// is the watcher's, not an artefact of it.
	if _, err := fresh.History(e.ctx, id); err != nil {
		t.Fatal(err)
	}
	if got := reads.read(); got != len(commits) {
		t.Fatalf("history read %d commits, want %d", got, len(commits))
	}

	e.node(worker.Options{}, snapLoop, snapStep)
	if err := fresh.Signal(e.ctx, id, "finish", struct{}{}); err != nil {
		t.Fatal(err)
	}
	done, err := fresh.Wait(e.ctx, id)
	if err != nil || done.Status != saga.StatusCompleted {
		t.Fatalf("saga after the restart: %+v, %v", done, err)
	}
}

// logCapture keeps what a logger writes.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logCapture) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logCapture) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A snapshot that is damaged, another saga's, or taken beyond the
// history is passed over with a warning, and describe gives what the
// whole history gives.
func TestDescribePassesOverBadSnapshots(t *testing.T) {
	e := newEnv(t)
	const id, other = "snap-bad", "snap-other"
	e.node(worker.Options{Snapshots: &stream.SnapshotConfig{Interval: 10}}, snapLoop, snapStep)
	commits := e.snapshotSaga(id, 12)
	otherCommits := e.snapshotSaga(other, 12)
	kv := e.snapshotsBucket()
	good, err := kv.Get(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := kv.Get(e.ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	state := e.storedSnapshot(id)
	state.LastSeq = otherCommits[len(otherCommits)-1].Seq + 100
	beyond, err := stream.EncodeSnapshot(state)
	if err != nil {
		t.Fatal(err)
	}
	wrongSum := bytes.Replace(good.Value(), []byte("snap-loop"), []byte("snap-lool"), 1)
	if bytes.Equal(wrongSum, good.Value()) {
		t.Fatal("the workflow type is not in the snapshot")
	}
	log := &logCapture{}
	cl, err := saga.NewClient(e.srv.Conn(), saga.ClientOptions{Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	want := fullDescription(t, id, commits)
	for _, c := range []struct {
		name, says string
		value      []byte
	}{
		{"garbage", "snapshot corrupt", []byte("garbage, not msgpack")},
		{"wrong checksum", "checksum", wrongSum},
		{"another saga's", `of saga \"snap-other\"`, foreign.Value()},
		{"taken beyond the history", "does not match the history", beyond},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Deleted first: no older snapshot to fall back on.
			if err := kv.Delete(e.ctx, id); err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(e.ctx, id, c.value); err != nil {
				t.Fatal(err)
			}
			before := strings.Count(log.String(), "level=WARN")
			d, err := cl.Describe(e.ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d, want) {
				t.Fatalf("describe:\n got %+v\nwant %+v", d, want)
			}
			lines := strings.Split(log.String(), "\n")
			if strings.Count(log.String(), "level=WARN") != before+1 || !strings.Contains(lines[len(lines)-2], c.says) ||
				!strings.Contains(lines[len(lines)-2], "saga_id="+id) {
				t.Fatalf("want one warning saying %q, logged:\n%s", c.says, log)
			}
		})
	}
}

// With interval 0 a node writes no snapshot; describe reads the history.
func TestSnapshotIntervalZeroWritesNone(t *testing.T) {
	e := newEnv(t)
	n := e.node(worker.Options{Snapshots: &stream.SnapshotConfig{Interval: 0}}, snapLoop, snapStep)
	commits := e.snapshotSaga("snap-none", 40) // 121 events: past 100
	if _, err := e.snapshotsBucket().Get(e.ctx, "snap-none"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("snapshot with interval 0: %v, want none", err)
	}
	if st := n.Stats(); st.SnapshotsWritten != 0 || st.SnapshotWriteFailures != 0 {
		t.Fatalf("stats %+v, want no snapshot written or tried", st)
	}
	d, err := e.cl.Describe(e.ctx, "snap-none")
	if err != nil || !reflect.DeepEqual(d, fullDescription(t, "snap-none", commits)) {
		t.Fatalf("describe: %+v, %v", d, err)
	}
}

// The bucket keeps max_snapshots snapshots per saga, the newest; a node
// started with another setting does not change it, and follows it.
func TestMaxSnapshotsIsTheBucketsHistory(t *testing.T) {
	e := newEnv(t)
	first := e.node(worker.Options{Snapshots: &stream.SnapshotConfig{Interval: 10, MaxSnapshots: 2}}, snapLoop, snapStep)
	e.snapshotSaga("snap-kept", 20) // 61 events: snapshots at 10, 20 … 60
	kv := e.snapshotsBucket()
	check := func(id string) {
		t.Helper()
		status, err := kv.Status(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if status.History() != 2 {
			t.Fatalf("bucket history %d, want 2", status.History())
		}
		history, err := kv.History(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(history) != 2 {
			t.Fatalf("%d snapshots of %s kept, want 2", len(history), id)
		}
		older, _ := stream.SnapshotSeq(id, history[0].Value())
		newer, _ := stream.SnapshotSeq(id, history[1].Value())
		if older == 0 || newer <= older {
			t.Fatalf("kept snapshots taken at sequences %d then %d, want two, in order", older, newer)
		}
	}
	if n := first.Stats().SnapshotsWritten; n < 6 {
		t.Fatalf("%d snapshots written, want at least 6", n)
	}
	check("snap-kept")

	if err := first.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	second := e.node(worker.Options{Snapshots: &stream.SnapshotConfig{Interval: 10, MaxSnapshots: 9}}, snapLoop, snapStep)
	e.snapshotSaga("snap-kept-2", 20)
	if second.Stats().SnapshotsWritten < 6 {
		t.Fatalf("the second node wrote %d snapshots, want at least 6", second.Stats().SnapshotsWritten)
	}
	check("snap-kept-2")
}

// A node refuses a snapshot setting it cannot use.
func TestSnapshotOptionsAreValidated(t *testing.T) {
	e := newEnv(t)
	for _, bad := range []stream.SnapshotConfig{{Interval: -1}, {Interval: 100, MaxSnapshots: 65}} {
		_, err := worker.New(e.srv.Conn(), saga.NewRegistry(), worker.Options{Snapshots: &bad})
		if !errors.Is(err, saga.KindConfiguration) {
			t.Errorf("%+v: got %v, want a configuration error", bad, err)
		}
	}
}
