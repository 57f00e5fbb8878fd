package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/clock"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
)

// Node runs workflows and activities of a Registry against the engine's
// streams. Nodes are stateless: any number of them share the work, and any
// of them can take over a saga from one that died.
type Node struct {
	opts   Options
	reg    *saga.Registry
	nc     *nats.Conn
	store  *stream.Store
	client *saga.Client
	log    *slog.Logger
	hooks  *Hooks
	clock  clock.Clock
	cache  *sagaCache
	// activitySlots bound the activity attempts the node runs, from tasks
	// and eagerly; nil when it registers no activity.
	activitySlots chan struct{}
	// eagerSlots bound the commits the node holds for eager runs (see
	// eagerBudget); eagerGate keeps long runs off that path.
	eagerSlots chan struct{}
	eagerGate  eagerGate
	// startSlots bound the starts decided at once (see appendStart).
	startSlots chan struct{}
	stats      nodeStats
	timersCfg  kv.TimersConfig
	// inboxCreated caches the inbox stream's creation time (see
	// inboxEpoch).
	inboxCreated atomic.Pointer[inboxEpochRead]
	// timers is set up with the bucket's settings in force when the node
	// starts (see setUp); until then, with the node's own.
	timers   atomic.Pointer[kv.Timers]
	attempts *attemptStore
	// snapshots is the snapshots bucket, set up when the node starts; nil
	// on a node that only projects. Until snapshotWritesPausedUntil (unix
	// nanoseconds) the node writes no snapshot (see snapshotAfter).
	snapshots                 jetstream.KeyValue
	snapshotWritesPausedUntil atomic.Int64
	// limits are the fleet's history limits, as last read (see runs.go).
	limits historyLimitsState

	mu        sync.Mutex
	state     nodeState
	runCtx    context.Context // canceled by StopAndCancel: aborts in-flight work
	cancel    context.CancelFunc
	consumers []*consumer
	// sweeper releases idle machines (see releaseIdleMachines) from Start
	// until stopSweeping.
	sweeper   sync.WaitGroup
	stopSweep context.CancelFunc

	// handlers counts in-flight message handlers, API requests and wakes;
	// once closing is set no more are admitted (see track).
	trackMu  sync.Mutex
	closing  bool
	handlers sync.WaitGroup
	inflight atomic.Int64
	api      micro.Service

	// metrics and tracer are nil when not configured (see telemetry.go);
	// running is set while the node is started and not stopping.
	metrics *telemetry.Metrics
	tracer  *telemetry.Tracer
	running atomic.Bool
}

type nodeState int

const (
	nodeNew nodeState = iota
	nodeRunning
	nodeStopped
)

// nodeStats counts what a node did; see Stats.
type nodeStats struct {
	commits, conflicts, replays, replayedEvents, historyReads, historyLoads, tasksPublished, workflowTasksPublished, activitiesRun, activitiesEager, activityRetries, deadLetters atomic.Int64
	snapshotsWritten, snapshotWriteFailures, snapshotLoads, snapshotsRejected                                                                                                     atomic.Int64
}

