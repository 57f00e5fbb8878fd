package telemetry

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// InstrumentationName names the tracer the node takes from its provider.
const InstrumentationName = "github.com/jetsaga/saga"

// Span attributes.
const (
	AttrSagaID           = attribute.Key("jetsaga.saga.id")
	AttrWorkflowType     = attribute.Key("jetsaga.workflow.type")
	AttrSagaStatus       = attribute.Key("jetsaga.saga.status")
	AttrFirstEventID     = attribute.Key("jetsaga.event.first_id")
	AttrLastEventID      = attribute.Key("jetsaga.event.last_id")
	AttrCommitSeq        = attribute.Key("jetsaga.commit.seq")
	AttrDecided          = attribute.Key("jetsaga.decided")
	AttrConflicts        = attribute.Key("jetsaga.conflicts")
	AttrActivityType     = attribute.Key("jetsaga.activity.type")
	AttrScheduledEventID = attribute.Key("jetsaga.activity.scheduled_event_id")
	AttrAttempt          = attribute.Key("jetsaga.activity.attempt")
	AttrOutcome          = attribute.Key("jetsaga.activity.outcome")
	AttrNode             = attribute.Key("jetsaga.node")
)

// SagaSpanContext is the span context every span of a saga descends from:
// the saga's trace id and the id of its root span, both derived from the
// engine's prefix and the saga id. Every node, before or after any restart,
// derives the same one, so a saga is one trace without its history
// recording anything about tracing. It is marked sampled: a sampler that
// should keep or drop whole sagas decides on the trace id (TraceIDRatioBased),
// which every node sees alike.
func SagaSpanContext(prefix, sagaID string) trace.SpanContext {
	h := sha256.New()
	h.Write([]byte(prefix))
	h.Write([]byte{0})
	h.Write([]byte(sagaID))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	var tid trace.TraceID
	var sid trace.SpanID
	copy(tid[:], sum[:16])
	copy(sid[:], sum[16:24])
	// All zeros is invalid; a hash makes that a 2^-64 case, settled anyway.
	if !tid.IsValid() {
		tid[15] = 1
	}
	if !sid.IsValid() {
		sid[7] = 1
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
}

// Tracer makes a node's spans. A nil *Tracer makes none, at the cost of a
// nil check.
type Tracer struct {
	tracer trace.Tracer
	prefix string
	node   string
	// noRoots is set once a root span came out with other ids than the
	// saga's: the provider does not take its ids from IDGenerator, and
	// RecordSaga stops starting spans it cannot end.
	noRoots atomic.Bool
}

// NewTracer returns the tracer of a node of the engine with the given
// prefix; nil (no tracing) when tp is nil.
func NewTracer(tp trace.TracerProvider, prefix, node string) *Tracer {
	if tp == nil {
		return nil
	}
	return &Tracer{tracer: tp.Tracer(InstrumentationName), prefix: prefix, node: node}
}

// sagaParent returns ctx with a parent in the saga's trace: the span ctx
// holds if it belongs to that trace (an activity attempt whose outcome a
// decision records), else the saga's root span.
func (t *Tracer) sagaParent(ctx context.Context, sagaID string) context.Context {
	sc := SagaSpanContext(t.prefix, sagaID)
	if cur := trace.SpanContextFromContext(ctx); cur.IsValid() && cur.TraceID() == sc.TraceID() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// FromHeader returns ctx with the parent a task message names in its
// traceparent header, when that parent is in the saga's trace; otherwise
// with the saga's root span as parent. A traceparent of another trace (a
// foreign publisher's) never moves a saga's spans out of its trace.
func (t *Tracer) FromHeader(ctx context.Context, h nats.Header, sagaID string) context.Context {
	if t == nil {
		return ctx
	}
	if len(h) > 0 {
		pctx := propagation.TraceContext{}.Extract(ctx, headerCarrier(h))
		if sc := trace.SpanContextFromContext(pctx); sc.IsValid() && sc.TraceID() == SagaSpanContext(t.prefix, sagaID).TraceID() {
			return pctx
		}
	}
	return t.sagaParent(ctx, sagaID)
}

// TaskHeader returns the headers a task message of the saga carries: the
// W3C traceparent of the saga's root span. A new header each call: the
// publication adds its own headers to it.
func (t *Tracer) TaskHeader(sagaID string) nats.Header {
	if t == nil {
		return nil
	}
	h := nats.Header{}
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), SagaSpanContext(t.prefix, sagaID))
	propagation.TraceContext{}.Inject(ctx, headerCarrier(h))
	return h
}

// ActivityAttempt describes the attempt an activity span covers.
type ActivityAttempt struct {
	SagaID           string
	ActivityType     string
	ScheduledEventID uint64
	Attempt          int
}

