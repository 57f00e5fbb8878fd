package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/stream"
)

// workflowTasks handles the workflow tasks of the workflow types a node
// registers ("saga X has new events to decide on"): it brings the saga up
// to date, from the commit the task carries when the view expects it, runs
// the workflow code and appends its decision. A wake task has it replay the
// saga from scratch instead.
type workflowTasks struct{ n *Node }

// newerCodePolicy spaces the redeliveries of a decision this node leaves to
// nodes with newer workflow code.
var newerCodePolicy = backoff.Policy{Initial: time.Second, Max: 30 * time.Second}

func (h workflowTasks) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	task, commit, err := n.store.DecodeWorkflowTask(d.msg.Data())
	switch {
	case errors.Is(err, stream.ErrUnsupported):
		return nakAfter(unsupportedDelay(d), "decode workflow task (leaving it to a node that can)", err)
	case err != nil:
		return deadLetter("undecodable workflow task", err)
	case d.msg.Subject() != n.store.Config().WorkflowTaskSubject(task.WorkflowType):
		return deadLetter("workflow task does not match its subject", fmt.Errorf("task for %s on %s", task.WorkflowType, d.msg.Subject()))
	}
	d.with(slog.String("saga_id", task.SagaID), slog.String("workflow_type", task.WorkflowType))
	ctx = n.tracer.FromHeader(ctx, d.msg.Headers(), task.SagaID)
	if task.Wake {
		err = n.wakeHere(ctx, task.SagaID)
	} else {
		req := advanceRequest{sagaID: task.SagaID, decide: true}
		if commit != nil {
			req.delivered = &stream.StoredCommit{Seq: task.Seq, Commit: commit}
		} else {
			// The task was too large to carry its commit: read up to it.
			req.fresh, req.minSeq = readLatest, task.Seq
		}
		err = n.advance(ctx, req)
	}
	switch {
	case err == nil:
		return ack()
	case isNewerCode(err):
		// A rolling deploy: this node's code is older than the history.
		// Another node (with the newer code) takes the task meanwhile.
		delay := newerCodePolicy.Delay(int(d.meta.NumDelivered))
		if errors.Is(err, errCannotOpen) {
			d.logger().Error("leaving the decision to a node that holds the payload key", "err", err, "retry_in", delay.Round(time.Millisecond))
		} else {
			d.logger().Info("leaving the decision to a node with newer workflow code", "err", err, "retry_in", delay.Round(time.Millisecond))
		}
		return nakAfter(delay, "", nil)
	}
	return n.handlingFailed(ctx, d, "decide", err)
}
