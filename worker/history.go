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

// handleCommit dispatches one history commit: it publishes a task for each
// activity the commit schedules and, if the commit holds inputs the
// workflow has not decided on, decides on them when this node runs the
// workflow, or else publishes a workflow task for the nodes that do. It
// acks only when all that is done; publishing is de-duplicated and
// deciding is idempotent, so a redelivery is safe. Every node runs the
// dispatcher.
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
	if !commit.NeedsDecision() {
		_ = msg.Ack()
		return
	}
	if _, ok := n.reg.Workflow(commit.WorkflowType); ok {
		// Saves a workflow task's round trip.
		stopBeat := n.keepAlive(msg)
		defer stopBeat()
		delivered := &stream.StoredCommit{Seq: meta.Sequence.Stream, Commit: commit}
		req := advanceRequest{sagaID: sagaID, delivered: delivered, decide: true, lastChance: meta.NumDelivered >= patientDeliveries}
		if err := n.advance(ctx, req); err != nil {
			n.retryLater(msg, meta, log.With("saga_id", sagaID), "decide", err)
			return
		}
		_ = msg.Ack()
		return
	}
	if err := n.store.PublishWorkflowTask(ctx, commit, meta.Sequence.Stream, msg.Data()); err != nil {
		n.retryLater(msg, meta, log, "publish workflow task", err)
		return
	}
	n.stats.workflowTasksPublished.Add(1)
	_ = msg.Ack()
}

// handleWorkflowTask decides on a saga's new events: it brings the saga up
// to date (from the commit the task carries when the cache expects it),
// runs the workflow code and appends its decision.
func (n *Node) handleWorkflowTask(ctx context.Context, msg jetstream.Msg) {
	meta, err := metadata(msg)
	if err != nil {
		n.log.Error("workflow task delivery without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	task, commit, err := n.store.DecodeWorkflowTask(msg.Data())
	if err != nil || msg.Subject() != n.opts.Stream.WorkflowTaskSubject(task.WorkflowType) {
		n.log.Error("undecodable workflow task; dropped", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("undecodable workflow task")
		return
	}
	log := n.log.With("saga_id", task.SagaID, "workflow_type", task.WorkflowType)
	stopBeat := n.keepAlive(msg)
	defer stopBeat()
	req := advanceRequest{sagaID: task.SagaID, decide: true, lastChance: meta.NumDelivered >= patientDeliveries}
	if commit != nil {
		req.delivered = &stream.StoredCommit{Seq: task.Seq, Commit: commit}
	} else {
		// The task was too large to carry its commit: read up to it.
		req.fresh, req.minSeq = readLatest, task.Seq
	}
	if task.Wake {
		err = n.wakeHere(ctx, task.SagaID)
	} else {
		err = n.advance(ctx, req)
	}
	if err != nil {
		n.retryLater(msg, meta, log, "decide", err)
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

// patientDeliveries is how many times a workflow task is delivered before
// a failure that might pass (a deadlock under a starved CPU) blocks the
// saga. With nakDelay that is about three seconds, and other nodes get the
// task in between.
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
