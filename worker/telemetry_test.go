package worker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
	"github.com/jetsaga/saga/worker"
)

// countingProjection stands in for Postgres: the projector's lag is what
// the metrics test looks at, not what is projected.
type countingProjection struct{ commits atomic.Int64 }

func (p *countingProjection) Apply(_ context.Context, commits []stream.StoredCommit) error {
	p.commits.Add(int64(len(commits)))
	return nil
}

// TestMetricsOfOrderSagas runs order sagas that complete, fail and are
// canceled on a node whose metrics are served on a real listener, and
// checks what a scrape of /metrics says about them, and /healthz through
// the node's life.
func TestMetricsOfOrderSagas(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	const canceledID = "m-canceled"
	var cancelOnce sync.Once
	hooks := &worker.Hooks{BeforeAppend: func(ctx context.Context, sagaID string, c *stream.Commit) error {
		if sagaID == canceledID && c.FirstEventID() == 1 {
			// A cancellation lands first: this append is refused as
			// concurrent, once.
			cancelOnce.Do(func() {
				if err := e.cl.Cancel(ctx, sagaID, "metrics test"); err != nil {
					t.Errorf("cancel: %v", err)
				}
			})
		}
		return nil
	}}
	svc := order.NewService()
	reg2 := saga.NewRegistry()
	reg2.MustRegister(svc.Definitions()...)
	node, err := worker.New(e.srv.Conn(), reg2, worker.Options{Logger: logger(), AckWait: 2 * time.Second,
		Metrics: reg, Hooks: hooks, Projection: &countingProjection{}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := telemetry.Serve("127.0.0.1:0", reg, node.Healthy, logger())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	base := "http://" + srv.Addr()
	if code, body := get(t, base+"/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("healthz before start: %d %q, want 503", code, body)
	}
	if err := node.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = node.Stop(context.Background()) }()
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("healthz of a running node: %d %q, want 200 ok", code, body)
	}

	in := func(id, fail string) order.Input {
		return order.Input{OrderID: id, Items: []order.Item{{SKU: "book", Qty: 1}}, Amount: 10, FailStep: fail}
	}
	if _, err := run(e, order.Workflow, "m-completed", in("m-completed", "")); err != nil {
		t.Fatalf("completing saga: %v", err)
	}
	if _, err := run(e, order.Workflow, "m-failed", in("m-failed", order.StepProcessPayment)); err == nil {
		t.Fatal("saga with a failing step completed")
	}
	if _, err := run(e, order.Workflow, canceledID, in(canceledID, "")); err == nil {
		t.Fatal("canceled saga completed")
	}
	// A signal to a saga that does not exist is set aside.
	if err := e.cl.Signal(e.ctx, "m-nobody", "hello", 1); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 10*time.Second, "the dead letter", func() bool { return node.Stats().DeadLetters == 1 })

	// Counters of what the node appended, exact.
	var fams map[string]*dto.MetricFamily
	natstest.WaitFor(t, 10*time.Second, "the dispatcher, the activities and the projector to catch up", func() bool {
		fams = scrape(t, base)
		for _, c := range []string{"saga-dispatch", "saga-projector", "saga-activities-" + order.StepReserveInventory} {
			p, ok1 := value(fams, "jetsaga_consumer_pending_messages", map[string]string{"consumer": c})
			a, ok2 := value(fams, "jetsaga_consumer_ack_pending_messages", map[string]string{"consumer": c})
			if !ok1 || !ok2 || p+a > 0 {
				return false
			}
		}
		l, ok := value(fams, "jetsaga_projector_lag_seconds", map[string]string{"stream": "SAGA_HISTORY_0"})
		return ok && l == 0
	})
	want := []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"jetsaga_sagas_started_total", map[string]string{"workflow_type": "order"}, 3},
		{"jetsaga_sagas_ended_total", map[string]string{"workflow_type": "order", "status": "completed"}, 1},
		{"jetsaga_sagas_ended_total", map[string]string{"workflow_type": "order", "status": "failed"}, 1},
		{"jetsaga_sagas_ended_total", map[string]string{"workflow_type": "order", "status": "canceled"}, 1},
		{"jetsaga_occ_conflicts_total", map[string]string{"workflow_type": "order"}, 1},
		{"jetsaga_dead_letters_total", map[string]string{"consumer": "saga-signals"}, 1},
		// Attempts, by outcome, as the back office counted its calls:
		// reserve ran for two sagas (three, when the canceled saga's task
		// went before its cancellation: it is scheduled in the commit that
		// ends the saga), payment succeeded once and failed once, its undo
		// released one reservation.
		{"jetsaga_activity_duration_seconds", map[string]string{"activity_type": order.StepReserveInventory, "outcome": "completed"}, float64(svc.Calls(order.StepReserveInventory))},
		{"jetsaga_activity_duration_seconds", map[string]string{"activity_type": order.StepProcessPayment, "outcome": "completed"}, 1},
		{"jetsaga_activity_duration_seconds", map[string]string{"activity_type": order.StepProcessPayment, "outcome": "failed"}, 1},
		{"jetsaga_activity_duration_seconds", map[string]string{"activity_type": order.StepShipOrder, "outcome": "completed"}, 1},
		{"jetsaga_activity_duration_seconds", map[string]string{"activity_type": order.StepReleaseInventory, "outcome": "completed"}, 1},
		{"jetsaga_consumer_lag_seconds", map[string]string{"stream": "SAGA_HISTORY_0", "consumer": "saga-dispatch"}, 0},
		{"jetsaga_consumer_pending_messages", map[string]string{"stream": "SAGA_TASKS", "consumer": "saga-activities-" + order.StepShipOrder}, 0},
	}
	if c := svc.Calls(order.StepReserveInventory); c != 2 && c != 3 {
		t.Errorf("reserve-inventory ran %d times", c)
	}
	for _, w := range want {
		got, ok := value(fams, w.name, w.labels)
		if !ok || got != w.value {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.value)
		}
	}
	for _, s := range []string{"completed", "failed", "canceled"} {
		if _, ok := value(fams, "jetsaga_sagas_ended_total", map[string]string{"status": s, "workflow_type": "other"}); ok {
			t.Errorf("a saga of a type never run was counted")
		}
	}
	// Every saga was decided on at least once, and the decisions took time.
	if n, ok := value(fams, "jetsaga_decision_duration_seconds", map[string]string{"workflow_type": "order"}); !ok || n < 3 {
		t.Errorf("%v decisions observed, want at least one per saga", n)
	}
	if sum := histogramSum(fams, "jetsaga_decision_duration_seconds"); sum <= 0 {
		t.Errorf("decision durations sum to %v", sum)
	}
	// Each saga was new to the node (a miss), and each activity result of
	// the completed saga found its state live (a hit).
	if hits, _ := value(fams, "jetsaga_saga_cache_lookups_total", map[string]string{"result": "hit"}); hits < 3 {
		t.Errorf("%v cache hits, want at least 3", hits)
	}
	if misses, _ := value(fams, "jetsaga_saga_cache_lookups_total", map[string]string{"result": "miss"}); misses < 3 {
		t.Errorf("%v cache misses, want at least 3", misses)
	}

	if err := node.Stop(e.ctx); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, base+"/healthz"); code != http.StatusServiceUnavailable {
		t.Fatalf("healthz of a stopped node: %d, want 503", code)
	}
	// A stopped node leaves the registry to the next one.
	if _, ok := scrape(t, base)["jetsaga_sagas_started_total"]; ok {
		t.Error("a stopped node's metrics are still registered")
	}
	next, err := worker.New(e.srv.Conn(), reg2, worker.Options{Logger: logger(), Metrics: reg})
	if err != nil {
		t.Fatalf("a node on the registry a stopped node left: %v", err)
	}
	if _, err := worker.New(e.srv.Conn(), reg2, worker.Options{Logger: logger(), Metrics: reg}); err == nil {
		t.Error("two nodes registered their metrics on one registry")
	}
	_ = next.Stop(e.ctx)
}

