package stream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newStore opens a store on a fresh server (adjust may change its options)
// and sets up the engine's streams.
func newStore(t *testing.T, adjust ...func(*embeddednats.Options)) (*stream.Store, *nats.Conn) {
	t.Helper()
	srv := natstest.Start(t, adjust...)
	nc := srv.Conn()
	st, err := stream.Open(nc, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	return st, nc
}

func started(sagaID string, requestID string) *stream.Commit {
	return &stream.Commit{SagaID: sagaID, WorkflowType: "order", Events: []stream.Event{{
		ID: 0, Type: stream.WorkflowExecutionStarted, Time: time.Now(),
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "order", Version: 1, RequestID: requestID},
	}}}
}

func scheduled(sagaID string, id uint64, activity string) *stream.Commit {
	return &stream.Commit{SagaID: sagaID, WorkflowType: "order", Events: []stream.Event{{
		ID: id, Type: stream.ActivityTaskScheduled, Time: time.Now(),
		Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: activity},
	}}}
}

func TestAppendWithExpectedSequence(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()

	seq, err := st.Append(ctx, started("s1", "r1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// A second start at "must not exist" is refused.
	if _, err := st.Append(ctx, started("s1", "r2"), 0); !errors.Is(err, stream.ErrConcurrency) {
		t.Fatalf("second start: got %v, want ErrConcurrency", err)
	}
	// A stale expected sequence is refused; the right one is accepted.
	if _, err := st.Append(ctx, scheduled("s1", 1, "a"), seq+100); !errors.Is(err, stream.ErrConcurrency) {
		t.Fatalf("stale append: got %v, want ErrConcurrency", err)
	}
	seq2, err := st.Append(ctx, scheduled("s1", 1, "a"), seq)
	if err != nil {
		t.Fatal(err)
	}
	commits, err := st.Read(ctx, "s1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != 2 || commits[0].Seq != seq || commits[1].Seq != seq2 {
		t.Fatalf("read back %d commits: %+v", len(commits), commits)
	}
	state, err := stream.Fold(commits)
	if err != nil {
		t.Fatal(err)
	}
	if state.NextEventID != 2 || state.LastSeq != seq2 || len(state.OpenActivities) != 1 || state.Status != stream.StatusRunning {
		t.Fatalf("state %+v", state)
	}
}

// A writer whose publish landed but whose reply was lost retries the very
// same commit: that must count as success at the original sequence, not as
// a conflict, and must not write a second copy.
func TestAppendRetryOfLandedCommitIsRecognised(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	c := started("s2", "r1")
	seq, err := st.Append(ctx, c, 0)
	if err != nil {
		t.Fatal(err)
	}
	again, err := st.Append(ctx, c, 0)
	if err != nil {
		t.Fatalf("retry of the same commit: %v", err)
	}
	if again != seq {
		t.Fatalf("retry landed at %d, original at %d", again, seq)
	}
	commits, err := st.Read(ctx, "s2", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != 1 {
		t.Fatalf("%d commits after a retried append, want 1", len(commits))
	}
}

func TestRacingAppendsExactlyOneWins(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	base, err := st.Append(ctx, started("race", "r"), 0)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 16
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, errs[i] = st.Append(ctx, scheduled("race", 1, "w"+strings.Repeat("x", i)), base)
		})
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, stream.ErrConcurrency):
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d writers won, want exactly 1", wins)
	}
	commits, err := st.Read(ctx, "race", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != 2 {
		t.Fatalf("%d commits, want 2", len(commits))
	}
}

