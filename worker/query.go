package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// ErrWorkflowNotHere: the saga's workflow type is not registered on this
// node, so it cannot answer a query about it.
var ErrWorkflowNotHere = errors.New("the saga's workflow type is not registered on this node")

// Query answers a named query from the saga's current state: the node
// brings its view of the saga up to date (its cache, or a replay of the
// history), then runs the workflow's handler. It appends nothing. Errors:
// saga.ErrNotFound, ErrWorkflowNotHere (with the saga's type), a Validation
// error for an unknown query (naming the known ones), or the handler's.
func (n *Node) Query(ctx context.Context, sagaID, name string, input stream.Payload) (workflowType string, result stream.Payload, err error) {
	if err := stream.ValidateID("saga id", sagaID); err != nil {
		return "", nil, &saga.Error{Kind: saga.KindValidation, Message: "query", Cause: err}
	}
	if err := stream.ValidateID("query name", name); err != nil {
		return "", nil, &saga.Error{Kind: saga.KindValidation, Message: "query", Cause: err}
	}
	e := n.cache.acquire(sagaID)
	defer n.cache.release(e, false)
	v := &e.view
	if err := n.catchUp(ctx, v, nil, readLatest); err != nil {
		v.reset()
		return "", nil, &saga.Error{Kind: saga.KindEventStore, Message: "query " + sagaID, Cause: err}
	}
	if !v.state.Exists() {
		return "", nil, (&saga.Error{Kind: saga.KindValidation, Message: "query " + sagaID, Cause: saga.ErrNotFound}).WithContext("saga_id", sagaID)
	}
	workflowType = v.state.WorkflowType
	if _, ok := n.reg.Workflow(workflowType); !ok {
		return workflowType, nil, fmt.Errorf("%w: %s", ErrWorkflowNotHere, workflowType)
	}
	m, err := n.machineFor(ctx, v, true)
	if err != nil {
		return workflowType, nil, &saga.Error{Kind: saga.KindReplay, Message: "query " + sagaID + ": replay", Cause: err}
	}
	result, err = m.Query(name, input)
	if errors.Is(err, replay.ErrDeadlock) {
		v.dropMachine() // abandoned to the handler that overran
	}
	switch {
	case errors.Is(err, replay.ErrUnknownQuery), errors.Is(err, replay.ErrQueryChangesState):
		return workflowType, nil, &saga.Error{Kind: saga.KindValidation, Message: "query " + sagaID, Cause: err}
	case err != nil:
		return workflowType, nil, &saga.Error{Kind: saga.KindWorkflowExecution, Message: "query " + name + " of " + sagaID, Cause: err}
	}
	return workflowType, result, nil
}

// Signal checks that the saga exists and has not ended, then puts the
// signal into the inbox stream, where it takes its place among published
// signals (see docs/protocol.md); it returns the signal's inbox sequence.
// A saga missing gives saga.ErrNotFound, one that ended
// saga.ErrAlreadyEnded.
func (n *Node) Signal(ctx context.Context, sagaID, name string, input stream.Payload, msgID string) (uint64, error) {
	for what, v := range map[string]string{"saga id": sagaID, "signal name": name} {
		if err := stream.ValidateID(what, v); err != nil {
			return 0, &saga.Error{Kind: saga.KindValidation, Message: "signal", Cause: err}
		}
	}
	d, err := n.client.Describe(ctx, sagaID)
	if err != nil {
		return 0, err
	}
	if d.Status.Terminal() {
		return 0, (&saga.Error{Kind: saga.KindValidation, Message: fmt.Sprintf("signal %s: the saga already ended %s", sagaID, d.Status), Cause: saga.ErrAlreadyEnded}).
			WithContext("saga_id", sagaID)
	}
	return n.client.SignalPayload(ctx, sagaID, name, input, msgID)
}
