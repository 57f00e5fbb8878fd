package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
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
		err := n.store.PublishTask(ctx, task)
		if isPermanent(err) {
			// A task that can never be published (an activity type that is
			// not a subject token, say, from a foreign writer): the workflow
			// gets the error as the activity's failure instead of a saga
			// that waits forever.
			log.Error("activity task cannot be published; failing the activity", "saga_id", sagaID, "err", err)
			err = n.failUnpublishable(ctx, sagaID, task, err)
		}
		if err != nil {
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
	req := advanceRequest{sagaID: sagaID, delivered: delivered, decide: true, lastChance: meta.NumDelivered >= patientDeliveries}
	if err := n.advance(ctx, req); err != nil {
		n.retryLater(msg, meta, log.With("saga_id", sagaID), "decide", err)
		return
	}
	_ = msg.Ack()
}

func isPermanent(err error) bool {
	return errors.Is(err, stream.ErrInvalidID) || errors.Is(err, stream.ErrCodec) || errors.Is(err, stream.ErrTooLarge)
}

// failUnpublishable records a non-retryable failure for an activity whose
// task cannot be published.
func (n *Node) failUnpublishable(ctx context.Context, sagaID string, task stream.ActivityTask, cause error) error {
	failure := activityFailure(task, 0, &stream.Failure{Kind: string(saga.KindValidation), Message: cause.Error(), NonRetryable: true})
	return n.advance(ctx, advanceRequest{sagaID: sagaID, needEvent: &task.ScheduledEventID, inputs: func(st *stream.State) []stream.Event {
		if _, open := st.OpenActivities[task.ScheduledEventID]; !open {
			return nil
		}
		return []stream.Event{{Type: stream.ActivityTaskFailed, Attrs: &stream.ActivityTaskFailedAttrs{
			ScheduledEventID: task.ScheduledEventID, Failure: failure}}}
	}})
}

// patientDeliveries is how many times a commit is delivered before a
// failure that might pass (a deadlock, a workflow type this node lacks)
// blocks the saga. With nakDelay that is about three seconds, and other
// nodes get the commit in between.
const patientDeliveries = 5

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
