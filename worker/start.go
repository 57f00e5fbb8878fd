package worker

import (
	"context"
	"errors"

	"github.com/jetsaga/saga/stream"
)

// appendStart appends a saga's start commit for the node's client (the
// API's and the inbox's starts, and an application's through
// Node.Client). When the node runs the workflow, it decides on the start
// first and appends [WorkflowExecutionStarted, first decision] as one
// commit: one append, one dispatch and one replay fewer per saga, and the
// saga's first activity is on its way as soon as the start is
// acknowledged. The commit still requires the saga not to exist (expected
// sequence 0), so of two starts of one id exactly one lands, decision and
// all. Whenever the node cannot decide here (the type is not registered,
// its code is older than the start asks for, the input is sealed with a
// key it lacks, the code fails or the decision does not fit), the start is
// appended alone and decided through the dispatcher as usual.
func (n *Node) appendStart(ctx context.Context, start *stream.Commit) (uint64, error) {
	if seq, ok, err := n.appendStartDecided(ctx, start); ok || err != nil {
		return seq, err
	}
	return n.store.Append(ctx, start, 0)
}

// appendStartDecided tries the decided start; ok false with a nil error
// means the start is to be appended alone.
func (n *Node) appendStartDecided(ctx context.Context, start *stream.Commit) (seq uint64, ok bool, err error) {
	if n.opts.DisableDecideOnStart || len(start.Events) != 1 {
		return 0, false, nil
	}
	attrs, isStart := start.Events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs)
	if !isStart {
		return 0, false, nil
	}
	if _, registered := n.reg.Workflow(start.WorkflowType); !registered {
		return 0, false, nil
	}
	// Workflow code runs here, in the caller's request: within the
	// node's bound on decisions at once, and only while it runs (a
	// stopping node's cache is going away).
	select {
	case n.startSlots <- struct{}{}:
		defer func() { <-n.startSlots }()
	default:
		return 0, false, nil
	}
	if !n.track() {
		return 0, false, nil
	}
	defer n.untrack()
	st := n.beginStep(ctx, start.SagaID)
	defer func() { st.end(err) }()
	e := n.cache.acquire(start.SagaID)
	done := false
	defer func() { n.cache.release(e, done) }()
	v := &e.view
	if v.known() {
		return 0, false, nil // the saga exists: the plain append says so
	}
	// The view of a saga about to exist: no event yet, the machine fed
	// the start speculatively, as the decision's input.
	v.state = &stream.State{SagaID: start.SagaID, WorkflowType: start.WorkflowType, Version: attrs.Version}
	before := *v.state
	m, err := n.machineFor(ctx, v, true)
	if err == nil {
		err = n.checkCanOpen(v.id, start.Events)
	}
	if err == nil {
		err = v.feedSpeculative(ctx, start.Events)
	}
	if err != nil {
		// The dispatcher meets the same failure on the stored start and
		// gives it its verdict (a retry, a block).
		v.reset()
		return 0, false, nil
	}
	events := append(append([]stream.Event(nil), start.Events...), m.Propose(1, n.clock.Now())...)
	if m.NextRun() != nil || n.historyTooLong(v.state, start.Events, events) != nil {
		// A run that continues as new at once, or a first decision past
		// the history limit: the dispatcher's decision handles both.
		v.reset()
		return 0, false, nil
	}
	commit := &stream.Commit{SagaID: start.SagaID, WorkflowType: start.WorkflowType, Decided: true, Events: events}
	// Observed as a decision from here on: a start that goes alone is
	// decided, and counted, by the dispatcher.
	st.decide(&before)
	if err := n.hooks.beforeAppend(ctx, start.SagaID, commit); err != nil {
		v.reset()
		return 0, true, err
	}
	seq, err = n.store.Append(ctx, commit, 0)
	if errors.Is(err, stream.ErrTooLarge) {
		v.reset()
		return 0, false, nil
	}
	if err != nil {
		st.appendFailed(&before, err) // a conflict: the saga exists
		v.reset()
		return 0, true, err
	}
	n.hooks.afterAppend(ctx, start.SagaID, commit)
	st.appended(&before, commit, seq)
	n.stats.commits.Add(1)
	if err := v.committed(ctx, commit, seq, len(start.Events)); err != nil {
		v.reset()
		return seq, true, nil
	}
	done = v.state.Status.Terminal()
	return seq, true, nil
}
