package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jetsaga/saga/stream"
)

// dispatcher handles every history commit, on the durable consumer all
// nodes share: it carries out each event's effects (see effects) and, if the
// commit holds inputs the workflow has not decided on, decides on them when
// this node runs the workflow, or else publishes a workflow task for the
// nodes that do. The commit is acked only when all that is done; effects
// are idempotent and deciding is idempotent, so a redelivery is safe.
type dispatcher struct{ n *Node }

var _ givingBack = dispatcher{}

// giveBack records, for a commit the node returns unhandled on its first
// delivery (it stops), that no attempt of the activities it schedules
// started: its redelivery would otherwise count one that may have run
// eagerly (see dispatchActivity).
func (h dispatcher) giveBack(ctx context.Context, d *delivery) {
	n := h.n
	if d.meta.NumDelivered != 1 {
		return
	}
	sagaID, err := n.store.Config().SagaIDFromSubject(d.msg.Subject())
	if err != nil {
		return
	}
	commit, err := n.store.DecodeDelivered(sagaID, d.msg.Subject(), d.meta.Sequence.Stream, d.msg.Data())
	if err != nil {
		return
	}
	for _, e := range commit.Events {
		task, ok := stream.TaskFor(e)
		if !ok || !fastEligible(task.Options) {
			continue
		}
		rec := attemptRecord{Started: 0, Node: n.opts.NodeName, At: n.clock.Now()}
		if err := n.attempts.put(ctx, sagaID, e.ID, rec, 0, false); err != nil && !errors.Is(err, errRecordMoved) {
			d.logger().Warn("could not record a commit given back; its redelivery counts an attempt of its activities", "err", err)
		}
	}
}

func (h dispatcher) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	sagaID, commit, out, ok := n.decodeHistoryMessage(d)
	if !ok {
		return out
	}
	// The commit being handled exists at its sequence, whatever a read
	// taken meanwhile says.
	ctx = withSeenSeq(ctx, sagaID, d.meta.Sequence.Stream)
	if d.meta.NumDelivered > 1 {
		ctx = withRedispatch(ctx)
	}
	eager := n.eagerEligible(d, commit)
	// Every effect, even after one failed: they are idempotent, and one
	// that fails must not hold back the others until the redelivery.
	var errs []error
	for _, e := range commit.Events {
		if _, ok := eager[e.ID]; ok {
			continue // run here, or queued, below
		}
		if effect := effects[e.Type]; effect != nil {
			if err := effect(ctx, n, e); err != nil {
				errs = append(errs, fmt.Errorf("event %d %s: %w", e.ID, e.Type, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Nothing ran: the activities go as tasks, so that the commit's
		// redelivery finds them queued (see dispatchActivity).
		return n.queueEager(ctx, d, eager, n.handlingFailed(ctx, d, "carry out effects", err))
	}
	out = h.decide(ctx, d, sagaID, commit)
	switch {
	case len(eager) == 0:
	case out.kind != outcomeAck:
		out = n.queueEager(ctx, d, eager, out)
	default:
		out = n.runEagerly(ctx, d, eager)
	}
	// Last: the decision and the activities are not held up by it (a
	// handed-off delivery is finished by its runs, whatever happens here).
	n.snapshotAfter(ctx, sagaID, commit)
	return out
}

// decide makes the decision a commit holding undecided inputs needs: here
// when this node runs the workflow, or else through a workflow task.
func (h dispatcher) decide(ctx context.Context, d *delivery, sagaID string, commit *stream.Commit) outcome {
	n := h.n
	if !commit.NeedsDecision() {
		return ack()
	}
	if _, ok := n.reg.Workflow(commit.WorkflowType); ok {
		// Saves a workflow task's round trip.
		delivered := &stream.StoredCommit{Seq: d.meta.Sequence.Stream, Commit: commit}
		err := n.advance(ctx, advanceRequest{sagaID: sagaID, delivered: delivered, decide: true})
		if err == nil {
			return ack()
		}
		if !isNewerCode(err) {
			return n.handlingFailed(ctx, d, "decide", err)
		}
		// Newer code wrote this history, or this node lacks its payload
		// key: a workflow task reaches the nodes that run the workflow,
		// the ones that can among them.
		if errors.Is(err, errCannotOpen) {
			d.logger().Error("leaving the decision to a node that holds the payload key", "err", err)
		} else {
			d.logger().Info("leaving the decision to a node with newer workflow code", "err", err)
		}
	}
	if err := n.store.PublishWorkflowTask(ctx, commit, d.meta.Sequence.Stream, d.msg.Data()); err != nil {
		return n.handlingFailed(ctx, d, "publish workflow task", err)
	}
	n.stats.workflowTasksPublished.Add(1)
	return ack()
}

// decodeHistoryMessage reads a commit delivered from a history stream, for
// the consumers of every history (dispatcher, projector). When there is
// no commit to handle, ok is false and out says what becomes of the
// message: an archive marker is acked (nothing to derive or project); a
// commit written by a newer engine, or larger than this node's limit, is
// left to a node that can read it; anything else the engine did not
// write is set aside (the saga's history shows the bad message to anyone
// who reads it: describe says blocked, history_unreadable).
func (n *Node) decodeHistoryMessage(d *delivery) (sagaID string, commit *stream.Commit, out outcome, ok bool) {
	sagaID, err := n.store.Config().SagaIDFromSubject(d.msg.Subject())
	if err != nil {
		return "", nil, deadLetter("history message on an invalid subject", err), false
	}
	d.with(slog.String("saga_id", sagaID))
	if stream.IsArchiveMarker(d.msg.Headers()) {
		return sagaID, nil, ack(), false
	}
	commit, err = n.store.DecodeDelivered(sagaID, d.msg.Subject(), d.meta.Sequence.Stream, d.msg.Data())
	switch {
	case errors.Is(err, stream.ErrUnsupported):
		return sagaID, nil, nakAfter(unsupportedDelay(d), "decode commit (leaving it to a node that can)", err), false
	case err != nil:
		return sagaID, nil, deadLetter("undecodable history message", err), false
	}
	return sagaID, commit, outcome{}, true
}

// handlingFailed is the outcome of a message whose handling failed: left
// alone when the node stops, left to newer nodes when the history holds
// what only they read, set aside when the saga's history or the message
// itself can never be handled, retried later otherwise.
func (n *Node) handlingFailed(ctx context.Context, d *delivery, what string, err error) outcome {
	switch {
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		return leave()
	case errors.Is(err, stream.ErrUnsupported):
		return nakAfter(unsupportedDelay(d), what+" (leaving it to a node that can read the history)", err)
	case errors.Is(err, errNotInHistory) && d.meta.NumDelivered < notInHistoryConfirmations:
		// One reading that the history lacks an event can be a replica, or
		// a leader just elected, behind the rest: set the message aside
		// only once later deliveries, seconds apart, read the same.
		return nakAfter(notInHistoryRetry, what, err)
	case isHistoryProblem(err):
		return deadLetter(what+": the saga's history cannot take it", err)
	case errors.Is(err, stream.ErrInvalidID), errors.Is(err, stream.ErrCodec):
		return deadLetter(what, err)
	}
	return retryLater(d, what, err)
}
