package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetsaga/saga/internal/clock"
	"github.com/jetsaga/saga/stream"
)

// Options configures a Node. Zero fields take the defaults documented on
// each field.
type Options struct {
	// Stream names and sizes the engine's streams. Every node and client
	// of one engine must agree on it. Defaults to prefix "saga", one
	// history shard, replicas 1.
	Stream stream.Config
	// NodeName identifies the node in history and logs. Defaults to
	// <hostname>-<random>.
	NodeName string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// WorkflowConcurrency is how many workflow tasks a node decides at
	// once, and how many history commits it dispatches at once. Defaults
	// to 64.
	WorkflowConcurrency int
	// ActivityConcurrency is how many activity attempts a node runs at
	// once, over all activity types. Defaults to 100.
	ActivityConcurrency int
	// DisableEagerActivities turns off eager activities: by default a node
	// that dispatches a commit scheduling an activity it registers runs
	// the activity itself when it has a free slot, instead of queueing its
	// task (see docs/architecture.md).
	DisableEagerActivities bool
	// DisableDecideOnStart turns off deciding in the start's commit: by
	// default the node's client (the API's and the inbox's starts, and
	// Node.Client) appends a saga of a workflow the node runs together
	// with its first decision.
	DisableDecideOnStart bool
	// CacheSize is how many sagas' workflow states a node keeps live, so
	// that the next step of a saga does not replay its history. Defaults
	// to 1000.
	CacheSize int
	// CacheBytes bounds the memory of those states as well, estimated
	// from their events and values (a long saga can hold megabytes):
	// least recently used sagas go first when either bound is passed.
	// Defaults to 256 MiB.
	CacheBytes int64
	// IdleMachineTimeout is how long a cached saga keeps its workflow code
	// live (a goroutine per coroutine, parked at its last decision) without
	// deciding. Past it the node stops the coroutines and keeps the saga's
	// events and state, so that a parked saga holds no goroutine; its next
	// step replays the cached events (about 2 µs an event, no read). A
	// saga stepping more often than this never replays. It concerns this
	// node's memory only. Defaults to 5s.
	IdleMachineTimeout time.Duration
	// AckWait is how long JetStream waits for a node to acknowledge a
	// message before giving it to another node: the time to take over from
	// a node that died. Nodes heartbeat what they hold at a third of it.
	// It applies when a node creates a shared consumer; a consumer that
	// exists keeps its own, and every node follows that one. It must stay
	// under half the streams' duplicate window. Defaults to 30s.
	AckWait time.Duration
	// DefaultActivityTimeout bounds one activity attempt when neither the
	// activity nor the call sets a timeout (the manual's
	// default_activity_timeout). Defaults to 300s.
	DefaultActivityTimeout time.Duration
	// DeadlockTimeout bounds how long workflow code may run between two
	// engine calls before the saga is blocked as deadlocked. Defaults to 1s.
	DeadlockTimeout time.Duration
	// TimerMarkerTTL is how long the server keeps the marker of a durable
	// timer that fell due: the longest outage of every node after which
	// due timers (retry backoffs, timeouts) still fire. Used when the
	// timers bucket is created; an existing bucket keeps its own. Defaults
	// to 24h.
	TimerMarkerTTL time.Duration
	// Snapshots configures the snapshots of sagas' folded state, which
	// let describe and the node's lookups fold only the end of a long
	// history (see docs/snapshots.md). Nil: stream.DefaultSnapshotConfig,
	// a snapshot every 100 events, 5 kept per saga, checksums verified.
	// Interval decides what this node writes; MaxSnapshots applies when
	// this node creates the bucket, and an existing bucket keeps its own.
	Snapshots *stream.SnapshotConfig
	// DisableAPI turns off the request/reply API service.
	DisableAPI bool
	// Hooks are test seams; nil in production.
	Hooks *Hooks
	// Codec seals the payloads the node writes (workflow outputs, activity
	// inputs and results, signal values published as plain JSON, side
	// effects, heartbeat details) and opens those its code reads. The first
	// node started with one turns sealing on for the fleet: nodes without
	// it, or without every key used so far, then refuse to start
	// (stream.ErrCodecMismatch). A node with ProjectorOnly needs none.
	Codec stream.PayloadCodec
	// Projection, when set, receives every history commit (package
	// pgarchive writes them to Postgres); the node then shares the
	// projector consumer with the other nodes that have one. Sagas never
	// wait for it.
	Projection Projection
	// ProjectorOnly makes a node with a Projection do nothing else: it
	// feeds the projection and serves the API's list, and runs no saga.
	ProjectorOnly bool
	// Clock tells the node the time; tests may move it by hand. Defaults
	// to the system clock.
	Clock clock.Clock
	// Metrics, when set, receives the node's Prometheus metrics (see
	// docs/observability.md) until it stops: give each node a registry of
	// its own. Nil: no metrics.
	Metrics prometheus.Registerer
	// TracerProvider, when set, makes the node's spans: one trace per saga,
	// a span per decision and per activity attempt. Nil: no tracing, at no
	// cost.
	TracerProvider trace.TracerProvider
}