// TestHealthzFollowsTheConnection: a running node whose NATS connection
// is down is not healthy.
func TestHealthzFollowsTheConnection(t *testing.T) {
	e := newEnv(t)
	nc := e.srv.Conn()
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	node, err := worker.New(nc, reg, worker.Options{Logger: logger(), DisableAPI: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = node.StopAndCancel(context.Background()) }()
	if err := node.Healthy(); err != nil {
		t.Fatalf("running node: %v", err)
	}
	nc.Close()
	if err := node.Healthy(); err == nil || !strings.Contains(err.Error(), "CLOSED") {
		t.Fatalf("node without its connection: %v, want NATS connection CLOSED", err)
	}
}

// TestSagaIsOneTrace runs an order saga on two nodes, one with the
// workflow and one with the activities, each with its own tracer provider
// as separate processes have: every span of the saga shares the trace id
// derived from the saga id; the activity attempts join it through the
// traceparent of their task messages; the saga's root span, recorded by
// the node that ended it, has the derived span id.
func TestSagaIsOneTrace(t *testing.T) {
	e := newEnv(t)
	const id = "traced-1"
	defs := order.NewService().Definitions()
	provider := func() (*sdktrace.TracerProvider, *tracetest.InMemoryExporter) {
		exp := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithIDGenerator(telemetry.IDGenerator{}))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp, exp
	}
	tpA, expA := provider()
	tpB, expB := provider()

	// What task messages carry on the wire.
	headers := make(chan nats.Header, 64)
	sub, err := e.srv.Conn().Subscribe("saga.task.>", func(m *nats.Msg) {
		if strings.Contains(m.Subject, id) {
			headers <- m.Header
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	// Tasks only: an activity the dispatching node runs eagerly has no
	// task message (TestEagerActivitySpans covers those).
	e.node(worker.Options{TracerProvider: tpA, NodeName: "wf", DisableEagerActivities: true}, defs[0])
	e.node(worker.Options{TracerProvider: tpB, NodeName: "acts", DisableEagerActivities: true}, defs[1:]...)
	if _, err := run(e, order.Workflow, id, order.Input{OrderID: id, Items: []order.Item{{SKU: "pen", Qty: 1}}, Amount: 3}); err != nil {
		t.Fatal(err)
	}
	sagaSC := telemetry.SagaSpanContext("saga", id)
	natstest.WaitFor(t, 10*time.Second, "the saga's root span", func() bool {
		return len(spansNamed(expA.GetSpans(), "saga order")) == 1
	})

	root := spansNamed(expA.GetSpans(), "saga order")[0]
	if root.SpanContext.TraceID() != sagaSC.TraceID() || root.SpanContext.SpanID() != sagaSC.SpanID() || root.Parent.IsValid() {
		t.Fatalf("root span %s/%s parent %v, want %s/%s without parent", root.SpanContext.TraceID(), root.SpanContext.SpanID(),
			root.Parent.SpanID(), sagaSC.TraceID(), sagaSC.SpanID())
	}
	if got := attr(root.Attributes, telemetry.AttrSagaStatus); got != "completed" {
		t.Errorf("root span status attribute %q", got)
	}
	for _, s := range append(expA.GetSpans(), expB.GetSpans()...) {
		if s.SpanContext.TraceID() != sagaSC.TraceID() {
			t.Errorf("span %q in trace %s, want the saga's %s", s.Name, s.SpanContext.TraceID(), sagaSC.TraceID())
		}
	}

	// The activity node ran one attempt of each step, under the saga's
	// root as the task headers name it. An attempt's span ends once its
	// outcome is recorded, which may be after the saga's end.
	natstest.WaitFor(t, 10*time.Second, "the three activity spans", func() bool {
		k := 0
		for _, s := range expB.GetSpans() {
			if strings.HasPrefix(s.Name, "activity ") {
				k++
			}
		}
		return k >= 3
	})
	activities := map[string]tracetest.SpanStub{}
	for _, s := range expB.GetSpans() {
		if strings.HasPrefix(s.Name, "activity ") {
			activities[attr(s.Attributes, telemetry.AttrActivityType)] = s
			if s.Parent.SpanID() != sagaSC.SpanID() || attr(s.Attributes, telemetry.AttrSagaID) != id || attr(s.Attributes, telemetry.AttrAttempt) != "1" {
				t.Errorf("activity span %q: parent %s, attributes %v", s.Name, s.Parent.SpanID(), s.Attributes)
			}
		}
	}
	for _, step := range []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder} {
		if _, ok := activities[step]; !ok {
			t.Errorf("no span for activity %s (spans of the activity node: %v)", step, names(expB.GetSpans()))
		}
	}
	if len(activities) != 3 {
		t.Errorf("activity spans %v, want the three steps", names(expB.GetSpans()))
	}
	// The activity node recorded each result as inputs, within the
	// attempt's span.
	for _, s := range spansNamed(expB.GetSpans(), "record order") {
		if !isActivitySpan(s.Parent.SpanID(), activities) {
			t.Errorf("record span not under an activity attempt: parent %s", s.Parent.SpanID())
		}
	}
	// The workflow node decided on the start and on each result.
	decisions := spansNamed(expA.GetSpans(), "decide order")
	if len(decisions) < 4 {
		t.Errorf("%d decision spans, want at least 4 (names: %v)", len(decisions), names(expA.GetSpans()))
	}
	covered := map[string]bool{}
	for _, s := range decisions {
		if s.Parent.SpanID() != sagaSC.SpanID() {
			t.Errorf("decision span parent %s, want the saga's root", s.Parent.SpanID())
		}
		if attr(s.Attributes, telemetry.AttrSagaID) != id || attr(s.Attributes, telemetry.AttrWorkflowType) != "order" {
			t.Errorf("decision span attributes %v", s.Attributes)
		}
		if first := attr(s.Attributes, telemetry.AttrFirstEventID); first != "" {
			covered[first] = true
		}
	}
	if !covered["1"] {
		t.Errorf("no decision span appended the first decision (event 1); first event ids: %v", covered)
	}

	// Every task message of the saga carried the root's traceparent.
	wantTP := fmt.Sprintf("00-%s-%s-01", sagaSC.TraceID(), sagaSC.SpanID())
	if len(headers) < 3 {
		t.Errorf("%d task messages seen, want at least the three activity tasks", len(headers))
	}
	for len(headers) > 0 {
		if h := <-headers; h.Get("traceparent") != wantTP {
			t.Errorf("task message traceparent %q, want %q", h.Get("traceparent"), wantTP)
		}
	}
}

func isActivitySpan(id trace.SpanID, activities map[string]tracetest.SpanStub) bool {
	for _, a := range activities {
		if a.SpanContext.SpanID() == id {
			return true
		}
	}
	return false
}

func spansNamed(spans tracetest.SpanStubs, name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func names(spans tracetest.SpanStubs) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name
	}
	return out
}

func attr(attrs []attribute.KeyValue, key attribute.Key) string {
	for _, a := range attrs {
		if a.Key == key {
			return a.Value.String()
		}
	}
	return ""
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value finds the series of family name whose labels include labels: a
// counter's or gauge's value, a histogram's count.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func histogramSum(fams map[string]*dto.MetricFamily, name string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		sum += m.GetHistogram().GetSampleSum()
	}
	return sum
}

