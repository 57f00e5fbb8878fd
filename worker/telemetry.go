package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
)

// The node's metrics and spans (see package telemetry and
// docs/observability.md). Each is nil when not configured, and every hook
// here then returns after a nil check.

// setUpTelemetry creates the node's tracer and registers its metrics.
func (n *Node) setUpTelemetry() error {
	n.tracer = telemetry.NewTracer(n.opts.TracerProvider, n.opts.Stream.Prefix, n.opts.NodeName)
	if n.opts.Metrics == nil {
		return nil
	}
	js, prefix := n.store.JetStream(), n.opts.Stream.Prefix
	m, err := telemetry.NewMetrics(n.opts.Metrics, telemetry.MetricsOptions{
		Lags: func(ctx context.Context) ([]telemetry.ConsumerLag, error) {
			return telemetry.EngineLags(ctx, js, prefix)
		},
		ProjectorConsumer: projectorName,
		Logger:            n.log,
	})
	if err != nil {
		return err
	}
	n.metrics = m
	n.cache.metrics = m
	return nil
}

// withTaskHeaders makes the task messages published under ctx carry the
// saga's trace context.
func (n *Node) withTaskHeaders(ctx context.Context) context.Context {
	if n.tracer == nil {
		return ctx
	}
	return stream.WithTaskHeaders(ctx, n.tracer.TaskHeader)
}

// Healthy reports whether the node is running (started, not stopping) and
// its NATS connection is up: nil, or why not.
func (n *Node) Healthy() error {
	if !n.running.Load() {
		return errors.New("node not running")
	}
	if s := n.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("NATS connection %s", s)
	}
	return nil
}

// step observes one advance: its latency, what it appended, and its span.
// The zero step (telemetry off) does nothing.
type step struct {
	n   *Node
	ctx context.Context
	rec telemetry.Step
	// ended is the status of the saga when the step appended its terminal
	// commit, and startedAt when the saga started.
	ended     string
	startedAt time.Time
}

func (n *Node) beginStep(ctx context.Context, sagaID string) step {
	if n.metrics == nil && n.tracer == nil {
		return step{}
	}
	return step{n: n, ctx: ctx, rec: telemetry.Step{SagaID: sagaID, Start: time.Now()}}
}

// decide notes that the workflow code runs in this step.
func (s *step) decide(st *stream.State) {
	if s.n == nil {
		return
	}
	// A node without the workflow only records inputs.
	if _, ok := s.n.reg.Workflow(st.WorkflowType); ok {
		s.rec.Decided, s.rec.WorkflowType = true, st.WorkflowType
	}
}

// appended counts what the commit c, appended at seq on the state st, means
// for the saga: taken up, or ended. st is the state before the commit.
func (s *step) appended(st *stream.State, c *stream.Commit, seq uint64) {
	if s.n == nil {
		return
	}
	s.rec.Appended, s.rec.WorkflowType = true, st.WorkflowType
	s.rec.FirstEventID, s.rec.LastEventID, s.rec.Seq = c.FirstEventID(), c.NextEventID()-1, seq
	m := s.n.metrics
	label := s.n.typeLabel(st.WorkflowType)
	if takesUp(st) || st.NextEventID == 0 && len(c.Events) > 1 {
		// Appended on st, or a start with its first decision.
		m.SagaStarted(label)
	}
	for _, e := range c.Events {
		if stream.IsTerminal(e.Type) {
			s.ended, s.startedAt = string(terminalStatus(e.Type)), st.StartedAt
			m.SagaEnded(label, s.ended)
		}
	}
}

// appendFailed counts an append refused as concurrent.
func (s *step) appendFailed(st *stream.State, err error) {
	if s.n != nil && errors.Is(err, stream.ErrConcurrency) {
		s.rec.Conflicts++
		s.n.metrics.Conflict(s.n.typeLabel(st.WorkflowType))
	}
}

// end observes the step's latency when it decided, and records its span,
// and the saga's when it ended the saga.
func (s *step) end(err error) {
	if s.n == nil {
		return
	}
	now := time.Now()
	if s.rec.Decided {
		s.n.metrics.Decision(s.n.typeLabel(s.rec.WorkflowType), now.Sub(s.rec.Start))
	}
	if t := s.n.tracer; t != nil {
		s.rec.End, s.rec.Err = now, err
		t.RecordStep(s.ctx, s.rec)
		if s.ended != "" {
			t.RecordSaga(s.ctx, s.rec.SagaID, s.rec.WorkflowType, s.ended, s.startedAt, now)
		}
	}
}

// takesUp reports whether a commit appended on st is the first that a node
// appends to the saga: st holds only what clients write, the start and a
// cancellation requested before any node took the saga up. Exactly one
// node appends that commit (the others' appends conflict), so counting
// starts there counts each saga once in a fleet, whoever started it.
func takesUp(st *stream.State) bool {
	switch st.NextEventID {
	case 1:
		return true
	case 2:
		return st.CancelRequested != nil && st.CancelRequestedEventID == 1 && st.CancelRequested.Cause == stream.CancelByRequest
	}
	return false
}

func terminalStatus(t stream.EventType) stream.Status {
	switch t {
	case stream.WorkflowExecutionCompleted:
		return stream.StatusCompleted
	case stream.WorkflowExecutionFailed:
		return stream.StatusFailed
	case stream.WorkflowExecutionCanceled:
		return stream.StatusCanceled
	}
	return stream.StatusTimedOut
}

// observeActivity records how an activity attempt ended, after elapsed,
// in the metrics and on the attempt's span (in ctx).
func (n *Node) observeActivity(ctx context.Context, activityType string, elapsed time.Duration, err, stoppedBy error) {
	if n.metrics == nil && n.tracer == nil {
		return
	}
	outcome := activityOutcome(err, stoppedBy)
	if err != nil && ctx.Err() != nil {
		outcome = telemetry.OutcomeStopped // the node stops: not the activity's doing
	}
	n.metrics.Activity(activityType, outcome, elapsed)
	telemetry.EndActivity(ctx, outcome, err)
}

func activityOutcome(err, stoppedBy error) string {
	switch {
	case err == nil:
		return telemetry.OutcomeCompleted
	case errors.Is(stoppedBy, saga.ErrCanceled):
		return telemetry.OutcomeCanceled
	case stoppedBy != nil:
		return telemetry.OutcomeStopped
	case errors.Is(err, saga.KindTimeout):
		return telemetry.OutcomeTimedOut
	}
	return telemetry.OutcomeFailed
}

// unregisteredType labels the sagas of workflow types this node does not
// register: a history's type is whatever its writer chose, and a label per
// junk type would grow the metrics without bound.
const unregisteredType = "unregistered"

// typeLabel is the workflow_type label of a saga of type t.
func (n *Node) typeLabel(t string) string {
	if _, ok := n.reg.Workflow(t); ok {
		return t
	}
	return unregisteredType
}
