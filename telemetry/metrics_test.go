package telemetry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/telemetry"
)

// TestEngineLags reads the backlog of a real durable consumer: messages
// waiting, and how long the oldest has waited, then nothing once all are
// acknowledged. Streams of another prefix are not the engine's.
func TestEngineLags(t *testing.T) {
	srv := natstest.Start(t)
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for name, subject := range map[string]string{"SAGA_WORK": "saga.work.>", "OTHER_WORK": "other.work.>"} {
		s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{subject}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "worker", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := telemetry.EngineLags(ctx, js, "nope"); !errors.Is(err, telemetry.ErrNoStreams) {
		t.Fatalf("lags of a prefix without streams: %v", err)
	}
	for range 3 {
		if _, err := js.Publish(ctx, "saga.work.a", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	var lags []telemetry.ConsumerLag
	natstest.WaitFor(t, 5*time.Second, "the oldest message to have waited", func() bool {
		if lags, err = telemetry.EngineLags(ctx, js, "saga"); err != nil {
			t.Fatal(err)
		}
		return len(lags) == 1 && lags[0].LagSeconds > 0
	})
	if l := lags[0]; l.Stream != "SAGA_WORK" || l.Consumer != "worker" || l.Pending != 3 || l.AckPending != 0 || l.LagSeconds > 5 {
		t.Fatalf("lag %+v: want 3 pending on SAGA_WORK/worker, waiting a moment", l)
	}

	cons, err := js.Consumer(ctx, "SAGA_WORK", "worker")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if lags, err = telemetry.EngineLags(ctx, js, "saga"); err != nil || lags[0].Pending != 0 || lags[0].AckPending != 3 || lags[0].LagSeconds <= 0 {
		t.Fatalf("lags with 3 delivered, unacknowledged: %+v, %v", lags, err)
	}
	for _, m := range msgs {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if lags, err = telemetry.EngineLags(ctx, js, "saga"); err != nil || lags[0].Pending != 0 || lags[0].AckPending != 0 || lags[0].LagSeconds != 0 {
		t.Fatalf("lags once all are acknowledged: %+v, %v", lags, err)
	}
}

// TestMetricsServer serves a node's metrics and health on a real
// listener: the lag is read on each scrape (a failed reading leaves the
// rest served and is counted), /healthz follows the health function, and
// one registry takes one node's metrics.
func TestMetricsServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	var reads atomic.Int32
	var failLag atomic.Bool
	m, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{
		Lags: func(ctx context.Context) ([]telemetry.ConsumerLag, error) {
			reads.Add(1)
			if _, ok := ctx.Deadline(); !ok {
				t.Error("lag read without a deadline")
			}
			lags := []telemetry.ConsumerLag{
				{Stream: "SAGA_HISTORY_0", Consumer: "saga-dispatch", Pending: 7, AckPending: 2, Redelivered: 1, LagSeconds: 1.5},
				{Stream: "SAGA_HISTORY_0", Consumer: "saga-projector", Pending: 40, LagSeconds: 12},
			}
			if failLag.Load() {
				return lags[:1], errors.New("NATS away")
			}
			return lags, nil
		},
		ProjectorConsumer: "saga-projector",
		Logger:            natstest.Logger(),
		LagReuse:          time.Nanosecond, // every scrape reads
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{}); err == nil {
		t.Fatal("a second node's metrics registered on one registry")
	}
	if reads.Load() != 0 {
		t.Fatal("lag read before any scrape")
	}
	m.SagaStarted("order")
	m.SagaStarted("order")
	m.SagaEnded("order", "completed")
	m.Decision("order", 3*time.Millisecond)
	m.Activity("pay", telemetry.OutcomeCompleted, 20*time.Millisecond)
	m.Conflict("order")
	m.CacheLookup(true)
	m.CacheLookup(false)
	m.CacheLookup(false)
	m.DeadLetter("saga-signals")

	var healthy atomic.Bool
	srv, err := telemetry.Serve("127.0.0.1:0", reg, func() error {
		if healthy.Load() {
			return nil
		}
		return errors.New("node not running")
	}, natstest.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	base := "http://" + srv.Addr()
	if code, body := httpGet(t, base+"/healthz"); code != http.StatusServiceUnavailable || body != "node not running\n" {
		t.Fatalf("unhealthy: %d %q", code, body)
	}
	healthy.Store(true)
	if code, body := httpGet(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("healthy: %d %q", code, body)
	}

	want := `
# HELP jetsaga_sagas_started_total Sagas this node took up: counted at the first commit a node appends after the saga's start, which exactly one node appends.
# TYPE jetsaga_sagas_started_total counter
jetsaga_sagas_started_total{workflow_type="order"} 2
# HELP jetsaga_sagas_ended_total Sagas whose terminal commit this node appended, by status: completed, failed, canceled, timed_out.
# TYPE jetsaga_sagas_ended_total counter
jetsaga_sagas_ended_total{status="completed",workflow_type="order"} 1
# HELP jetsaga_occ_conflicts_total Appends of this node refused because another writer appended to the saga first (optimistic concurrency).
# TYPE jetsaga_occ_conflicts_total counter
jetsaga_occ_conflicts_total{workflow_type="order"} 1
# HELP jetsaga_saga_cache_lookups_total Lookups of a saga in the node's cache, by result: hit (its state was live) or miss (a new saga, one evicted, or met mid-way).
# TYPE jetsaga_saga_cache_lookups_total counter
jetsaga_saga_cache_lookups_total{result="hit"} 1
jetsaga_saga_cache_lookups_total{result="miss"} 2
# HELP jetsaga_dead_letters_total Messages this node set aside in the dead-letter stream, by durable consumer.
# TYPE jetsaga_dead_letters_total counter
jetsaga_dead_letters_total{consumer="saga-signals"} 1
# HELP jetsaga_consumer_pending_messages Messages of a durable consumer's stream not yet delivered to any node.
# TYPE jetsaga_consumer_pending_messages gauge
jetsaga_consumer_pending_messages{consumer="saga-dispatch",stream="SAGA_HISTORY_0"} 7
jetsaga_consumer_pending_messages{consumer="saga-projector",stream="SAGA_HISTORY_0"} 40
# HELP jetsaga_consumer_ack_pending_messages Messages delivered and not yet acknowledged (in progress or waiting for a redelivery).
# TYPE jetsaga_consumer_ack_pending_messages gauge
jetsaga_consumer_ack_pending_messages{consumer="saga-dispatch",stream="SAGA_HISTORY_0"} 2
jetsaga_consumer_ack_pending_messages{consumer="saga-projector",stream="SAGA_HISTORY_0"} 0
# HELP jetsaga_consumer_lag_seconds How long the oldest message a durable consumer has not seen through has waited; 0 when none waits.
# TYPE jetsaga_consumer_lag_seconds gauge
jetsaga_consumer_lag_seconds{consumer="saga-dispatch",stream="SAGA_HISTORY_0"} 1.5
jetsaga_consumer_lag_seconds{consumer="saga-projector",stream="SAGA_HISTORY_0"} 12
# HELP jetsaga_projector_lag_seconds How long the oldest commit not yet in the projection (Postgres) has waited, by history stream; 0 when caught up.
# TYPE jetsaga_projector_lag_seconds gauge
jetsaga_projector_lag_seconds{stream="SAGA_HISTORY_0"} 12
# HELP jetsaga_consumer_lag_read_errors_total Scrapes whose reading of the consumers' lag failed or timed out (their lag gauges are then missing or partial).
# TYPE jetsaga_consumer_lag_read_errors_total counter
jetsaga_consumer_lag_read_errors_total 0
`
	names := []string{"jetsaga_sagas_started_total", "jetsaga_sagas_ended_total", "jetsaga_occ_conflicts_total", "jetsaga_saga_cache_lookups_total",
		"jetsaga_dead_letters_total", "jetsaga_consumer_pending_messages", "jetsaga_consumer_ack_pending_messages",
		"jetsaga_consumer_lag_seconds", "jetsaga_projector_lag_seconds", "jetsaga_consumer_lag_read_errors_total"}
	if err := testutil.ScrapeAndCompare(base+"/metrics", strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "jetsaga_decision_duration_seconds", "jetsaga_activity_duration_seconds"); err != nil || n != 2 {
		t.Fatalf("%d latency series, %v", n, err)
	}

	// A failed reading serves what it read and counts the failure.
	failLag.Store(true)
	code, body := httpGet(t, base+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "jetsaga_consumer_lag_read_errors_total 1") ||
		!strings.Contains(body, `jetsaga_sagas_started_total{workflow_type="order"} 2`) || strings.Contains(body, "jetsaga_projector_lag_seconds{") {
		t.Fatalf("scrape with a failed lag reading: %d\n%s", code, body)
	}

	m.Unregister()
	if n, _ := testutil.GatherAndCount(reg); n != 0 {
		t.Fatalf("%d series left after Unregister", n)
	}
	if _, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{}); err != nil {
		t.Fatalf("registry freed by Unregister: %v", err)
	}
	var off *telemetry.Metrics
	off.SagaStarted("order") // a node without metrics
	off.CacheLookup(true)
	off.Unregister()
}

func TestServeRefusesABadAddress(t *testing.T) {
	if _, err := telemetry.Serve("127.0.0.1:notaport", prometheus.NewRegistry(), func() error { return nil }, nil); err == nil {
		t.Fatal("served on a bad address")
	}
}

func httpGet(t *testing.T, url string) (int, string) {
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

// Scrapes close together share one reading of the lags: each lists every
// stream and consumer, and /metrics is often open to anyone.
func TestLagReadingIsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	var reads atomic.Int32
	_, err := telemetry.NewMetrics(reg, telemetry.MetricsOptions{
		Lags: func(context.Context) ([]telemetry.ConsumerLag, error) {
			reads.Add(1)
			return []telemetry.ConsumerLag{{Stream: "SAGA_HISTORY_0", Consumer: "saga-dispatch"}}, nil
		},
		Logger: natstest.Logger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := reg.Gather(); err != nil {
			t.Fatal(err)
		}
	}
	if got := reads.Load(); got != 1 {
		t.Fatalf("5 scrapes within the reuse window read the lags %d times", got)
	}
}
