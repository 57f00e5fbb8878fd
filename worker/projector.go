package worker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jetsaga/saga/stream"
)

// Projection receives every history commit, in batches, to keep a
// projection of the sagas (package pgarchive is one). Apply must be
// idempotent: a commit may come again, and commits of different sagas come
// in any order.
type Projection interface {
	Apply(ctx context.Context, commits []stream.StoredCommit) error
}

// projectorName is the durable consumer of every history stream that
// feeds the projection; nodes with a projection share it.
const projectorName = "saga-projector"

// Batching of the projection: a batch is written when it holds
// projectionBatch commits, or projectionWait after its first.
const (
	projectionBatch = 256
	projectionWait  = 5 * time.Millisecond
)

// projector hands the commits of the projector consumer to the
// projection, a batch at a time: each handler adds its commit to the
// batch being filled and waits for the batch to be written. The first
// handler of a batch writes it, so there is no goroutine of its own.
type projector struct {
	n *Node
	p Projection

	mu  sync.Mutex
	cur *projectionBatchState

	// Failed batch writes since the last report.
	failMu     sync.Mutex
	failed     int
	reportedAt time.Time
}

// failureReportEvery spaces the reports of failing projection writes.
const failureReportEvery = 10 * time.Second

// reportFailure logs a failed batch write, at most once per
// failureReportEvery, with the count of those since the last report.
func (h *projector) reportFailure(err error) {
	h.failMu.Lock()
	defer h.failMu.Unlock()
	h.failed++
	if time.Since(h.reportedAt) < failureReportEvery {
		return
	}
	h.n.log.Warn("projection writes are failing; their commits come back later, sagas run on", "err", err, "failed_batches", h.failed)
	h.failed, h.reportedAt = 0, time.Now()
}

type projectionBatchState struct {
	commits []stream.StoredCommit
	full    chan struct{} // closed when the batch holds projectionBatch commits
	done    chan struct{} // closed once written; err says how
	err     error
}

func (h *projector) handle(ctx context.Context, d *delivery) outcome {
	n := h.n
	_, commit, out, ok := n.decodeHistoryMessage(d)
	if !ok {
		return out
	}
	wrote, err := h.apply(ctx, stream.StoredCommit{Seq: d.meta.Sequence.Stream, Commit: commit, Data: d.msg.Data()})
	if err != nil {
		// Postgres away: the commit comes back after a backoff, and the
		// sagas run on meanwhile. Failures are reported by the projector,
		// a few times a minute at most, not once per commit.
		out := n.handlingFailed(ctx, d, "project a batch of commits", err)
		if out.kind == outcomeNak {
			if wrote {
				h.reportFailure(err)
			}
			out.err = nil
		}
		return out
	}
	return ack()
}

// apply adds c to the batch being filled and returns once that batch is
// written; wrote reports whether this call wrote it.
func (h *projector) apply(ctx context.Context, c stream.StoredCommit) (wrote bool, err error) {
	h.mu.Lock()
	b := h.cur
	leader := b == nil
	if leader {
		b = &projectionBatchState{full: make(chan struct{}), done: make(chan struct{})}
		h.cur = b
	}
	b.commits = append(b.commits, c)
	if len(b.commits) >= projectionBatch {
		h.cur = nil
		close(b.full)
	}
	h.mu.Unlock()
	if leader {
		wait := time.NewTimer(projectionWait)
		select {
		case <-b.full:
		case <-wait.C:
		case <-ctx.Done():
		}
		wait.Stop()
		h.mu.Lock()
		if h.cur == b {
			h.cur = nil // closed to newcomers: they start the next batch
		}
		h.mu.Unlock()
		b.err = h.write(ctx, b.commits)
		close(b.done)
	}
	<-b.done // the leader is a handler too: it returns once it wrote the batch
	return leader, b.err
}

// projectionTimeout bounds the write of one batch: a Postgres that hangs
// (a black-holed connection, a lock never granted) fails the batch, whose
// commits come back later, instead of holding every projector slot.
const projectionTimeout = 20 * time.Second

// write applies a batch within projectionTimeout; a panic in the
// projection is an error of the batch, so that its waiters are released.
func (h *projector) write(ctx context.Context, commits []stream.StoredCommit) (err error) {
	ctx, cancel := context.WithTimeout(ctx, projectionTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("projection panicked: %v", p)
		}
	}()
	return h.p.Apply(ctx, commits)
}