// StartActivity starts the span of one activity attempt, as a child of the
// parent its task's header names (see FromHeader). The activity runs with
// the returned context, so its own spans nest under the attempt's.
func (t *Tracer) StartActivity(ctx context.Context, h nats.Header, a ActivityAttempt) (context.Context, trace.Span) {
	if t == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	return t.tracer.Start(t.FromHeader(ctx, h, a.SagaID), "activity "+a.ActivityType,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			AttrSagaID.String(a.SagaID),
			AttrActivityType.String(a.ActivityType),
			AttrScheduledEventID.Int64(int64(a.ScheduledEventID)),
			AttrAttempt.Int(a.Attempt),
			AttrNode.String(t.node),
		))
}

// EndActivity records how an attempt ended on the span in ctx.
func EndActivity(ctx context.Context, outcome string, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(AttrOutcome.String(outcome))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
}

// Step is what one decision step of a saga did, for its span: recorded
// when it is over, since whether it decides or appends anything is known
// only then.
type Step struct {
	SagaID       string
	WorkflowType string
	Start, End   time.Time
	// Decided: the workflow code ran.
	Decided bool
	// Appended: a commit landed, holding events FirstEventID..LastEventID
	// at stream sequence Seq.
	Appended                  bool
	FirstEventID, LastEventID uint64
	Seq                       uint64
	// Conflicts: appends refused as concurrent on the way.
	Conflicts int
	Err       error
}

// RecordStep records a decision step as a span under ctx's span in the
// saga's trace, or under the saga's root: "decide <type>" when the
// workflow code ran, "record <type>" when the step only appended inputs.
// A step that did neither makes no span.
func (t *Tracer) RecordStep(ctx context.Context, s Step) {
	if t == nil || !s.Decided && !s.Appended {
		return
	}
	name := "record " + s.WorkflowType
	if s.Decided {
		name = "decide " + s.WorkflowType
	}
	attrs := make([]attribute.KeyValue, 0, 8)
	attrs = append(attrs, AttrSagaID.String(s.SagaID), AttrWorkflowType.String(s.WorkflowType),
		AttrDecided.Bool(s.Decided), AttrNode.String(t.node))
	if s.Appended {
		attrs = append(attrs, AttrFirstEventID.Int64(int64(s.FirstEventID)), AttrLastEventID.Int64(int64(s.LastEventID)),
			AttrCommitSeq.Int64(int64(s.Seq)))
	}
	if s.Conflicts > 0 {
		attrs = append(attrs, AttrConflicts.Int(s.Conflicts))
	}
	_, span := t.tracer.Start(t.sagaParent(ctx, s.SagaID), name, trace.WithTimestamp(s.Start), trace.WithAttributes(attrs...))
	if s.Err != nil {
		span.SetStatus(codes.Error, s.Err.Error())
	}
	span.End(trace.WithTimestamp(s.End))
}

// RecordSaga records the saga's root span, from its start to its end, once
// the commit that ends it has landed (one node appends it). The span gets
// the id SagaSpanContext derives only from a provider that takes its ids
// from IDGenerator; with any other, the span would land in a trace of its
// own, so it is not recorded (the saga's other spans still share their
// trace, under a root that backends then show as missing).
func (t *Tracer) RecordSaga(ctx context.Context, sagaID, workflowType, status string, started, ended time.Time) {
	if t == nil || t.noRoots.Load() {
		return
	}
	want := SagaSpanContext(t.prefix, sagaID)
	ctx = context.WithValue(ctx, wantIDsKey{}, want)
	_, span := t.tracer.Start(ctx, "saga "+workflowType, trace.WithNewRoot(), trace.WithTimestamp(started),
		trace.WithAttributes(AttrSagaID.String(sagaID), AttrWorkflowType.String(workflowType), AttrSagaStatus.String(status)))
	if got := span.SpanContext(); got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() {
		// Left unended, it is never exported; being the only one, it
		// cannot pile up in a processor that tracks open spans.
		t.noRoots.Store(true)
		return
	}
	if status != "completed" {
		span.SetStatus(codes.Error, "saga "+status)
	}
	span.End(trace.WithTimestamp(ended))
}

// wantIDsKey carries the ids RecordSaga asks IDGenerator for.
type wantIDsKey struct{}

// IDGenerator makes span and trace ids as the OpenTelemetry SDK's default
// does (random), except for a saga's root span, which gets the ids derived
// from the saga id. Give it to the SDK's provider
// (sdktrace.WithIDGenerator(telemetry.IDGenerator{})) so that a saga's
// trace has its root span.
type IDGenerator struct{}

// NewIDs returns the ids of a new root span.
func (IDGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if sc, ok := ctx.Value(wantIDsKey{}).(trace.SpanContext); ok {
		return sc.TraceID(), sc.SpanID()
	}
	var tid trace.TraceID
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid, randomSpanID()
}

// NewSpanID returns the id of a new span in a trace.
func (IDGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID { return randomSpanID() }

func randomSpanID() trace.SpanID {
	var sid trace.SpanID
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}

// headerCarrier lets the W3C propagator read and write NATS headers, whose
// keys are case-sensitive: "traceparent", as W3C spells it.
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string { return nats.Header(c).Get(key) }

func (c headerCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