// Hooks let tests stop a node at precise points.
type Hooks struct {
	// BeforeAppend runs before the node appends a commit. An error aborts
	// the append as if the node had died just before it.
	BeforeAppend func(ctx context.Context, sagaID string, commit *stream.Commit) error
	// AfterAppend runs after a commit was appended, before anything else
	// (the acknowledgement of the message that led to it, say) happens.
	AfterAppend func(ctx context.Context, sagaID string, commit *stream.Commit)
}

func (o Options) withDefaults() Options {
	o.Stream = o.Stream.Defaults()
	if o.NodeName == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "node"
		}
		o.NodeName = host + "-" + nuid.Next()[:8]
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.WorkflowConcurrency == 0 {
		o.WorkflowConcurrency = 64
	}
	if o.ActivityConcurrency == 0 {
		o.ActivityConcurrency = 100
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = 256 << 20
	}
	if o.CacheSize == 0 {
		o.CacheSize = 1000
	}
	if o.IdleMachineTimeout == 0 {
		o.IdleMachineTimeout = 5 * time.Second
	}
	if o.AckWait == 0 {
		o.AckWait = 30 * time.Second
	}
	if o.DefaultActivityTimeout == 0 {
		o.DefaultActivityTimeout = 300 * time.Second
	}
	if o.DeadlockTimeout == 0 {
		o.DeadlockTimeout = time.Second
	}
	if o.TimerMarkerTTL == 0 {
		o.TimerMarkerTTL = 24 * time.Hour
	}
	if o.Clock == nil {
		o.Clock = clock.Real
	}
	snapshots := stream.DefaultSnapshotConfig()
	if o.Snapshots != nil {
		snapshots = o.Snapshots.WithDefaults()
	}
	o.Snapshots = &snapshots // a copy: the caller's may change after New
	return o
}

func (o Options) validate() error {
	if err := o.Stream.Validate(); err != nil {
		return err
	}
	if err := o.Snapshots.Validate(); err != nil {
		return fmt.Errorf("worker options: %w", err)
	}
	switch {
	case o.WorkflowConcurrency < 1:
		return fmt.Errorf("worker options: WorkflowConcurrency must be positive, got %d", o.WorkflowConcurrency)
	case o.ActivityConcurrency < 1:
		return fmt.Errorf("worker options: ActivityConcurrency must be positive, got %d", o.ActivityConcurrency)
	case o.ProjectorOnly && o.Projection == nil:
		return fmt.Errorf("worker options: ProjectorOnly needs a Projection")
	case o.CacheSize < 1:
		return fmt.Errorf("worker options: CacheSize must be positive, got %d", o.CacheSize)
	case o.CacheBytes < 0:
		return fmt.Errorf("worker options: CacheBytes must be positive, got %d", o.CacheBytes)
	case o.IdleMachineTimeout < minIdleMachineTimeout:
		return fmt.Errorf("worker options: IdleMachineTimeout must be at least %s, got %s", minIdleMachineTimeout, o.IdleMachineTimeout)
	case o.AckWait < time.Second:
		return fmt.Errorf("worker options: AckWait must be at least 1s, got %s", o.AckWait)
	case o.AckWait >= o.Stream.DuplicateWindow/2:
		// A message redelivered after the window could publish its
		// effects again after the window forgot the first ones.
		return fmt.Errorf("worker options: AckWait %s must be under half the duplicate window (%s)", o.AckWait, o.Stream.DuplicateWindow)
	case o.TimerMarkerTTL < time.Second:
		return fmt.Errorf("worker options: TimerMarkerTTL must be at least 1s, got %s", o.TimerMarkerTTL)
	}
	return nil
}