// Stats is a snapshot of a node's counters since it started.
type Stats struct {
	// Commits appended by this node.
	Commits int64
	// Conflicts: appends that lost to another writer and were retried.
	Conflicts int64
	// Replays: workflow states this node rebuilt by replaying history;
	// ReplayedEvents the events those replays fed to workflow code (a
	// saga's latest run: the runs before a continue-as-new are never
	// replayed).
	Replays        int64
	ReplayedEvents int64
	// HistoryReads: direct-get reads of saga histories (the whole history,
	// or its last commit to check that the cache is current).
	HistoryReads int64
	// HistoryLoads: of HistoryReads, those of a whole history, for a saga
	// the node did not hold.
	HistoryLoads int64
	// TasksPublished: activity tasks derived from history.
	TasksPublished int64
	// WorkflowTasksPublished: workflow tasks derived from history (commits
	// with inputs the workflow had not decided on).
	WorkflowTasksPublished int64
	// ActivitiesRun: activity attempts executed.
	ActivitiesRun int64
	// ActivitiesEager: of those, first attempts run by the node that
	// dispatched the commit scheduling them, without a task.
	ActivitiesEager int64
	// ActivityRetries: attempts that failed and were scheduled again.
	ActivityRetries int64
	// DeadLetters: messages this node set aside in the dead-letter stream.
	DeadLetters int64
	// CachedSagas and CacheBytes: the sagas in the node's cache now, and
	// the memory they hold, estimated (see Options.CacheBytes).
	CachedSagas int
	CacheBytes  int64
	// SnapshotsWritten: snapshots of sagas' state this node stored;
	// SnapshotWriteFailures: those it could not (logged; nothing else
	// fails for them).
	SnapshotsWritten      int64
	SnapshotWriteFailures int64
	// SnapshotLoads: lookups of sagas the node did not hold that folded a
	// snapshot and the commits after it instead of the whole history.
	SnapshotLoads int64
	// SnapshotsRejected: stored snapshots this node passed over, damaged
	// or not matching the history (logged), for the whole history.
	SnapshotsRejected int64
	// LiveMachines: the cached sagas whose workflow code is live now, its
	// coroutines parked at their last decision; the others hold their
	// events and state only (see Options.IdleMachineTimeout).
	LiveMachines int
	// MachinesReleased: the machines released after going idle; each is
	// rebuilt from the cached events, a replay, at its saga's next step.
	MachinesReleased int64
}

// New returns a node for the definitions in reg, using nc, which stays
// owned by the caller.
func New(nc *nats.Conn, reg *saga.Registry, opts Options) (*Node, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, &saga.Error{Kind: saga.KindConfiguration, Message: "worker", Cause: err}
	}
	store, err := stream.Open(nc, opts.Stream)
	if err != nil {
		return nil, &saga.Error{Kind: saga.KindConfiguration, Message: "worker", Cause: err}
	}
	var self *Node // the node's client starts sagas through it
	client, err := saga.NewClient(nc, saga.ClientOptions{Stream: opts.Stream, Logger: opts.Logger, Codec: opts.Codec,
		AppendStart:          func(ctx context.Context, start *stream.Commit) (uint64, error) { return self.appendStart(ctx, start) },
		SkipSnapshotChecksum: opts.Snapshots.SkipChecksum})
	if err != nil {
		store.Close()
		return nil, err
	}
	cfg := store.Config()
	timersCfg := kv.TimersConfig{Bucket: cfg.TimersBucket(), Replicas: cfg.Replicas, Storage: cfg.Storage, MarkerTTL: opts.TimerMarkerTTL}
	n := &Node{
		opts:       opts,
		reg:        reg,
		nc:         nc,
		store:      store,
		client:     client,
		log:        opts.Logger.With("node", opts.NodeName),
		hooks:      opts.Hooks,
		clock:      opts.Clock,
		cache:      newSagaCache(opts.CacheSize, opts.CacheBytes),
		startSlots: make(chan struct{}, opts.WorkflowConcurrency),
		timersCfg:  timersCfg,
		attempts:   &attemptStore{js: store.JetStream(), bucket: cfg.ActivitiesBucket(), purgeTTL: time.Minute},
	}
	self = n
	n.timers.Store(kv.NewTimers(store.JetStream(), timersCfg, opts.Clock))
	if err := n.setUpTelemetry(); err != nil {
		client.Close()
		store.Close()
		return nil, &saga.Error{Kind: saga.KindConfiguration, Message: "worker", Cause: err}
	}
	return n, nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.opts.NodeName }

