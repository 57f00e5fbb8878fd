package otlp_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/jetsaga/saga/telemetry"
	"github.com/jetsaga/saga/telemetry/otlp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestExportsToACollector sends a saga's root span over OTLP/HTTP to a
// real listener standing in for a collector, and reads it back from the
// protobuf request: its ids are the saga's, so the provider uses the
// engine's id generator, and the resource names the node.
func TestExportsToACollector(t *testing.T) {
	var mu sync.Mutex
	var got []*coltracepb.ExportTraceServiceRequest
	var paths []string
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var req coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, &req)
		paths = append(paths, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer collector.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tp, err := otlp.NewTracerProvider(ctx, otlp.Options{
		Endpoint: strings.TrimPrefix(collector.URL, "http://"), Insecure: true, ServiceInstance: "node-7"})
	if err != nil {
		t.Fatal(err)
	}
	tr := telemetry.NewTracer(tp, "saga", "node-7")
	tr.RecordSaga(ctx, "order-1", "order", "completed", time.Now().Add(-time.Second), time.Now())
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || paths[0] != "POST /v1/traces application/x-protobuf" {
		t.Fatalf("%d export requests (%v), want one POST of protobuf to /v1/traces", len(got), paths)
	}
	rs := got[0].GetResourceSpans()
	if len(rs) != 1 || len(rs[0].GetScopeSpans()) != 1 || len(rs[0].GetScopeSpans()[0].GetSpans()) != 1 {
		t.Fatalf("export %v: want one span", got[0])
	}
	resource := map[string]string{}
	for _, kv := range rs[0].GetResource().GetAttributes() {
		resource[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if resource["service.name"] != "saga-node" || resource["service.instance.id"] != "node-7" {
		t.Errorf("resource %v", resource)
	}
	span := rs[0].GetScopeSpans()[0].GetSpans()[0]
	root := telemetry.SagaSpanContext("saga", "order-1")
	tid, sid := root.TraceID(), root.SpanID()
	if span.GetName() != "saga order" || string(span.GetTraceId()) != string(tid[:]) || string(span.GetSpanId()) != string(sid[:]) {
		t.Fatalf("span %q trace %x span %x, want the saga's root %s/%s", span.GetName(), span.GetTraceId(), span.GetSpanId(), tid, sid)
	}
}

func TestNeedsAnEndpoint(t *testing.T) {
	if _, err := otlp.NewTracerProvider(context.Background(), otlp.Options{}); err == nil {
		t.Fatal("a provider without an endpoint")
	}
}
