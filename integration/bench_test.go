package integration

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/aesgcm"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
	"github.com/jetsaga/saga/worker"
)

// BenchmarkOrderSaga runs whole order sagas (start, three activities,
// completion) on one node and an embedded server, with a window of sagas
// in flight, and reports sagas per second. Run it with
//
//	go test ./integration -run '^$' -bench OrderSaga -benchtime 3000x
//
// The sub-benchmarks differ in the server's fsync policy: "interval" (the
// default file store: survives a process kill) and "always" (survives
// power loss).
func BenchmarkOrderSaga(b *testing.B) {
	for _, syncAlways := range []bool{false, true} {
		name := "sync=interval"
		if syncAlways {
			name = "sync=always"
		}
		b.Run(name, func(b *testing.B) { benchOrderSagas(b, syncAlways, 256) })
	}
	// The node's telemetry on: metrics registered (not scraped), or spans
	// made by the OpenTelemetry SDK and batched to an exporter that drops
	// them.
	b.Run("sync=interval,metrics=on", func(b *testing.B) {
		benchOrderSagas(b, false, 256, func(o *worker.Options) { o.Metrics = prometheus.NewRegistry() })
	})
	// User payloads sealed with AES-256-GCM, by the client and the node.
	b.Run("sync=interval,codec=on", func(b *testing.B) {
		codec, err := aesgcm.New(make([]byte, 32))
		if err != nil {
			b.Fatal(err)
		}
		benchOrderSagas(b, false, 256, func(o *worker.Options) { o.Codec = codec })
	})
	b.Run("sync=interval,tracing=on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()), sdktrace.WithIDGenerator(telemetry.IDGenerator{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		benchOrderSagas(b, false, 256, func(o *worker.Options) { o.TracerProvider = tp })
	})
}

func benchOrderSagas(b *testing.B, syncAlways bool, inFlight int, adjust ...func(*worker.Options)) {
	srv, err := embeddednats.Start(embeddednats.Options{Dir: b.TempDir(), SyncAlways: syncAlways})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	conn := func() *nats.Conn {
		nc, err := srv.Connect()
		if err != nil {
			b.Fatal(err)
		}
		return nc
	}
	nodeConn, clientConn := conn(), conn()
	defer nodeConn.Close()
	defer clientConn.Close()

	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	opts := worker.Options{Logger: testLogger(), DisableAPI: true,
		WorkflowConcurrency: 128, ActivityConcurrency: 256, CacheSize: 4 * inFlight}
	for _, f := range adjust {
		f(&opts)
	}
	node, err := worker.New(nodeConn, reg, opts)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := node.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = node.Stop(context.Background()) }()
	cl, err := saga.NewClient(clientConn, saga.ClientOptions{Codec: opts.Codec})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()

	// Sagas end with a commit holding WorkflowExecutionCompleted; count
	// those as they are published instead of waiting on each saga.
	done := make(chan struct{}, b.N)
	var failed, events atomic.Int64
	sub, err := clientConn.Subscribe(stream.Config{}.Defaults().HistoryFilter(0), func(m *nats.Msg) {
		c, err := stream.DecodeCommit(m.Data)
		if err != nil {
			return
		}
		switch c.Events[len(c.Events)-1].Type {
		case stream.WorkflowExecutionCompleted:
			events.Add(int64(c.NextEventID()))
			done <- struct{}{}
		case stream.WorkflowExecutionFailed, stream.WorkflowExecutionBlocked:
			failed.Add(1)
			done <- struct{}{}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	window := make(chan struct{}, inFlight)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := range b.N {
			window <- struct{}{}
			in := order.Input{OrderID: fmt.Sprintf("o-%d", i), Items: []order.Item{{SKU: "sku", Qty: 1}}, Amount: 10}
			if _, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: fmt.Sprintf("bench-%d", i)}); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	for range b.N {
		select {
		case <-done:
			<-window
		case <-ctx.Done():
			b.Fatal("timed out")
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d sagas did not complete", failed.Load())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "sagas/s")
	b.ReportMetric(float64(events.Load())/elapsed.Seconds(), "events/s")
	st := node.Stats()
	b.ReportMetric(float64(st.Replays)/float64(b.N), "replays/saga")
	b.ReportMetric(float64(st.Conflicts)/float64(b.N), "conflicts/saga")
	b.ReportMetric(float64(st.HistoryReads)/float64(b.N), "reads/saga")
}