// A history's workflow type is whatever its writer chose: sagas of types
// no node registers share one label, so junk types cannot grow the
// metrics without bound.
func TestMetricsLabelOnlyRegisteredTypes(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	node, err := worker.New(e.srv.Conn(), saga.NewRegistry(), worker.Options{Logger: logger(), Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = node.Stop(context.Background()) }()
	srv, err := telemetry.Serve("127.0.0.1:0", reg, node.Healthy, logger())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Close(context.Background()) }()
	for i := range 3 {
		// The node records a signal to each, though it runs no code: the
		// first commit after the start counts the saga as started.
		id := fmt.Sprintf("junk-%d", i)
		if _, err := e.cl.Start(e.ctx, id, nil, saga.StartOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
		if err := e.cl.Signal(e.ctx, id, "poke", i); err != nil {
			t.Fatal(err)
		}
	}
	base := "http://" + srv.Addr()
	var fams map[string]*dto.MetricFamily
	natstest.WaitFor(t, 20*time.Second, "the three sagas taken up", func() bool {
		fams = scrape(t, base)
		n, _ := value(fams, "jetsaga_sagas_started_total", map[string]string{"workflow_type": "unregistered"})
		return n == 3
	})
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "workflow_type" && strings.HasPrefix(l.GetValue(), "junk-") {
					t.Errorf("%s has a series for type %s", f.GetName(), l.GetValue())
				}
			}
		}
	}
}
