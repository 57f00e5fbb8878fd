package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetsaga/saga/stream"
)

// ConsumerLag is one durable consumer's backlog.
type ConsumerLag struct {
	Stream      string `json:"stream"`
	Consumer    string `json:"consumer"`
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// LagSeconds is how long the oldest message not yet handled has
	// waited; 0 when none waits.
	LagSeconds float64 `json:"lag_seconds"`
}

// ErrNoStreams means no stream of the engine's prefix exists.
var ErrNoStreams = errors.New("no stream of the engine")

// EngineLags reads the backlog of every durable consumer of the engine's
// streams (prefix as in stream.Config: the history, task, inbox and
// dead-letter streams and the engine's buckets): how far behind the
// dispatcher, the timers, the inbox, the tasks of each type and the
// projector are, in messages and in seconds. It returns what it read
// before an error, with the error.
func EngineLags(ctx context.Context, js jetstream.JetStream, prefix string) ([]ConsumerLag, error) {
	upper := strings.ToUpper(prefix) + "_"
	names := js.StreamNames(ctx)
	var streams []string
	for name := range names.Name() {
		if strings.HasPrefix(name, upper) || strings.HasPrefix(name, "KV_"+upper) {
			streams = append(streams, name)
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, fmt.Errorf("list streams: %w", stream.MapError(err))
	}
	if len(streams) == 0 {
		return nil, fmt.Errorf("%w: prefix %q", ErrNoStreams, prefix)
	}
	now := time.Now()
	var out []ConsumerLag
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return out, fmt.Errorf("stream %s: %w", name, stream.MapError(err))
		}
		infos := s.ListConsumers(ctx)
		for info := range infos.Info() {
			out = append(out, ReadLag(ctx, s, info, now))
		}
		if err := infos.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
			return out, fmt.Errorf("consumers of %s: %w", name, stream.MapError(err))
		}
	}
	return out, nil
}

// ReadLag is the backlog of the consumer info describes, on stream s: its
// counts, and the age at now of the oldest message it has not seen
// through (read from the stream; left 0 if that read fails).
func ReadLag(ctx context.Context, s jetstream.Stream, info *jetstream.ConsumerInfo, now time.Time) ConsumerLag {
	l := ConsumerLag{Stream: info.Stream, Consumer: info.Name, Pending: info.NumPending,
		AckPending: info.NumAckPending, Redelivered: info.NumRedelivered}
	if info.NumPending+uint64(info.NumAckPending) > 0 {
		// The first message past the ack floor that the consumer takes.
		m, err := s.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(info.Config.FilterSubject))
		if err == nil {
			l.LagSeconds = max(now.Sub(m.Time).Seconds(), 0)
		}
	}
	return l
}

// lagCollector reads the consumers' lag when scraped: no reading between
// scrapes, and none that outlasts its timeout.
type lagCollector struct {
	o                                              MetricsOptions
	pending, ackPending, redelivered, lag, projLag *prometheus.Desc
	errors                                         prometheus.Counter

	// The last reading, shared by the scrapes within lagReuse of it: a
	// reading lists every stream and consumer, and /metrics is often open
	// to anyone who can reach it.
	mu     sync.Mutex
	lags   []ConsumerLag
	readAt time.Time
}

// lagReuse is MetricsOptions.LagReuse's default.
const lagReuse = 5 * time.Second

// read returns the lags, read again at most once per lagReuse; concurrent
// scrapes wait for the one reading.
func (c *lagCollector) read() []ConsumerLag {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.readAt.IsZero() && time.Since(c.readAt) < c.o.LagReuse {
		return c.lags
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.o.LagTimeout)
	defer cancel()
	lags, err := c.o.Lags(ctx)
	if err != nil && !errors.Is(err, ErrNoStreams) {
		// Not kept: the next scrape reads again.
		c.errors.Inc()
		c.o.Logger.Warn("reading consumer lag for metrics failed", "err", err)
		return lags
	}
	c.lags, c.readAt = lags, time.Now()
	return lags
}

func newLagCollector(o MetricsOptions) *lagCollector {
	labels := []string{"stream", "consumer"}
	return &lagCollector{
		o: o,
		pending: prometheus.NewDesc(Namespace+"_consumer_pending_messages",
			"Messages of a durable consumer's stream not yet delivered to any node.", labels, nil),
		ackPending: prometheus.NewDesc(Namespace+"_consumer_ack_pending_messages",
			"Messages delivered and not yet acknowledged (in progress or waiting for a redelivery).", labels, nil),
		redelivered: prometheus.NewDesc(Namespace+"_consumer_redelivered_messages",
			"Messages delivered more than once and not yet acknowledged.", labels, nil),
		lag: prometheus.NewDesc(Namespace+"_consumer_lag_seconds",
			"How long the oldest message a durable consumer has not seen through has waited; 0 when none waits.", labels, nil),
		projLag: prometheus.NewDesc(Namespace+"_projector_lag_seconds",
			"How long the oldest commit not yet in the projection (Postgres) has waited, by history stream; 0 when caught up.", []string{"stream"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "consumer_lag_read_errors_total",
			Help: "Scrapes whose reading of the consumers' lag failed or timed out (their lag gauges are then missing or partial)."}),
	}
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.ackPending
	ch <- c.redelivered
	ch <- c.lag
	ch <- c.projLag
	c.errors.Describe(ch)
}

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.read() {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(l.Pending), l.Stream, l.Consumer)
		ch <- prometheus.MustNewConstMetric(c.ackPending, prometheus.GaugeValue, float64(l.AckPending), l.Stream, l.Consumer)
		ch <- prometheus.MustNewConstMetric(c.redelivered, prometheus.GaugeValue, float64(l.Redelivered), l.Stream, l.Consumer)
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, l.LagSeconds, l.Stream, l.Consumer)
		if c.o.ProjectorConsumer != "" && l.Consumer == c.o.ProjectorConsumer {
			ch <- prometheus.MustNewConstMetric(c.projLag, prometheus.GaugeValue, l.LagSeconds, l.Stream)
		}
	}
	c.errors.Collect(ch)
}