// Client returns a client sharing the node's connection and settings.
func (n *Node) Client() *saga.Client { return n.client }

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	cached := n.cache.size()
	return Stats{
		CachedSagas:            cached.sagas,
		CacheBytes:             cached.bytes,
		LiveMachines:           cached.liveMachines,
		MachinesReleased:       cached.releasedMachines,
		Commits:                n.stats.commits.Load(),
		Conflicts:              n.stats.conflicts.Load(),
		Replays:                n.stats.replays.Load(),
		ReplayedEvents:         n.stats.replayedEvents.Load(),
		HistoryReads:           n.stats.historyReads.Load(),
		HistoryLoads:           n.stats.historyLoads.Load(),
		TasksPublished:         n.stats.tasksPublished.Load(),
		WorkflowTasksPublished: n.stats.workflowTasksPublished.Load(),
		ActivitiesRun:          n.stats.activitiesRun.Load(),
		ActivitiesEager:        n.stats.activitiesEager.Load(),
		ActivityRetries:        n.stats.activityRetries.Load(),
		DeadLetters:            n.stats.deadLetters.Load(),
		SnapshotsWritten:       n.stats.snapshotsWritten.Load(),
		SnapshotWriteFailures:  n.stats.snapshotWriteFailures.Load(),
		SnapshotLoads:          n.stats.snapshotLoads.Load(),
		SnapshotsRejected:      n.stats.snapshotsRejected.Load(),
	}
}

// Start creates what is missing of the engine's streams, buckets and
// consumers (it never changes what exists: see stream.EnsureStream), then
// starts its services in order: the consumers (every node dispatches
// history commits and fires timers; a node consumes the workflow and
// activity tasks of the types it registers), then the API. Start can be
// called once.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != nodeNew {
		return saga.NewError(saga.KindConfiguration, "node already started")
	}
	if err := n.setUp(ctx); err != nil {
		return err
	}
	n.runCtx, n.cancel = context.WithCancel(context.Background())
	n.runCtx = n.withTaskHeaders(n.runCtx)
	n.state = nodeRunning
	n.limits.followed = make(chan struct{})
	go n.followHistoryLimits(n.runCtx, n.limits.followed)
	if !n.opts.ProjectorOnly {
		sweepCtx, stop := context.WithCancel(context.Background())
		n.stopSweep = stop
		n.sweeper.Go(func() { n.releaseIdleMachines(sweepCtx) })
	}
	if err := n.startConsumers(ctx); err != nil {
		n.stopLocked(ctx, true)
		return err
	}
	if !n.opts.DisableAPI {
		if err := n.startAPI(); err != nil {
			n.stopLocked(ctx, true)
			return err
		}
		// Subscriptions are sent without waiting for the server; a round
		// trip makes the API answer, through this node's server, requests
		// sent once Start returns (other servers of a cluster learn of the
		// interest a moment later).
		flushCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := n.nc.FlushWithContext(flushCtx)
		cancel()
		if err != nil {
			n.stopLocked(ctx, true)
			return &saga.Error{Kind: saga.KindEventStore, Message: "register API subscriptions", Cause: err}
		}
	}
	n.running.Store(true)
	n.log.Info("node started", "workflows", n.reg.WorkflowNames(), "activities", n.reg.ActivityNames(),
		"prefix", n.opts.Stream.Prefix, "history_shards", n.opts.Stream.HistoryShards)
	return nil
}

