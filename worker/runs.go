package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// Continue-as-new and the history limits (see docs/replay.md): a run
// that ends with continue-as-new is followed, in the same commit, by the
// next run's start; a run that grows past the fleet's history limit is
// blocked before the code's next decision is appended.

// nextRunStart is the WorkflowExecutionStarted of the run that follows
// the one events end (with WorkflowExecutionContinuedAsNew), on the state
// st the events continue. It records the version of this node's code,
// which runs the new run's first decision, and the inbox position once
// the events are recorded.
func (n *Node) nextRunStart(st *stream.State, events []stream.Event, next *replay.NextRun) (stream.Event, error) {
	wf, ok := n.reg.Workflow(st.WorkflowType)
	if !ok {
		return stream.Event{}, fmt.Errorf("%w: %s", errNotRegistered, st.WorkflowType)
	}
	end := events[len(events)-1]
	seq, epoch := st.InboxAfter(events)
	attrs := &stream.WorkflowExecutionStartedAttrs{
		WorkflowType: st.WorkflowType,
		Version:      wf.Version,
		Input:        next.Input,
		RunTimeout:   st.RunTimeout,
		Continued: &stream.RunContinuation{
			Run:                  st.Run + 1,
			PreviousEventID:      end.ID,
			PreviousStartEventID: st.RunStartEventID,
			PreviousStartSeq:     st.RunStartSeq,
			LastInboxSeq:         seq,
			LastInboxEpoch:       epoch,
			Signals:              next.Signals,
			CancelRequested:      next.CancelRequested,
		},
	}
	return stream.Event{ID: end.ID + 1, SagaID: st.SagaID, Type: stream.WorkflowExecutionStarted, Category: stream.CategoryWorkflow,
		Time: n.clock.Now(), Attrs: attrs}, nil
}

// historyTooLongError blocks a saga whose run reached the fleet's history
// limit.
type historyTooLongError struct {
	events, limitEvents uint64
	bytes, limitBytes   int64
	overBytes           bool
}

func (e *historyTooLongError) Error() string {
	what := fmt.Sprintf("%d events, the limit is %d", e.events, e.limitEvents)
	if e.overBytes {
		what = fmt.Sprintf("%d bytes, the limit is %d", e.bytes, e.limitBytes)
	}
	return "the run's history is too long: its next decision would take it to " + what +
		"; nothing was lost: raise the limit (saga-node history-limits) and wake the saga, and have the workflow continue as new (saga.ContinueAsNew) to keep its runs short"
}

// blockedRoom is what the history limits keep for the
// WorkflowExecutionBlocked event that stops a run: one event, and bytes
// for a commit of it.
const blockedRoom = 16 << 10

// historyTooLong returns the error that blocks the saga when the commit
// of inputs and decision (events, which begin with the inputs) would take
// the run past the fleet's history limit, keeping room for the blocked
// event. Inputs come from outside (a result, a signal, a timer) and are
// always recorded; the limit stops the code's decisions, except one that
// ends the run: that one stops the growth for good. Bytes are counted as
// the commit encodes, once the run comes within one message of the limit.
func (n *Node) historyTooLong(st *stream.State, inputs, events []stream.Event) error {
	if len(events) == len(inputs) {
		return nil
	}
	if last := events[len(events)-1]; stream.IsTerminal(last.Type) || last.Type == stream.WorkflowExecutionStarted {
		return nil
	}
	l := n.historyLimits()
	e := &historyTooLongError{events: st.RunEvents() + uint64(len(events)), limitEvents: l.LimitEvents, limitBytes: l.LimitBytes}
	if e.events+1 > l.LimitEvents {
		return e
	}
	room := l.LimitBytes - blockedRoom
	if st.RunBytes+int64(n.store.Config().MaxMsgSize) <= room {
		return nil
	}
	data, err := st.NewCommit(events, true).Encode()
	if err != nil {
		return nil // the append reports it
	}
	e.bytes = st.RunBytes + int64(len(data))
	if e.bytes > room {
		e.overBytes = true
		return e
	}
	return nil
}

// reportBlocked logs a commit that blocked a saga; a run too long is
// logged, and counted, when it is first blocked.
func (n *Node) reportBlocked(sagaID, workflowType string, d decision) {
	if reason := blockReason(d.blocked); reason != stream.BlockedHistoryTooLong {
		n.log.Warn("saga blocked", "saga_id", sagaID, "reason", reason, "err", d.blocked)
		return
	}
	for _, e := range d.commit.Events {
		if e.Type == stream.WorkflowExecutionBlocked {
			n.log.Error("saga blocked: its run reached the history limit", "saga_id", sagaID, "reason", stream.BlockedHistoryTooLong, "err", d.blocked)
			n.metrics.HistoryLimitReached(n.typeLabel(workflowType))
		}
	}
}

// historyLimitsTTL is how often a node reads the history limits again: an
// operator's change reaches every node within it (a wake reads them at
// once).
const historyLimitsTTL = 30 * time.Second