func TestReadPagesThroughLongHistories(t *testing.T) {
	st, _ := newStore(t)
	ctx := context.Background()
	seq, err := st.Append(ctx, started("long", "r"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Interleave another saga so that the subject filter matters.
	if _, err := st.Append(ctx, started("other", "r"), 0); err != nil {
		t.Fatal(err)
	}
	const n = 600 // more than two read batches
	for i := 1; i <= n; i++ {
		if seq, err = st.Append(ctx, scheduled("long", uint64(i), "a"), seq); err != nil {
			t.Fatal(err)
		}
	}
	commits, err := st.Read(ctx, "long", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(commits) != n+1 {
		t.Fatalf("read %d commits, want %d", len(commits), n+1)
	}
	for i, c := range commits {
		if c.Commit.FirstEventID() != uint64(i) {
			t.Fatalf("commit %d has first event %d", i, c.Commit.FirstEventID())
		}
	}
	tail, err := st.Read(ctx, "long", commits[n-1].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if len(tail) != 1 || tail[0].Seq != seq {
		t.Fatalf("tail read: %+v", tail)
	}
	last, err := st.Last(ctx, "long")
	if err != nil {
		t.Fatal(err)
	}
	if last.Seq != seq {
		t.Fatalf("last seq %d, want %d", last.Seq, seq)
	}
	if _, err := st.Last(ctx, "missing"); !errors.Is(err, stream.ErrNotFound) {
		t.Fatalf("last of missing saga: %v", err)
	}
	if got, err := st.Read(ctx, "missing", 0); err != nil || len(got) != 0 {
		t.Fatalf("read of missing saga: %v, %d commits", err, len(got))
	}
}

func TestForeignMessageOnHistorySubjectIsACodecError(t *testing.T) {
	st, nc := newStore(t)
	ctx := context.Background()
	cfg := st.Config()
	if _, err := st.JetStream().Publish(ctx, cfg.HistorySubject("junk"), []byte("not msgpack at all")); err != nil {
		t.Fatal(err)
	}
	_, err := st.Read(ctx, "junk", 0)
	var ce *stream.CodecError
	if !errors.As(err, &ce) || !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("got %v, want a CodecError wrapping ErrCodec", err)
	}
	// A commit that names another saga is refused too.
	data, err := started("someone-else", "r").Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.JetStream().Publish(ctx, cfg.HistorySubject("victim"), data); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Read(ctx, "victim", 0); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("got %v, want ErrCodec", err)
	}
	_ = nc
}

func TestAppendRefusesOversizedCommit(t *testing.T) {
	st, _ := newStore(t)
	c := started("big", "r")
	c.Events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs).Input = stream.Payload(mustMarshal(t, strings.Repeat("x", 2<<20)))
	if _, err := st.Append(context.Background(), c, 0); !errors.Is(err, stream.ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

func TestAppendWithoutStreamsSaysSo(t *testing.T) {
	srv := natstest.Start(t)
	st, err := stream.Open(srv.Conn(), stream.Config{Prefix: "nostreams"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := st.Append(ctx, started("x", "r"), 0); !errors.Is(err, stream.ErrNoStream) {
		t.Fatalf("got %v, want ErrNoStream", err)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkAppend measures sequential appends with the expected-last-
// subject-sequence check to one saga, each waiting for its ack, with the
// server syncing to disk periodically ("interval") or on every write.
func BenchmarkAppend(b *testing.B) {
	for _, always := range []bool{false, true} {
		name := "sync=interval"
		if always {
			name = "sync=always"
		}
		b.Run(name, func(b *testing.B) {
			srv, err := embeddednats.Start(embeddednats.Options{Dir: b.TempDir(), SyncAlways: always})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Shutdown()
			nc, err := srv.Connect()
			if err != nil {
				b.Fatal(err)
			}
			defer nc.Close()
			st, err := stream.Open(nc, stream.Config{})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			ctx := context.Background()
			if err := st.EnsureStreams(ctx, nil); err != nil {
				b.Fatal(err)
			}
			seq, err := st.Append(ctx, started("bench", "r"), 0)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				if seq, err = st.Append(ctx, scheduled("bench", uint64(i+1), "a"), seq); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadHistory reads one saga's 10 commits from a stream holding
// 2,000 sagas of 10 commits each, with the batched direct get.
func BenchmarkReadHistory(b *testing.B) {
	srv := natstest.Start(b)
	st, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.EnsureStreams(ctx, nil); err != nil {
		b.Fatal(err)
	}
	const sagas, commits = 2000, 10
	last := make([]uint64, sagas)
	for c := range commits {
		for s := range sagas {
			id := fmt.Sprintf("s-%d", s)
			commit := scheduled(id, uint64(c), "a")
			if c == 0 {
				commit = started(id, "r")
			}
			if last[s], err = st.Append(ctx, commit, last[s]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	for i := range b.N {
		got, err := st.Read(ctx, fmt.Sprintf("s-%d", i%sagas), 0)
		if err != nil || len(got) != commits {
			b.Fatalf("%d commits, %v", len(got), err)
		}
	}
}

// A workflow task whose commit would not fit in one message travels
// without it; the decider then reads the history up to Seq.
func TestWorkflowTaskDropsACommitTooLargeToCarry(t *testing.T) {
	st, nc := newStore(t)
	ctx := context.Background()
	c := started("wt", "r")
	small, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(st.Config().WorkflowTaskSubject("order"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PublishWorkflowTask(ctx, c, 7, small); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, int(nc.MaxPayload())) // as if the commit filled a message
	if err := st.PublishWorkflowTask(ctx, c, 8, big); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		seq       uint64
		hasCommit bool
	}{{7, true}, {8, false}} {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		task, commit, err := st.DecodeWorkflowTask(m.Data)
		if err != nil || task.Seq != want.seq || (commit != nil) != want.hasCommit || task.SagaID != "wt" || task.WorkflowType != "order" {
			t.Fatalf("task %+v commit %v err %v, want seq %d with commit %v", task, commit != nil, err, want.seq, want.hasCommit)
		}
	}
}

// ReadLatest reads what Read reads, once the leader's last commit for the
// saga is in it; a saga with no history reads as empty.
func TestReadLatestReachesTheLeadersLastCommit(t *testing.T) {
	st, _ := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if commits, err := st.ReadLatest(ctx, "absent"); err != nil || len(commits) != 0 {
		t.Fatalf("absent saga: %d commits, %v", len(commits), err)
	}
	seq, err := st.Append(ctx, started("latest", "r"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Append(ctx, started("between", "r"), 0); err != nil {
		t.Fatal(err)
	}
	last, err := st.Append(ctx, scheduled("latest", 1, "a"), seq)
	if err != nil {
		t.Fatal(err)
	}
	commits, err := st.ReadLatest(ctx, "latest")
	if err != nil || len(commits) != 2 || commits[1].Seq != last {
		t.Fatalf("read %d commits (%v), want 2 ending at %d", len(commits), err, last)
	}
	if _, err := st.ReadLatest(ctx, "bad.id"); !errors.Is(err, stream.ErrInvalidID) {
		t.Fatalf("invalid id: %v", err)
	}
}

// A task is queued at most once while it exists, not only for the
// duplicate window: before, a scheduling commit dispatched again after the
// window (a dispatcher that died after publishing, nobody back within the
// window) queued a second task and the activity ran twice at once. A copy
// with another Nats-Msg-Id is what the server sees once the window forgot
// the first.
func TestTaskIsQueuedOnceWhileItExists(t *testing.T) {
	st, nc := newStore(t)
	ctx := context.Background()
	task := stream.ActivityTask{SagaID: "t1", ScheduledEventID: 3, ActivityType: "charge", Attempt: 1, ScheduledAt: time.Now()}
	if queued, err := st.PublishTask(ctx, task); err != nil || !queued {
		t.Fatal(queued, err)
	}
	late := task
	late.Attempt = 2 // another message id: no de-duplication applies
	if queued, err := st.PublishTask(ctx, late); err != nil || queued {
		t.Fatalf("publishing a task that is queued already is a no-op, got %v, %v", queued, err)
	}
	if got, _, found, err := st.QueuedTask(ctx, "charge", "t1", 3); err != nil || !found || got.Attempt != 1 {
		t.Fatalf("queued task %+v %v %v", got, found, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := js.Stream(ctx, st.Config().TaskStream())
	if err != nil {
		t.Fatal(err)
	}
	subject := st.Config().TaskSubject("charge", "t1", 3)
	info, err := tasks.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[subject]; n != 1 {
		t.Fatalf("%d tasks queued for one activity, want 1", n)
	}
	msg, err := tasks.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	got, err := st.DecodeTask(msg.Data)
	if err != nil || got.Attempt != 1 {
		t.Fatalf("queued task: %+v %v", got, err)
	}
	// Once the task is gone (its outcome recorded), the next attempt's
	// task can be queued.
	if err := tasks.DeleteMsg(ctx, msg.Sequence); err != nil {
		t.Fatal(err)
	}
	if queued, err := st.PublishTask(ctx, late); err != nil || !queued {
		t.Fatal(queued, err)
	}
	if msg, err = tasks.GetLastMsgForSubject(ctx, subject); err != nil {
		t.Fatal(err)
	}
	if got, err = st.DecodeTask(msg.Data); err != nil || got.Attempt != 2 {
		t.Fatalf("task after the first went: %+v %v", got, err)
	}
}