// setUp creates what is missing of the streams and buckets.
func (n *Node) setUp(ctx context.Context) error {
	if err := n.store.EnsureStreams(ctx, n.log); err != nil {
		kind := saga.KindEventStore
		if errors.Is(err, stream.ErrIncompatibleSetup) || errors.Is(err, stream.ErrShardsMismatch) {
			kind = saga.KindConfiguration
		}
		return &saga.Error{Kind: kind, Message: "set up streams", Cause: err}
	}
	js := n.store.JetStream()
	if !n.opts.ProjectorOnly {
		// A projector never reads a payload's content; every other node
		// must read what the fleet seals.
		if err := stream.CheckPayloadCodec(ctx, js, n.store.Config(), n.opts.Codec); err != nil {
			kind := saga.KindEventStore
			if errors.Is(err, stream.ErrCodecMismatch) {
				kind = saga.KindConfiguration
			}
			return &saga.Error{Kind: kind, Message: "payload codec", Cause: err}
		}
	}
	// The fleet's history limits, recorded once: this node's own settings
	// count only if it is the first to record them.
	limits, err := n.fleetHistoryLimits(ctx)
	if err != nil {
		kind := saga.KindEventStore
		if errors.Is(err, stream.ErrInvalidHistoryLimits) {
			kind = saga.KindConfiguration
		}
		return &saga.Error{Kind: kind, Message: "history limits", Cause: err}
	}
	if own := n.store.Config().HistoryLimits; own != limits {
		n.log.Warn("this node's history limits differ from the fleet's; following the fleet's (change them with saga-node history-limits)",
			"fleet_warn_events", limits.WarnEvents, "fleet_limit_events", limits.LimitEvents, "fleet_warn_bytes", limits.WarnBytes, "fleet_limit_bytes", limits.LimitBytes,
			"node_warn_events", own.WarnEvents, "node_limit_events", own.LimitEvents, "node_warn_bytes", own.WarnBytes, "node_limit_bytes", own.LimitBytes)
	}
	n.setHistoryLimits(limits)
	timersCfg := n.timersCfg
	timersCfg.Replicas = n.store.Replicas()
	timersKV, err := stream.EnsureKeyValue(ctx, js, timersCfg.KeyValueConfig(), n.log)
	if err != nil {
		return &saga.Error{Kind: saga.KindTimerStore, Message: "set up timers bucket", Cause: err}
	}
	// An existing bucket keeps its marker TTL: timers follow it.
	if status, err := timersKV.Status(ctx); err == nil && status.LimitMarkerTTL() > 0 {
		timersCfg.MarkerTTL = status.LimitMarkerTTL()
	}
	n.timers.Store(kv.NewTimers(js, timersCfg, n.clock))
	cfg := n.store.Config()
	_, err = stream.EnsureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      cfg.ActivitiesBucket(),
		Description: "attempts started of open activities",
		History:     1,
		Replicas:    n.store.Replicas(),
		Storage:     cfg.Storage,
		// Removed records leave a marker this long (see attemptStore.remove).
		LimitMarkerTTL: time.Hour,
	}, n.log)
	if err != nil {
		return &saga.Error{Kind: saga.KindTaskQueue, Message: "set up activities bucket", Cause: err}
	}
	if n.opts.ProjectorOnly {
		return nil // it neither writes snapshots nor looks sagas up
	}
	snapshots, err := stream.EnsureSnapshotBucket(ctx, js, cfg, n.opts.Snapshots.MaxSnapshots, n.store.Replicas(), n.log)
	if err != nil {
		return &saga.Error{Kind: saga.KindSnapshot, Message: "set up snapshots bucket", Cause: err}
	}
	n.snapshots = snapshots
	return nil
}

// Durable consumer names. All nodes share them.
const (
	// dispatcherName is the durable consumer of every history stream that
	// derives effects from commits.
	dispatcherName = stream.DispatcherConsumer
	// timersName is the durable consumer of fired timers.
	timersName = "saga-timers"
)

