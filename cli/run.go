package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/ui"
	"github.com/jetsaga/saga/worker"
)

// runNode runs a long-lived node until SIGINT or SIGTERM, then drains it.
func runNode(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("run", env)
	var conn connFlags
	conn.register(fs, env)
	// run joins an existing NATS only when told so on its command line;
	// SAGA_NATS_URL is for the admin commands.
	conn.url = DefaultNATSURL
	urlSet := false
	data := fs.String("data", "./saga-data", "JetStream directory of the embedded nats-server")
	listen := fs.String("listen", "127.0.0.1:4222", "client address of the embedded nats-server")
	syncMode := fs.String("sync", "always", `embedded server fsync: "always" (survives power loss) or "interval" (every 2 minutes; survives a process kill only)`)
	name := fs.String("name", "", "node name (default: host name and a random suffix)")
	shards := fs.Int("history-shards", 1, "number of history streams; fixed once sagas exist")
	replicas := fs.Int("replicas", 1, "replicas of the streams this node creates (3 in a production cluster); existing streams keep theirs")
	drain := fs.Duration("drain-timeout", 30*time.Second, "how long a stop waits for work in progress")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", `"text" or "json" (one object per line)`)
	ackWait := fs.Duration("ack-wait", 0, "how long a delivered task stays with a node that does not acknowledge it (default 30s; applies to consumers this node creates, existing ones keep theirs)")
	pgURL := pgFlag(fs, env)
	projectorOnly := fs.Bool("projector-only", false, "only feed the Postgres projection (needs --pg-url) and serve list; run no saga")
	archiveAfter := fs.Duration("archive-after", pgarchive.DefaultRetention, "with --pg-url: move sagas that ended longer ago than this from the streams to the archive; 0: never")
	snapshotInterval := fs.Int("snapshot-interval", stream.DefaultSnapshotInterval, "write a snapshot of a saga's state every this many events, so that reads fold only what follows it; 0: this node writes none")
	maxSnapshots := fs.Int("max-snapshots", stream.DefaultMaxSnapshots, "snapshots kept per saga (1-64), when this node creates the snapshots bucket; an existing bucket keeps its own")
	snapshotChecksum := fs.Bool("snapshot-checksum", true, "verify a snapshot's checksum when it is loaded")
	var limits historyLimitFlags
	limits.register(fs, " (recorded for the fleet if no node did before; else the fleet's apply: see history-limits)")
	var keys codecFlags
	keys.register(fs)
	var obs observabilityFlags
	obs.register(fs)
	var uf uiFlags
	uf.register(fs, env, "", " in this process, e.g. "+ui.DefaultListen+" (default: none)", "ui-read-only")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	uiOpts, err := uf.options()
	if err != nil {
		return err
	}
	if err := obs.validate(); err != nil {
		return err
	}
	codec, err := keys.codec()
	if err != nil {
		return err
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "nats-url" {
			urlSet = true
		}
	})
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	if *syncMode != "always" && *syncMode != "interval" {
		return fmt.Errorf(`%w: --sync must be "always" or "interval", got %q`, errUsage, *syncMode)
	}
	snapshots := stream.SnapshotConfig{Interval: *snapshotInterval, MaxSnapshots: *maxSnapshots, SkipChecksum: !*snapshotChecksum}
	switch {
	case snapshots.Interval < 0:
		return fmt.Errorf("%w: --snapshot-interval must be 0 (none) or positive, got %d", errUsage, snapshots.Interval)
	case snapshots.Validate() != nil:
		return fmt.Errorf("%w: --max-snapshots must be 1 to 64, got %d", errUsage, snapshots.MaxSnapshots)
	}
	log, err := newFormattedLogger(env.Stderr, level, *logFormat)
	if err != nil {
		return err
	}
	if !urlSet && conn.usesAuth() {
		return fmt.Errorf("%w: the NATS credential and TLS flags are for --nats-url; the embedded server has no authentication", errUsage)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var nc *nats.Conn
	if urlSet {
		// A node outlives NATS outages: it reconnects for as long as it runs.
		if nc, err = conn.connect("run", nats.MaxReconnects(-1)); err != nil {
			return err
		}
		log.Info("using NATS", "url", redactURLs(conn.url))
	} else {
		dir, err := filepath.Abs(*data)
		if err != nil {
			return err
		}
		srv, err := embeddednats.Start(embeddednats.Options{
			Dir: dir, Listen: *listen, SyncAlways: *syncMode == "always", Logger: log.With("component", "nats-server"),
		})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		if nc, err = srv.Connect(nats.Name("saga-node")); err != nil {
			return err
		}
		log.Info("embedded nats-server ready", "url", srv.ClientURL(), "data", dir, "sync", *syncMode)
	}
	defer nc.Close()

	opts := worker.Options{
		Stream:   stream.Config{Prefix: conn.prefix, HistoryShards: *shards, Replicas: *replicas, HistoryLimits: limits.limits()},
		NodeName: *name,
		Logger:   log,
		AckWait:  *ackWait,
		Codec:    codec,
	}
	opts.Snapshots = &snapshots
	if *archiveAfter != 0 && *archiveAfter < minArchiveAfter {
		// Each node archives by its own setting: one set too short would
		// archive the whole fleet's sagas early.
		return fmt.Errorf("%w: --archive-after must be 0 (never) or at least %s, got %s", errUsage, minArchiveAfter, *archiveAfter)
	}
	if *projectorOnly && *pgURL == "" {
		return fmt.Errorf("%w: --projector-only needs --pg-url (or SAGA_PG_URL)", errUsage)
	}
	opts.ProjectorOnly = *projectorOnly
	if *pgURL != "" {
		// The projection migrates on first use: Postgres may be away now,
		// and sagas never wait for it.
		pg, err := pgarchive.Open(ctx, *pgURL)
		if err != nil {
			return err
		}
		defer pg.Close()
		opts.Projection = pg
		log.Info("projecting histories to Postgres")
	}
	metrics := obs.registry()
	if metrics != nil {
		opts.Metrics = metrics
	}
	tp, stopTracing, err := obs.tracerProvider(ctx, *name, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	opts.TracerProvider = tp
	node, err := worker.New(nc, env.Registry, opts)
	if err != nil {
		return err
	}
	// Served from before the start: /healthz says 503 until the node runs.
	stopServing, err := obs.serve(metrics, node.Healthy, log)
	if err != nil {
		return err
	}
	defer stopServing()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := node.Start(startCtx); err != nil {
		return err
	}
	if uf.listen != "" {
		pg, _ := opts.Projection.(*pgarchive.Store)
		url, stopUI, err := serveUI(uiOpts, uf.listen, nc, opts.Stream, codec, pg, log)
		if err != nil {
			// The node started: it stops, rather than run on unseen.
			stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = node.Stop(stopCtx)
			return err
		}
		defer stopUI()
		log.Info("serving the web UI", "url", url, "read_only", uiOpts.ReadOnly, "source", uiListSource(pg))
	}
	if pg, ok := opts.Projection.(*pgarchive.Store); ok && *archiveAfter > 0 {
		archiveCtx, stopArchiving := context.WithCancel(ctx)
		var archiving sync.WaitGroup
		archiving.Go(func() { archiveLoop(archiveCtx, pg, nc, conn.prefix, *archiveAfter, log) })
		defer archiving.Wait()
		defer stopArchiving()
	}
	<-ctx.Done()
	log.Info("stopping: draining work in progress", "timeout", *drain)
	drainCtx, cancelDrain := context.WithTimeout(context.Background(), *drain)
	defer cancelDrain()
	if err := node.Stop(drainCtx); err != nil {
		log.Warn("drain did not finish; remaining work goes to other nodes", "err", err)
	}
	return nil
}

// archiveEvery spaces the archive runs of a node.
const archiveEvery = 10 * time.Minute

// minArchiveAfter is the shortest retention a node archives with.
const minArchiveAfter = time.Hour

// archiveLoop moves ended sagas older than the retention to the archive,
// now and then, until ctx ends. Several nodes may run it: archiving a
// saga twice is harmless.
func archiveLoop(ctx context.Context, pg *pgarchive.Store, nc *nats.Conn, prefix string, retention time.Duration, log *slog.Logger) {
	hist, err := stream.Open(nc, stream.Config{Prefix: prefix})
	if err != nil {
		log.Error("archive: open the streams", "err", err)
		return
	}
	defer hist.Close()
	tick := time.NewTicker(archiveEvery)
	defer tick.Stop()
	for {
		res, err := pg.Archive(ctx, hist, time.Now().Add(-retention), 1000)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("archive run failed; next run later", "err", err, "retry_in", archiveEvery)
		case len(res.Archived)+len(res.Skipped) > 0:
			log.Info("archived sagas", "archived", len(res.Archived), "not_yet", len(res.Skipped))
			shown := 0
			for id, why := range res.Skipped {
				if shown++; shown > 5 {
					break
				}
				log.Info("saga not archived yet", "saga_id", id, "reason", why)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