// historyLimitsState is a node's copy of the fleet's history limits, and
// the runs it warned of.
type historyLimitsState struct {
	mu sync.Mutex // guards current
	// current are the limits the node follows; nil until it set up.
	current *stream.HistoryLimits
	// followed is closed once followHistoryLimits returned; nil when it
	// never ran.
	followed chan struct{}

	warnedMu sync.Mutex
	warned   map[string]uint32 // saga id: the run warned of
}

// maxWarned bounds the runs a node remembers warning of; past it, it
// forgets them all (and may warn of one again).
const maxWarned = 10_000

// setHistoryLimits follows the limits read from the fleet.
func (n *Node) setHistoryLimits(l stream.HistoryLimits) {
	n.limits.mu.Lock()
	n.limits.current = &l
	n.limits.mu.Unlock()
}

// fleetHistoryLimits returns the history limits this node follows from
// its start: the fleet's, recorded by this node if it is the first (on
// streams that predate them). A node not allowed to record them (no
// STREAM.UPDATE on the first history stream, as a least-privilege node)
// follows the defaults, never its own settings, until an operator records
// them (saga-node history-limits).
func (n *Node) fleetHistoryLimits(ctx context.Context) (stream.HistoryLimits, error) {
	js, cfg := n.store.JetStream(), n.store.Config()
	limits, err := stream.CheckHistoryLimits(ctx, js, cfg, n.opts.Stream.HistoryLimits)
	if err == nil || errors.Is(err, stream.ErrInvalidHistoryLimits) {
		return limits, err
	}
	recorded, ok, rerr := stream.FleetHistoryLimits(ctx, js, cfg)
	switch {
	case rerr != nil:
		return stream.HistoryLimits{}, err
	case ok:
		return recorded, nil // another node recorded them meanwhile
	}
	n.log.Warn("the fleet's history limits are not recorded, and this node could not record them; following the defaults until an operator records them (saga-node history-limits)",
		"err", err)
	return stream.DefaultHistoryLimits, nil
}

// refreshHistoryLimits reads the fleet's history limits now.
func (n *Node) refreshHistoryLimits(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, recorded, err := stream.FleetHistoryLimits(ctx, n.store.JetStream(), n.store.Config())
	if err != nil {
		return err
	}
	if !recorded {
		// Lost since this node started (an update of the stream's metadata
		// that raced, or an edit by hand): it records again the limits it
		// follows, never its own settings, which may be weaker.
		n.limits.mu.Lock()
		cur := n.limits.current
		n.limits.mu.Unlock()
		if cur == nil {
			return fmt.Errorf("%w: the first history stream records no history limits", stream.ErrInvalidHistoryLimits)
		}
		if l, err = stream.CheckHistoryLimits(ctx, n.store.JetStream(), n.store.Config(), *cur); err != nil {
			return fmt.Errorf("the fleet's history limits are not recorded, and this node could not record those it follows (record them with saga-node history-limits): %w", err)
		}
		n.log.Info("the fleet's history limits were not recorded: recorded those this node follows", "limits", l)
	}
	n.setHistoryLimits(l)
	return nil
}

// historyLimits returns the fleet's history limits as this node last read
// them (see followHistoryLimits).
func (n *Node) historyLimits() stream.HistoryLimits {
	n.limits.mu.Lock()
	defer n.limits.mu.Unlock()
	if n.limits.current == nil {
		// Before the node set up (a wake on a node not started).
		return n.store.Config().HistoryLimits
	}
	return *n.limits.current
}

// followHistoryLimits reads the fleet's history limits every
// historyLimitsTTL until ctx ends, off the decisions' path: a read that
// is slow or fails keeps the limits read before, and says so. done is
// closed when it returns.
func (n *Node) followHistoryLimits(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(historyLimitsTTL)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := n.refreshHistoryLimits(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("could not read the fleet's history limits; following those read before", "err", err, "limits", n.historyLimits())
		}
	}
}

// noteHistoryLength warns, once per run on this node, of a run at or past
// the history warning: in the log and in a metric.
func (n *Node) noteHistoryLength(st *stream.State) {
	if st == nil || !st.Exists() {
		return
	}
	n.limits.mu.Lock()
	cur := n.limits.current
	n.limits.mu.Unlock()
	if cur == nil || !cur.Warns(st.RunEvents(), st.RunBytes) {
		return
	}
	w := &n.limits
	w.warnedMu.Lock()
	if w.warned[st.SagaID] == st.Run {
		w.warnedMu.Unlock()
		return
	}
	if w.warned == nil || len(w.warned) >= maxWarned {
		w.warned = map[string]uint32{}
	}
	w.warned[st.SagaID] = st.Run
	w.warnedMu.Unlock()
	n.log.Warn("saga history is long; its workflow should continue as new (saga.ContinueAsNew)", "saga_id", st.SagaID,
		"run", st.Run, "run_events", st.RunEvents(), "run_bytes", st.RunBytes,
		"warn_events", cur.WarnEvents, "limit_events", cur.LimitEvents)
	n.metrics.HistoryWarning(n.typeLabel(st.WorkflowType))
}
