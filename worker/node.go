package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
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
	cache  *sagaCache
	stats  nodeStats

	mu     sync.Mutex
	state  nodeState
	runCtx context.Context // canceled by StopAndCancel: aborts in-flight work
	cancel context.CancelFunc
	loops  []*fetchLoop

	// handlers counts in-flight message handlers, API requests and wakes;
	// once closing is set no more are admitted (see track).
	trackMu  sync.Mutex
	closing  bool
	handlers sync.WaitGroup
	inflight atomic.Int64
	api      micro.Service
}

type nodeState int

const (
	nodeNew nodeState = iota
	nodeRunning
	nodeStopped
)

// nodeStats counts what a node did; see Stats.
type nodeStats struct {
	commits, conflicts, replays, historyReads, tasksPublished, workflowTasksPublished, activitiesRun, activityRetries atomic.Int64
}

// Stats is a snapshot of a node's counters since it started.
type Stats struct {
	// Commits appended by this node.
	Commits int64
	// Conflicts: appends that lost to another writer and were retried.
	Conflicts int64
	// Replays: workflow states this node rebuilt by replaying history
	// (sagas new to its cache).
	Replays int64
	// HistoryReads: direct-get reads of saga histories (the whole history,
	// or its last commit to check that the cache is current).
	HistoryReads int64
	// TasksPublished: activity tasks derived from history.
	TasksPublished int64
	// WorkflowTasksPublished: workflow tasks derived from history (commits
	// with inputs the workflow had not decided on).
	WorkflowTasksPublished int64
	// ActivitiesRun: activity attempts executed.
	ActivitiesRun int64
	// ActivityRetries: attempts that failed and were scheduled again.
	ActivityRetries int64
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
	client, err := saga.NewClient(nc, saga.ClientOptions{Stream: opts.Stream, Logger: opts.Logger})
	if err != nil {
		store.Close()
		return nil, err
	}
	return &Node{
		opts:   opts,
		reg:    reg,
		nc:     nc,
		store:  store,
		client: client,
		log:    opts.Logger.With("node", opts.NodeName),
		hooks:  opts.Hooks,
		cache:  newSagaCache(opts.CacheSize),
	}, nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.opts.NodeName }

// Client returns a client sharing the node's connection and settings.
func (n *Node) Client() *saga.Client { return n.client }

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		Commits:                n.stats.commits.Load(),
		Conflicts:              n.stats.conflicts.Load(),
		Replays:                n.stats.replays.Load(),
		HistoryReads:           n.stats.historyReads.Load(),
		TasksPublished:         n.stats.tasksPublished.Load(),
		WorkflowTasksPublished: n.stats.workflowTasksPublished.Load(),
		ActivitiesRun:          n.stats.activitiesRun.Load(),
		ActivityRetries:        n.stats.activityRetries.Load(),
	}
}

// Start creates or updates the streams and consumers and starts consuming:
// every node dispatches history commits; a node consumes the workflow and
// activity tasks of the types it registers. Start can be called once.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != nodeNew {
		return saga.NewError(saga.KindConfiguration, "node already started")
	}
	if err := n.store.EnsureStreams(ctx); err != nil {
		return &saga.Error{Kind: saga.KindEventStore, Message: "set up streams", Cause: err}
	}
	n.runCtx, n.cancel = context.WithCancel(context.Background())
	n.state = nodeRunning
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
	n.log.Info("node started", "workflows", n.reg.WorkflowNames(), "activities", n.reg.ActivityNames(),
		"prefix", n.opts.Stream.Prefix, "history_shards", n.opts.Stream.HistoryShards)
	return nil
}

// dispatcherName is the durable consumer of every history stream that
// derives tasks from commits. All nodes share it.
const dispatcherName = "saga-dispatch"

// startConsumers starts the dispatcher on every history shard, and a
// consumer of workflow tasks per registered workflow type and of activity
// tasks per registered activity type.
func (n *Node) startConsumers(ctx context.Context) error {
	js := n.store.JetStream()
	cfg := n.opts.Stream
	consumer := func(stream, durable, description, filter string) (jetstream.Consumer, error) {
		return js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:       durable,
			Description:   description,
			FilterSubject: filter,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       n.opts.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: 10_000,
		})
	}
	dispatchSlots := make(chan struct{}, n.opts.WorkflowConcurrency)
	for shard := range cfg.HistoryShards {
		cons, err := consumer(cfg.HistoryStream(shard), dispatcherName, "commits to derive activity and workflow tasks from", cfg.HistoryFilter(shard))
		if err := n.addLoop(cons, err, "dispatch", dispatchSlots, n.handleCommit); err != nil {
			return err
		}
	}
	// One pool of slots per kind of task, shared by the types, so that the
	// concurrency settings bound the node as a whole.
	workflowSlots := make(chan struct{}, n.opts.WorkflowConcurrency)
	for _, name := range n.reg.WorkflowNames() {
		cons, err := consumer(cfg.TaskStream(), stream.WorkflowTaskConsumer(name), "workflow tasks of "+name, cfg.WorkflowTaskSubject(name))
		if err := n.addLoop(cons, err, "workflow "+name, workflowSlots, n.handleWorkflowTask); err != nil {
			return err
		}
	}
	activitySlots := make(chan struct{}, n.opts.ActivityConcurrency)
	for _, name := range n.reg.ActivityNames() {
		cons, err := consumer(cfg.TaskStream(), stream.ActivityTaskConsumer(name), "tasks of activity "+name, cfg.TaskSubject(name))
		if err := n.addLoop(cons, err, "activity "+name, activitySlots, n.handleTask); err != nil {
			return err
		}
	}
	return nil
}

// Stop drains the node: it stops taking messages and requests, waits for
// the ones in progress to finish, then releases its resources. If ctx ends
// first, in-flight work is canceled as by StopAndCancel. Safe to call more
// than once.
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
	// No new messages: the loops stop fetching and return unused slots.
	for _, l := range n.loops {
		l.stop()
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
			// The cached workflows' coroutines go when the last stray
			// handler does, not before: a handler may be using one.
			go func() {
				<-waited
				n.cache.close()
			}()
			n.client.Close()
			n.store.Close()
			return err
		}
	}
	n.cancel()
	n.cache.close()
	n.client.Close()
	n.store.Close()
	n.log.Info("node stopped", "drained", !cancelNow && err == nil)
	return err
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
// makes, if any. Use it after deploying code that fixes a blocked saga. A
// node without the workflow passes the wake on to one with it.
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

// wakeHere drops what the node cached of the saga and decides on it from
// its whole history, blocking it at once if it cannot be replayed.
func (n *Node) wakeHere(ctx context.Context, sagaID string) error {
	e := n.cache.acquire(sagaID)
	e.reset()
	n.cache.release(e, false)
	return n.advance(ctx, advanceRequest{sagaID: sagaID, decide: true, lastChance: true})
}

// nakDelay is the redelivery delay after the n-th failed delivery of a
// message because of a transient error (NATS unavailable, say).
func nakDelay(delivered uint64) time.Duration {
	d := 100 * time.Millisecond << min(delivered, 7)
	return min(d, 10*time.Second)
}

func metadata(msg jetstream.Msg) (*jetstream.MsgMetadata, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("message metadata: %w", err)
	}
	return meta, nil
}