// startConsumers starts the dispatcher on every history shard, the timers
// consumer, and a consumer of workflow tasks per registered workflow type
// and of activity tasks per registered activity type.
func (n *Node) startConsumers(ctx context.Context) error {
	cfg := n.store.Config()
	if n.opts.ProjectorOnly {
		return n.startProjector(ctx)
	}
	// One pool of slots per kind of work, shared by its consumers, so that
	// the concurrency settings bound the node as a whole.
	dispatchSlots := make(chan struct{}, n.opts.WorkflowConcurrency)
	// Before the dispatcher starts: it runs activities eagerly on them.
	activitySlots := make(chan struct{}, n.opts.ActivityConcurrency)
	if len(n.reg.ActivityNames()) > 0 {
		n.activitySlots = activitySlots
		n.eagerSlots = make(chan struct{}, eagerBudget(n.opts.ActivityConcurrency, n.dispatcherMaxAckPending(ctx)))
	}
	for shard := range cfg.HistoryShards {
		if err := n.addConsumer(ctx, cfg.HistoryStream(shard), dispatcherName, "commits to derive effects from", cfg.HistoryFilter(shard), dispatchSlots, dispatcher{n}); err != nil {
			return err
		}
	}
	if err := n.addConsumer(ctx, n.timersCfg.StreamName(), timersName, "fired timers", n.timersCfg.FilterSubject(), dispatchSlots, firedTimers{n}); err != nil {
		return err
	}
	workflowSlots := make(chan struct{}, n.opts.WorkflowConcurrency)
	for _, name := range n.reg.WorkflowNames() {
		if err := n.addConsumer(ctx, cfg.TaskStream(), stream.WorkflowTaskConsumer(name), "workflow tasks of "+name, cfg.WorkflowTaskSubject(name), workflowSlots, workflowTasks{n}); err != nil {
			return err
		}
	}
	if err := n.startInboxConsumers(ctx, dispatchSlots); err != nil {
		return err
	}
	if err := n.startProjector(ctx); err != nil {
		return err
	}
	for _, name := range n.reg.ActivityNames() {
		if err := n.addConsumer(ctx, cfg.TaskStream(), stream.ActivityTaskConsumer(name), "tasks of activity "+name, cfg.ActivityTaskFilter(name), activitySlots, activityTasks{n}); err != nil {
			return err
		}
	}
	return nil
}

// startProjector starts the projector consumer on every history shard,
// when the node has a projection.
func (n *Node) startProjector(ctx context.Context) error {
	p := n.opts.Projection
	if p == nil {
		return nil
	}
	cfg := n.store.Config()
	// Its own slots, several batches' worth: a batch fills only if many
	// commits are in hand at once (one full batch must not take every
	// slot), and a slow Postgres must not take the dispatcher's.
	projectSlots := make(chan struct{}, 4*projectionBatch)
	h := &projector{n: n, p: p}
	for shard := range cfg.HistoryShards {
		if err := n.addConsumer(ctx, cfg.HistoryStream(shard), projectorName, "commits to project", cfg.HistoryFilter(shard), projectSlots, h); err != nil {
			return err
		}
	}
	return nil
}

// dispatcherMaxAckPending is the MaxAckPending of the dispatcher on the
// first history stream as the server has it, or what the node creates it
// with.
func (n *Node) dispatcherMaxAckPending(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := n.store.JetStream().Consumer(ctx, n.store.Config().HistoryStream(0), dispatcherName)
	if err != nil || c.CachedInfo().Config.MaxAckPending <= 0 {
		return defaultMaxAckPending
	}
	return c.CachedInfo().Config.MaxAckPending
}

// defaultMaxAckPending is what the shared consumers are created with.
const defaultMaxAckPending = 10_000

// addConsumer creates the durable consumer if it is missing (an existing
// one keeps its settings) and starts a loop on it.
func (n *Node) addConsumer(ctx context.Context, streamName, durable, description, filter string, slots chan struct{}, h handler) error {
	return n.addConsumerPending(ctx, streamName, durable, description, filter, defaultMaxAckPending, slots, h)
}

// addConsumerPending is addConsumer with a bound on the messages the
// consumer has out, fleet-wide, at once.
func (n *Node) addConsumerPending(ctx context.Context, streamName, durable, description, filter string, maxAckPending int, slots chan struct{}, h handler) error {
	cons, err := stream.EnsureConsumer(ctx, n.store.JetStream(), streamName, jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   description,
		FilterSubject: filter,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       n.opts.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: maxAckPending,
	}, n.log)
	if err != nil {
		return &saga.Error{Kind: saga.KindTaskQueue, Message: "set up consumer " + durable + " on " + streamName, Cause: err}
	}
	if info := cons.CachedInfo(); maxAckPending == 1 && (info == nil || info.Config.MaxAckPending != 1) {
		found := -1
		if info != nil {
			found = info.Config.MaxAckPending
		}
		// Such a consumer's handler relies on one message in flight,
		// fleet-wide (signals: their order, and telling one moved
		// already): one that allows more, an operator's edit, is refused.
		return &saga.Error{Kind: saga.KindConfiguration, Message: "consumer " + durable,
			Cause: fmt.Errorf("%w: MaxAckPending is %d, and it must be 1 (nats consumer edit %s %s --max-pending 1)",
				stream.ErrIncompatibleSetup, found, streamName, durable)}
	}
	c := newConsumer(n, streamName, cons, slots, h)
	if err := n.checkAckWait(streamName, c); err != nil {
		return &saga.Error{Kind: saga.KindConfiguration, Message: "consumer " + durable, Cause: err}
	}
	n.consumers = append(n.consumers, c)
	c.start()
	return nil
}

