package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTracer(t *testing.T, opts ...sdktrace.TracerProviderOption) (*telemetry.Tracer, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(append([]sdktrace.TracerProviderOption{sdktrace.WithSyncer(exp)}, opts...)...)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return telemetry.NewTracer(tp, "saga", "n1"), exp
}

func TestSagaSpanContextIsDerivedFromPrefixAndID(t *testing.T) {
	a := telemetry.SagaSpanContext("saga", "order-1")
	if !a.IsValid() || !a.IsSampled() || !a.IsRemote() {
		t.Fatalf("span context %v: want valid, sampled, remote", a)
	}
	if b := telemetry.SagaSpanContext("saga", "order-1"); !b.Equal(a) {
		t.Fatalf("derived twice: %v and %v", a, b)
	}
	for _, other := range []trace.SpanContext{
		telemetry.SagaSpanContext("saga", "order-2"),
		telemetry.SagaSpanContext("billing", "order-1"),
		// The separator keeps prefix and id apart.
		telemetry.SagaSpanContext("sag", "aorder-1"),
	} {
		if other.TraceID() == a.TraceID() || other.SpanID() == a.SpanID() {
			t.Errorf("%v shares ids with %v", other, a)
		}
	}
}

func TestTaskHeaderCarriesTheSagaRoot(t *testing.T) {
	tr, _ := newTracer(t)
	h := tr.TaskHeader("order-1")
	root := telemetry.SagaSpanContext("saga", "order-1")
	want := "00-" + root.TraceID().String() + "-" + root.SpanID().String() + "-01"
	if got := h.Get("traceparent"); got != want {
		t.Fatalf("traceparent %q, want %q", got, want)
	}
	h.Set("Nats-Msg-Id", "x") // a publication adds its own
	if tr.TaskHeader("order-1").Get("Nats-Msg-Id") != "" {
		t.Fatal("task headers are shared between messages")
	}
	var off *telemetry.Tracer
	if off.TaskHeader("order-1") != nil {
		t.Fatal("a node without tracing sends a traceparent")
	}
}

func TestFromHeaderKeepsSpansInTheSagaTrace(t *testing.T) {
	tr, _ := newTracer(t)
	root := telemetry.SagaSpanContext("saga", "order-1")
	parentIn := func(h nats.Header) trace.SpanContext {
		return trace.SpanContextFromContext(tr.FromHeader(context.Background(), h, "order-1"))
	}
	sibling := trace.NewSpanContext(trace.SpanContextConfig{TraceID: root.TraceID(), SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled})
	foreign := telemetry.SagaSpanContext("saga", "order-2")
	cases := []struct {
		name   string
		header nats.Header
		want   trace.SpanID
	}{
		{"no header", nil, root.SpanID()},
		{"the saga's root", tr.TaskHeader("order-1"), root.SpanID()},
		{"another span of the saga", nats.Header{"traceparent": {"00-" + root.TraceID().String() + "-0102030405060708-01"}}, sibling.SpanID()},
		{"another trace", tr.TaskHeader("order-2"), root.SpanID()},
		{"garbage", nats.Header{"traceparent": {"not a traceparent"}}, root.SpanID()},
	}
	for _, c := range cases {
		got := parentIn(c.header)
		if got.TraceID() != root.TraceID() || got.SpanID() != c.want {
			t.Errorf("%s: parent %s/%s, want %s/%s", c.name, got.TraceID(), got.SpanID(), root.TraceID(), c.want)
		}
	}
	if foreign.TraceID() == root.TraceID() {
		t.Fatal("two sagas share a trace")
	}
	var off *telemetry.Tracer
	ctx := context.Background()
	if got := off.FromHeader(ctx, tr.TaskHeader("order-1"), "order-1"); got != ctx {
		t.Fatal("a node without tracing changed the context")
	}
}

func TestActivitySpanJoinsTheSagaTrace(t *testing.T) {
	tr, exp := newTracer(t)
	ctx, span := tr.StartActivity(context.Background(), tr.TaskHeader("order-1"),
		telemetry.ActivityAttempt{SagaID: "order-1", ActivityType: "pay", ScheduledEventID: 4, Attempt: 2})
	telemetry.EndActivity(ctx, telemetry.OutcomeFailed, errors.New("card declined"))
	span.End()
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	root := telemetry.SagaSpanContext("saga", "order-1")
	if s.Name != "activity pay" || s.Parent.SpanID() != root.SpanID() || s.SpanContext.TraceID() != root.TraceID() {
		t.Fatalf("span %q parent %s trace %s", s.Name, s.Parent.SpanID(), s.SpanContext.TraceID())
	}
	if s.Status.Code != codes.Error || s.Status.Description != "card declined" {
		t.Errorf("status %+v", s.Status)
	}
	want := map[string]string{"jetsaga.saga.id": "order-1", "jetsaga.activity.type": "pay", "jetsaga.activity.scheduled_event_id": "4",
		"jetsaga.activity.attempt": "2", "jetsaga.activity.outcome": "failed", "jetsaga.node": "n1"}
	for _, kv := range s.Attributes {
		if w, ok := want[string(kv.Key)]; ok {
			if kv.Value.String() != w {
				t.Errorf("%s = %s, want %s", kv.Key, kv.Value.String(), w)
			}
			delete(want, string(kv.Key))
		}
	}
	if len(want) > 0 {
		t.Errorf("missing attributes %v", want)
	}

	var off *telemetry.Tracer
	ctx, span = off.StartActivity(context.Background(), nil, telemetry.ActivityAttempt{SagaID: "order-1"})
	if span.IsRecording() || trace.SpanContextFromContext(ctx).IsValid() {
		t.Fatal("a node without tracing made a span")
	}
	span.End()
}

