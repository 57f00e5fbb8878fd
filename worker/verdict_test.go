package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// A read that lacks the event a message refers to is a verdict only when
// nothing says the history holds more: not when the message itself was
// read at a later sequence (a leader just elected can answer from behind,
// as the fault harness met), and not on a message's first deliveries.
func TestMissingEventVerdictNeedsConfirmation(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := New(srv.Conn(), saga.NewRegistry(), Options{Logger: natstest.Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.store.EnsureStreams(ctx, natstest.Logger()); err != nil {
		t.Fatal(err)
	}
	start := &stream.Commit{SagaID: "v", WorkflowType: "w", Events: []stream.Event{{ID: 0, SagaID: "v", Type: stream.WorkflowExecutionStarted,
		Time: time.Now(), Category: stream.CategoryOf(stream.WorkflowExecutionStarted), Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w"}}}}
	seq, err := n.store.Append(ctx, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	behind := &behindError{have: seq}
	if err := n.confirmBehind(ctx, "v", behind); !errors.Is(err, errNotInHistory) {
		t.Fatalf("the leader holds nothing newer: %v, want errNotInHistory", err)
	}
	seen := withSeenSeq(ctx, "v", seq+10)
	if err := n.confirmBehind(seen, "v", behind); errors.Is(err, errNotInHistory) || !errors.Is(err, stream.ErrUnavailable) {
		t.Fatalf("a message read at a later sequence: %v, want a transient error", err)
	}
	if err := n.confirmBehind(withSeenSeq(ctx, "other", seq+10), "v", behind); !errors.Is(err, errNotInHistory) {
		t.Fatalf("a sequence seen of another saga counts: %v", err)
	}
	for delivered, want := range map[uint64]outcomeKind{1: outcomeNak, notInHistoryConfirmations - 1: outcomeNak, notInHistoryConfirmations: outcomeDeadLetter} {
		d := &delivery{meta: &jetstream.MsgMetadata{NumDelivered: delivered}, base: natstest.Logger()}
		if out := n.handlingFailed(ctx, d, "test", errNotInHistory); out.kind != want {
			t.Errorf("delivery %d of a message whose event is missing: outcome %v, want %v", delivered, out.kind, want)
		}
	}
}