// checkAckWait refuses a consumer whose AckWait reaches half its stream's
// duplicate window: a message redelivered that late could publish its
// effects again after the window forgot the first ones.
func (n *Node) checkAckWait(streamName string, c *consumer) error {
	sc, ok := n.store.StreamConfigInForce(streamName)
	if !ok || sc.Duplicates <= 0 {
		return nil // a bucket's stream: its effects do not rely on the window
	}
	if aw := c.currentAckWait(); aw >= sc.Duplicates/2 {
		return fmt.Errorf("AckWait %s is at least half the duplicate window %s of stream %s: lower it (nats consumer edit) or widen the window", aw, sc.Duplicates, streamName)
	}
	return nil
}

// Stop drains the node: it stops taking messages and requests, gives back
// the messages it holds but has not started, waits for the ones in
// progress to finish, then releases its resources. If ctx ends first,
// in-flight work is canceled as by StopAndCancel. Safe to call more than
// once.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopLocked(ctx, false)
}

// StopAndCancel stops the node at once: in-flight activities are canceled
// and nothing more is acknowledged, so JetStream redelivers the messages
// in progress to other nodes after AckWait. Safe to call more than once.
func (n *Node) StopAndCancel(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stopLocked(ctx, true)
}

func (n *Node) stopLocked(ctx context.Context, cancelNow bool) error {
	if n.state == nodeStopped {
		return nil
	}
	wasRunning := n.state == nodeRunning
	n.state = nodeStopped
	n.running.Store(false)
	defer n.metrics.Unregister()
	// Before the cache closes; it never waits for a saga in use, so it
	// stops at once.
	n.stopSweeping()
	if !wasRunning {
		n.trackMu.Lock()
		n.closing = true
		n.trackMu.Unlock()
		n.handlers.Wait() // wakes on a node that never started
		n.cache.close()
		n.client.Close()
		n.store.Close()
		return nil
	}
	if cancelNow {
		n.cancel()
	}
	if n.api != nil {
		_ = n.api.Stop()
		// The unsubscriptions are on their way; once the server has them,
		// a request finds no responder at once rather than timing out on
		// a node that has stopped answering.
		_ = n.nc.FlushTimeout(time.Second)
	}
	// No new messages: the consumers stop fetching and give back what they
	// hold for a slot.
	for _, c := range n.consumers {
		c.stopFetching()
	}
	n.trackMu.Lock()
	n.closing = true
	n.trackMu.Unlock()
	waited := make(chan struct{})
	go func() {
		n.handlers.Wait()
		close(waited)
	}()
	var err error
	select {
	case <-waited:
	case <-ctx.Done():
		err = ctx.Err()
		n.cancel()
		select {
		case <-waited:
		case <-time.After(stopGrace):
			// Work that ignores cancellation (an activity that does not
			// watch its context): stop waiting; JetStream redelivers it.
			n.log.Error("handlers did not stop; leaving them", "count", n.inflight.Load())
			<-n.limits.followed // runCtx is canceled: it returns
			// The cached workflows' coroutines go when the last stray
			// handler does, not before: a handler may be using one.
			go func() {
				<-waited
				n.cache.close()
			}()
			n.closeConsumers()
			n.client.Close()
			n.store.Close()
			return err
		}
	}
	n.cancel()
	<-n.limits.followed
	n.closeConsumers()
	n.cache.close()
	n.client.Close()
	n.store.Close()
	n.log.Info("node stopped", "drained", !cancelNow && err == nil)
	return err
}

