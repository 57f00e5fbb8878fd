package stream

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga/internal/natstest"
)

// setUpStore opens a store on a fresh server and sets up the streams.
func setUpStore(t *testing.T) *Store {
	t.Helper()
	st, err := Open(natstest.Start(t).Conn(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

// A batched read whose replies lose one on the way (a slow consumer drop on
// the shared reply subscription) must say so, so that it is read again:
// before, the batch came back short, and a node took the gap for a message
// no engine wrote (the history "unreadable", its work dropped for good).
func TestTornBatchReadIsDetected(t *testing.T) {
	st := setUpStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Ten commits of one saga, interleaved with another saga's, so that the
	// saga's sequences are not contiguous in the stream.
	last := map[string]uint64{}
	for i := range 10 {
		for _, id := range []string{"torn", "noise"} {
			e := Event{ID: uint64(i), Type: ActivityTaskScheduled, Time: time.Now(), Attrs: &ActivityTaskScheduledAttrs{ActivityType: "a"}}
			if i == 0 {
				e = Event{ID: 0, Type: WorkflowExecutionStarted, Time: time.Now(), Attrs: &WorkflowExecutionStartedAttrs{WorkflowType: "order"}}
			}
			seq, err := st.Append(ctx, &Commit{SagaID: id, WorkflowType: "order", Events: []Event{e}}, last[id])
			if err != nil {
				t.Fatal(err)
			}
			last[id] = seq
		}
	}

	for _, drop := range []struct {
		name string
		nth  int32 // which reply of the batch is lost (1-based); 11 is the end of batch
	}{{"a message in the middle", 4}, {"the first message", 1}, {"the last message", 10}, {"the end of batch", 11}} {
		t.Run(drop.name, func(t *testing.T) {
			var seen atomic.Int32
			st.reader.mu.Lock()
			st.reader.dropReply = func(*nats.Msg) bool { return seen.Add(1) == drop.nth }
			st.reader.mu.Unlock()
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			defer rcancel()
			commits, err := st.Read(rctx, "torn", 0)
			// A lost end of batch leaves the read waiting for it: it ends
			// with its deadline, an error that is retried as well.
			if !errors.Is(err, ErrTornRead) && !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("read with a lost reply: %d commits, %v", len(commits), err)
			}
			if !Transient(err) {
				t.Fatalf("a torn read is not retried: %v", err)
			}
			st.reader.mu.Lock()
			st.reader.dropReply = nil
			st.reader.mu.Unlock()
			commits, err = st.Read(ctx, "torn", 0)
			if err != nil || len(commits) != 10 {
				t.Fatalf("read again: %d commits, %v", len(commits), err)
			}
		})
	}
}

// A read that no server answers is worth a retry while the stream exists
// (its servers may be starting or electing): before, it was taken for a
// missing stream, a permanent error, and an activity's result in hand was
// recorded as a failure instead of waiting the outage out.
func TestReadNoServerAnswersIsTransientUnlessTheStreamIsMissing(t *testing.T) {
	st := setUpStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The task stream serves no direct gets: nobody answers, the stream is
	// there.
	_, _, err := st.directGet(ctx, st.cfg.TaskStream(), directGetRequest{LastBySubj: st.cfg.WorkflowTaskSubject("x")})
	if !errors.Is(err, ErrUnavailable) || !Transient(err) {
		t.Fatalf("no responders for an existing stream: %v", err)
	}
	_, _, err = st.directGet(ctx, "SAGA_NOT_THERE", directGetRequest{LastBySubj: "x"})
	if !errors.Is(err, ErrNoStream) || Transient(err) {
		t.Fatalf("no responders for a missing stream: %v", err)
	}
}
