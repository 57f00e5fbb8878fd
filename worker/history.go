package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// handleCommit processes one history commit delivered by the workflow task
// queue: it publishes the tasks of the activities the commit schedules,
// then lets the workflow decide if it has something new to decide. It acks
// only when both are done; both are idempotent, so a redelivery is safe.
func (n *Node) handleCommit(ctx context.Context, msg jetstream.Msg) {
	meta, err := metadata(msg)
	if err != nil {
		n.log.Error("history delivery without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	log := n.log.With("subject", msg.Subject(), "stream_seq", meta.Sequence.Stream)
	sagaID, err := n.opts.Stream.SagaIDFromSubject(msg.Subject())
	if err != nil {
		log.Error("history message on an invalid subject; dropped", "err", err)
		_ = msg.TermWithReason("invalid saga subject")
		return
	}
	commit, err := n.store.DecodeDelivered(sagaID, msg.Subject(), meta.Sequence.Stream, msg.Data())
	if err != nil {
		// Not written by the engine. Redelivering cannot help; the saga's
		// history now shows the bad message to anyone who reads it.
		log.Error("undecodable history message; dropped", "saga_id", sagaID, "err", err)
		_ = msg.TermWithReason("undecodable commit")
		return
	}
	for _, e := range commit.Events {
		task, ok := stream.TaskFor(e)
		if !ok {
			continue
		}
		if err := n.store.PublishTask(ctx, task); err != nil {
			n.retryLater(msg, meta, log, "publish activity task", err)
			return
		}
		n.stats.tasksPublished.Add(1)
	}
	if stream.IsTerminal(commit.Events[len(commit.Events)-1].Type) {
		_ = msg.Ack()
		return
	}
	delivered := &stream.StoredCommit{Seq: meta.Sequence.Stream, Commit: commit}
	if err := n.advance(ctx, advanceRequest{sagaID: sagaID, delivered: delivered, decide: true}); err != nil {
		n.retryLater(msg, meta, log.With("saga_id", sagaID), "decide", err)
		return
	}
	_ = msg.Ack()
}

// retryLater asks for redelivery after a transient failure, with a delay
// growing with the number of deliveries. When the node is stopping it
// leaves the message alone: it is redelivered elsewhere after AckWait.
func (n *Node) retryLater(msg jetstream.Msg, meta *jetstream.MsgMetadata, log *slog.Logger, what string, err error) {
	if n.runCtx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	delay := nakDelay(meta.NumDelivered)
	log.Warn(what+" failed; will retry", "err", err, "delivery", meta.NumDelivered, "retry_in", delay.Round(time.Millisecond))
	_ = msg.NakWithDelay(delay)
}