// stopSweeping stops the sweeper of idle machines and waits for it.
func (n *Node) stopSweeping() {
	if n.stopSweep != nil {
		n.stopSweep()
	}
	n.sweeper.Wait()
}

// minIdleMachineTimeout bounds Options.IdleMachineTimeout from below: the
// sweep runs every quarter of it.
const minIdleMachineTimeout = 10 * time.Millisecond

// releaseIdleMachines releases the machines of cached sagas that made no
// decision for IdleMachineTimeout, checking every quarter of it, until ctx
// ends. A machine is released within 1.25 times the timeout.
func (n *Node) releaseIdleMachines(ctx context.Context) {
	idle := n.opts.IdleMachineTimeout
	for n.clock.Sleep(ctx, idle/4) == nil {
		if k := n.cache.releaseIdle(n.clock.Now().Add(-idle)); k > 0 {
			n.log.Debug("released the workflow machines of idle sagas", "count", k, "idle_for", idle)
		}
	}
}

func (n *Node) closeConsumers() {
	for _, c := range n.consumers {
		c.close()
	}
}

// stopGrace is how long a stop whose context ended still waits for
// canceled work to return.
const stopGrace = 5 * time.Second

// track admits one unit of work that Stop waits for, or refuses it once
// the node is stopping. The caller calls untrack when done.
func (n *Node) track() bool {
	n.trackMu.Lock()
	defer n.trackMu.Unlock()
	if n.closing {
		return false
	}
	n.handlers.Add(1)
	n.inflight.Add(1)
	return true
}

func (n *Node) untrack() {
	n.inflight.Add(-1)
	n.handlers.Done()
}

// Wake re-evaluates a saga now: a node that runs the saga's workflow drops
// what it cached, replays the history and appends the decision the code
// makes, if any, then queues again the tasks of its open activities that
// are missing. Use it after deploying code that fixes a blocked saga, or
// when a saga waits on work that was lost. A node without the workflow
// passes the wake on to one with it.
func (n *Node) Wake(ctx context.Context, sagaID string) error {
	if err := stream.ValidateID("saga id", sagaID); err != nil {
		return &saga.Error{Kind: saga.KindValidation, Message: "wake", Cause: err}
	}
	if !n.track() {
		return saga.NewError(saga.KindConfiguration, "wake "+sagaID+": node stopped")
	}
	defer n.untrack()
	d, err := n.client.Describe(ctx, sagaID)
	if err != nil {
		return err
	}
	if _, ok := n.reg.Workflow(d.Type); !ok {
		// Another node runs this workflow: hand it a wake task.
		if err := n.store.PublishWakeTask(ctx, sagaID, d.Type); err != nil {
			return &saga.Error{Kind: saga.KindTaskQueue, Message: "wake " + sagaID, Cause: err}
		}
		return nil
	}
	if err := n.wakeHere(ctx, sagaID); err != nil {
		return &saga.Error{Kind: saga.KindEventStore, Message: "wake " + sagaID, Cause: err}
	}
	return nil
}

// wakeHere drops what the node cached of the saga, decides on it from its
// whole history (blocking it at once if it cannot be replayed), and queues
// again whatever its open activities miss.
func (n *Node) wakeHere(ctx context.Context, sagaID string) error {
	// An operator who raised the history limits wakes the sagas blocked at
	// them: the wake follows the limits in force now.
	if err := n.refreshHistoryLimits(ctx); err != nil {
		n.log.Warn("could not read the fleet's history limits; the wake follows those read before", "saga_id", sagaID, "err", err)
	}
	e := n.cache.acquire(sagaID)
	e.view.reset()
	e.deadlocks = 0
	n.cache.release(e, false)
	if err := n.advance(ctx, advanceRequest{sagaID: sagaID, decide: true, wake: true}); err != nil {
		return err
	}
	e = n.cache.acquire(sagaID)
	defer n.cache.release(e, false)
	if err := n.catchUp(ctx, &e.view, nil, readLatest); err != nil {
		e.view.reset()
		return err
	}
	return n.rederive(ctx, e.view.state)
}
