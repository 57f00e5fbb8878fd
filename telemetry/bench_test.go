package telemetry_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jetsaga/saga/telemetry"
)

// The telemetry of one order saga on a node that runs it all (see
// docs/architecture.md, "What one saga costs"): 4 decisions (start, and
// each of the three results), 3 activity attempts, about 5 cache lookups,
// 3 task messages. These benchmarks give what that costs per saga, to set
// beside the CPU time of the saga itself.

func BenchmarkMetricsPerSaga(b *testing.B) {
	m, err := telemetry.NewMetrics(prometheus.NewRegistry(), telemetry.MetricsOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.SagaStarted("order")
		for range 4 {
			m.Decision("order", time.Millisecond)
		}
		for _, a := range []string{"reserve-inventory", "process-payment", "ship-order"} {
			m.Activity(a, telemetry.OutcomeCompleted, time.Millisecond)
		}
		for i := range 5 {
			m.CacheLookup(i > 0)
		}
		m.SagaEnded("order", "completed")
	}
}

func BenchmarkTracingPerSaga(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithIDGenerator(telemetry.IDGenerator{}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	tr := telemetry.NewTracer(tp, "saga", "n1")
	ctx := context.Background()
	now := time.Now()
	step := telemetry.Step{SagaID: "order-1", WorkflowType: "order", Start: now, End: now, Decided: true, Appended: true, FirstEventID: 1, LastEventID: 3, Seq: 9}
	b.ReportAllocs()
	for b.Loop() {
		tr.RecordStep(ctx, step)
		for _, a := range []string{"reserve-inventory", "process-payment", "ship-order"} {
			h := tr.TaskHeader("order-1")
			actx, span := tr.StartActivity(ctx, h, telemetry.ActivityAttempt{SagaID: "order-1", ActivityType: a, ScheduledEventID: 2, Attempt: 1})
			telemetry.EndActivity(actx, telemetry.OutcomeCompleted, nil)
			tr.RecordStep(actx, step)
			span.End()
		}
		tr.RecordSaga(ctx, "order-1", "order", "completed", now, now)
	}
}