func TestRecordStep(t *testing.T) {
	tr, exp := newTracer(t)
	start := time.Now().Add(-time.Millisecond)
	base := telemetry.Step{SagaID: "order-1", WorkflowType: "order", Start: start, End: time.Now()}
	tr.RecordStep(context.Background(), base) // neither decided nor appended
	if n := len(exp.GetSpans()); n != 0 {
		t.Fatalf("a step that did nothing made %d spans", n)
	}
	decided := base
	decided.Decided, decided.Appended, decided.FirstEventID, decided.LastEventID, decided.Seq, decided.Conflicts = true, true, 3, 5, 42, 1
	tr.RecordStep(context.Background(), decided)
	recorded := base
	recorded.Appended, recorded.Err = true, errors.New("boom")
	tr.RecordStep(context.Background(), recorded)
	spans := exp.GetSpans()
	if len(spans) != 2 || spans[0].Name != "decide order" || spans[1].Name != "record order" {
		t.Fatalf("spans %v", spans)
	}
	if !spans[0].StartTime.Equal(start) {
		t.Errorf("decision span starts at %v, want the step's start %v", spans[0].StartTime, start)
	}
	got := map[string]string{}
	for _, kv := range spans[0].Attributes {
		got[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{"jetsaga.event.first_id": "3", "jetsaga.event.last_id": "5", "jetsaga.commit.seq": "42",
		"jetsaga.conflicts": "1", "jetsaga.decided": "true", "jetsaga.workflow.type": "order"} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if spans[1].Status.Code != codes.Error {
		t.Errorf("failed step status %+v", spans[1].Status)
	}
	if spans[0].Parent.SpanID() != telemetry.SagaSpanContext("saga", "order-1").SpanID() {
		t.Errorf("decision parent %s, want the saga's root", spans[0].Parent.SpanID())
	}
}

func TestSagaRootSpanNeedsTheIDGenerator(t *testing.T) {
	started, ended := time.Now().Add(-time.Second), time.Now()
	root := telemetry.SagaSpanContext("saga", "order-1")

	tr, exp := newTracer(t, sdktrace.WithIDGenerator(telemetry.IDGenerator{}))
	tr.RecordSaga(context.Background(), "order-1", "order", "failed", started, ended)
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if s.Name != "saga order" || s.SpanContext.TraceID() != root.TraceID() || s.SpanContext.SpanID() != root.SpanID() || s.Parent.IsValid() {
		t.Fatalf("root span %q %s/%s parent %v", s.Name, s.SpanContext.TraceID(), s.SpanContext.SpanID(), s.Parent)
	}
	if !s.StartTime.Equal(started) || !s.EndTime.Equal(ended) || s.Status.Code != codes.Error {
		t.Errorf("root span %v..%v status %+v", s.StartTime, s.EndTime, s.Status)
	}
	// The generator's other ids are random and valid.
	ctx, other := tr.StartActivity(context.Background(), nil, telemetry.ActivityAttempt{SagaID: "order-1", ActivityType: "x"})
	other.End()
	if sc := trace.SpanContextFromContext(ctx); !sc.IsValid() || sc.SpanID() == root.SpanID() {
		t.Errorf("activity span %v", sc)
	}

	// Without it the span would open a trace of its own: none is recorded,
	// and only the first saga starts one (left open, never exported), so
	// that open spans cannot pile up, one per saga, in a processor that
	// tracks them.
	opened := &startCounter{}
	plain, plainExp := newTracer(t, sdktrace.WithSpanProcessor(opened))
	for i := range 3 {
		plain.RecordSaga(context.Background(), fmt.Sprintf("order-%d", i), "order", "completed", started, ended)
	}
	if n := len(plainExp.GetSpans()); n != 0 {
		t.Fatalf("%d root spans recorded outside the saga's trace", n)
	}
	if n := opened.n.Load(); n != 1 {
		t.Fatalf("%d root spans started and left open for 3 sagas", n)
	}
}

// startCounter counts the spans started.
type startCounter struct{ n atomic.Int32 }

func (c *startCounter) OnStart(context.Context, sdktrace.ReadWriteSpan) { c.n.Add(1) }
func (c *startCounter) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (c *startCounter) Shutdown(context.Context) error                  { return nil }
func (c *startCounter) ForceFlush(context.Context) error                { return nil }
