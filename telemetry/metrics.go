package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric of the engine.
const Namespace = "jetsaga"

// Outcomes of an activity attempt, as the activity latency histogram labels
// them.
const (
	OutcomeCompleted = "completed"
	OutcomeFailed    = "failed"
	OutcomeTimedOut  = "timed_out"
	// OutcomeCanceled: stopped because the saga was canceled.
	OutcomeCanceled = "canceled"
	// OutcomeStopped: stopped because the activity closed meanwhile, or its
	// heartbeat timeout gave the attempt up.
	OutcomeStopped = "stopped"
)

// Metrics are one node's Prometheus metrics. A nil *Metrics records
// nothing. Counters count what this node did, so that summing them over a
// fleet counts each thing once; the consumer lag gauges are read from
// JetStream when scraped, and are the same on every node.
type Metrics struct {
	reg          prometheus.Registerer
	collectors   []prometheus.Collector
	sagasStarted *prometheus.CounterVec
	sagasEnded   *prometheus.CounterVec
	decisions    *prometheus.HistogramVec
	activities   *prometheus.HistogramVec
	conflicts    *prometheus.CounterVec
	cacheHits    prometheus.Counter
	cacheMisses  prometheus.Counter
	deadLetters  *prometheus.CounterVec
	historyWarn  *prometheus.CounterVec
	historyLimit *prometheus.CounterVec
}

// MetricsOptions configures NewMetrics.
type MetricsOptions struct {
	// Lags reads the lag of the engine's durable consumers; it is called on
	// each scrape, within LagTimeout. Nil: no lag metrics.
	Lags func(ctx context.Context) ([]ConsumerLag, error)
	// LagTimeout bounds one reading of the lags. Defaults to 2s.
	LagTimeout time.Duration
	// LagReuse is how long one successful reading serves the scrapes that
	// follow (concurrent ones wait for it). Defaults to 5s.
	LagReuse time.Duration
	// ProjectorConsumer names the durable consumer that feeds the
	// projection, whose lag is also reported as the projector's.
	ProjectorConsumer string
	// Logger reports lag readings that failed. Defaults to slog.Default().
	Logger *slog.Logger
}

// Buckets of the latency histograms: a decision takes a fraction of a
// millisecond to a few (more when the history must be read); an activity
// anything from a millisecond to minutes.
var (
	decisionBuckets = prometheus.ExponentialBuckets(0.00025, 2, 16) // 0.25 ms .. 8 s
	activityBuckets = prometheus.ExponentialBuckets(0.001, 4, 10)   // 1 ms .. 262 s
)

// NewMetrics creates a node's metrics and registers them with reg, which
// must not hold another node's.
func NewMetrics(reg prometheus.Registerer, o MetricsOptions) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("telemetry: no registerer")
	}
	if o.LagReuse <= 0 {
		o.LagReuse = lagReuse
	}
	if o.LagTimeout <= 0 {
		o.LagTimeout = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cacheLookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "saga_cache_lookups_total",
		Help: "Lookups of a saga in the node's cache, by result: hit (its state was live) or miss (a new saga, one evicted, or met mid-way).",
	}, []string{"result"})
	m := &Metrics{
		reg: reg,
		sagasStarted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sagas_started_total",
			Help: "Sagas this node took up: counted at the first commit a node appends after the saga's start, which exactly one node appends.",
		}, []string{"workflow_type"}),
		sagasEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "sagas_ended_total",
			Help: "Sagas whose terminal commit this node appended, by status: completed, failed, canceled, timed_out.",
		}, []string{"workflow_type", "status"}),
		decisions: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "decision_duration_seconds",
			Help:    "Decision steps that ran workflow code: bring the saga up to date (read or cache), replay, decide, append.",
			Buckets: decisionBuckets,
		}, []string{"workflow_type"}),
		activities: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "activity_duration_seconds",
			Help:    "Activity attempts this node ran, by outcome: completed, failed, timed_out, canceled, stopped.",
			Buckets: activityBuckets,
		}, []string{"activity_type", "outcome"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "occ_conflicts_total",
			Help: "Appends of this node refused because another writer appended to the saga first (optimistic concurrency).",
		}, []string{"workflow_type"}),
		cacheHits:   cacheLookups.WithLabelValues("hit"),
		cacheMisses: cacheLookups.WithLabelValues("miss"),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "dead_letters_total",
			Help: "Messages this node set aside in the dead-letter stream, by durable consumer.",
		}, []string{"consumer"}),
		historyWarn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "history_length_warnings_total",
			Help: "Saga runs this node found at or past the fleet's history warning length (once per run per node): their workflows should continue as new.",
		}, []string{"workflow_type"}),
		historyLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "history_limit_blocks_total",
			Help: "Sagas this node blocked because their run reached the fleet's history limit (reason history_too_long).",
		}, []string{"workflow_type"}),
	}
	m.collectors = []prometheus.Collector{m.sagasStarted, m.sagasEnded, m.decisions, m.activities, m.conflicts, cacheLookups, m.deadLetters, m.historyWarn, m.historyLimit}
	if o.Lags != nil {
		m.collectors = append(m.collectors, newLagCollector(o))
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("telemetry: register metrics (one registry per node): %w", err)
		}
	}
	return m, nil
}

// Unregister removes the metrics from the registerer.
func (m *Metrics) Unregister() {
	if m == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

// SagaStarted counts a saga this node took up.
func (m *Metrics) SagaStarted(workflowType string) {
	if m != nil {
		m.sagasStarted.WithLabelValues(workflowType).Inc()
	}
}

// SagaEnded counts a saga whose terminal commit this node appended.
func (m *Metrics) SagaEnded(workflowType, status string) {
	if m != nil {
		m.sagasEnded.WithLabelValues(workflowType, status).Inc()
	}
}

// Decision observes a decision step that ran workflow code.
func (m *Metrics) Decision(workflowType string, d time.Duration) {
	if m != nil {
		m.decisions.WithLabelValues(workflowType).Observe(d.Seconds())
	}
}

// Activity observes an activity attempt.
func (m *Metrics) Activity(activityType, outcome string, d time.Duration) {
	if m != nil {
		m.activities.WithLabelValues(activityType, outcome).Observe(d.Seconds())
	}
}

// Conflict counts an append refused as concurrent.
func (m *Metrics) Conflict(workflowType string) {
	if m != nil {
		m.conflicts.WithLabelValues(workflowType).Inc()
	}
}

// CacheLookup counts a lookup of a saga in the node's cache.
func (m *Metrics) CacheLookup(hit bool) {
	switch {
	case m == nil:
	case hit:
		m.cacheHits.Inc()
	default:
		m.cacheMisses.Inc()
	}
}

// DeadLetter counts a message this node set aside.
func (m *Metrics) DeadLetter(consumer string) {
	if m != nil {
		m.deadLetters.WithLabelValues(consumer).Inc()
	}
}

// HistoryWarning counts a saga run this node found at or past the history
// warning length.
func (m *Metrics) HistoryWarning(workflowType string) {
	if m != nil {
		m.historyWarn.WithLabelValues(workflowType).Inc()
	}
}

// HistoryLimitReached counts a saga this node blocked at the history
// limit.
func (m *Metrics) HistoryLimitReached(workflowType string) {
	if m != nil {
		m.historyLimit.WithLabelValues(workflowType).Inc()
	}
}
