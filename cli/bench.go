package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// runBench measures whole order sagas: on an embedded server in a
// temporary directory, or on an existing NATS (--nats-url) under a prefix
// of its own that it removes afterwards.
func runBench(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("bench", env)
	url := fs.String("nats-url", "", "measure on this NATS instead of an embedded server")
	sagas := fs.Int("sagas", 2000, "sagas to run")
	inFlight := fs.Int("in-flight", 256, "sagas started but not finished at any time")
	syncMode := fs.String("sync", "interval", `embedded server fsync: "interval" or "always"`)
	replicas := fs.Int("replicas", 1, "stream replicas (with --nats-url on a cluster)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *sagas < 1 || *inFlight < 1 {
		return fmt.Errorf("%w: --sagas and --in-flight must be positive", errUsage)
	}
	if *syncMode != "always" && *syncMode != "interval" {
		return fmt.Errorf(`%w: --sync must be "always" or "interval", got %q`, errUsage, *syncMode)
	}
	log := newLogger(env.Stderr, slog.LevelWarn)
	connect := func() (*nats.Conn, error) { return nats.Connect(*url, nats.Name("saga-node bench")) }
	where := *url
	if *url == "" {
		dir, err := os.MkdirTemp("", "saga-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := embeddednats.Start(embeddednats.Options{Dir: dir, SyncAlways: *syncMode == "always"})
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		connect = func() (*nats.Conn, error) { return srv.Connect() }
		where = "an embedded nats-server (sync " + *syncMode + ")"
	}
	nodeConn, err := connect()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nodeConn.Close()
	clientConn, err := connect()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer clientConn.Close()

	cfg := stream.Config{Prefix: "bench" + nuid.Next()[:8], Replicas: *replicas}
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	node, err := worker.New(nodeConn, reg, worker.Options{Stream: cfg, Logger: log, DisableAPI: true,
		WorkflowConcurrency: 128, ActivityConcurrency: 256, CacheSize: 4 * *inFlight})
	if err != nil {
		return err
	}
	if err := node.Start(ctx); err != nil {
		return err
	}
	defer func() {
		_ = node.Stop(context.Background())
		if *url != "" {
			removeStreams(nodeConn, cfg)
		}
	}()
	cl, err := saga.NewClient(clientConn, saga.ClientOptions{Stream: cfg, Logger: log})
	if err != nil {
		return err
	}
	defer cl.Close()

	var mu sync.Mutex
	startedAt := map[string]time.Time{}
	latencies := make([]time.Duration, 0, *sagas)
	failed := 0
	var events uint64 // in the histories of the sagas that ended
	done := make(chan struct{}, *sagas)
	sub, err := clientConn.Subscribe(cfg.Defaults().HistoryFilter(0), func(m *nats.Msg) {
		c, err := stream.DecodeCommit(m.Data)
		if err != nil {
			return
		}
		last := c.Events[len(c.Events)-1].Type
		if !stream.IsTerminal(last) && last != stream.WorkflowExecutionBlocked {
			return
		}
		mu.Lock()
		if t, ok := startedAt[c.SagaID]; ok {
			latencies = append(latencies, time.Since(t))
			events += c.NextEventID()
			delete(startedAt, c.SagaID)
			if last != stream.WorkflowExecutionCompleted {
				failed++
			}
			done <- struct{}{}
		}
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()

	fmt.Fprintf(env.Stdout, "running %d order sagas, %d in flight, on %s\n", *sagas, *inFlight, where)
	window := make(chan struct{}, *inFlight)
	startErr := make(chan error, 1)
	began := time.Now()
	// The starter stops and is waited for before the client it uses closes.
	startCtx, stopStarting := context.WithCancel(ctx)
	var starter sync.WaitGroup
	defer starter.Wait()
	defer stopStarting()
	starter.Go(func() {
		ctx := startCtx
		for i := range *sagas {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			id := fmt.Sprintf("bench-%d", i)
			mu.Lock()
			startedAt[id] = time.Now()
			mu.Unlock()
			in := order.Input{OrderID: id, Items: []order.Item{{SKU: "sku", Qty: 1}}, Amount: 10}
			if _, err := saga.StartWorkflow(ctx, cl, order.Workflow, in, saga.StartOptions{ID: id}); err != nil {
				startErr <- err
				return
			}
		}
	})
	for range *sagas {
		select {
		case <-done:
			<-window
		case err := <-startErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	elapsed := time.Since(began)
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(latencies)
	pct := func(p float64) time.Duration {
		return latencies[int(p*float64(len(latencies)-1))].Round(100 * time.Microsecond)
	}
	st := node.Stats()
	fmt.Fprintf(env.Stdout, "%d sagas in %s: %.0f sagas/s, %.0f events/s\n", *sagas, elapsed.Round(time.Millisecond),
		float64(*sagas)/elapsed.Seconds(), float64(events)/elapsed.Seconds())
	fmt.Fprintf(env.Stdout, "start to end: p50 %s, p90 %s, p99 %s, max %s\n", pct(0.5), pct(0.9), pct(0.99), latencies[len(latencies)-1].Round(100*time.Microsecond))
	fmt.Fprintf(env.Stdout, "node: %d commits, %d conflicts, %d replays, %d history reads\n", st.Commits, st.Conflicts, st.Replays, st.HistoryReads)
	if failed > 0 {
		return fmt.Errorf("%d sagas did not complete", failed)
	}
	return nil
}

// removeStreams deletes the benchmark's streams from a NATS it borrowed.
func removeStreams(nc *nats.Conn, cfg stream.Config) {
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg = cfg.Defaults()
	_ = js.DeleteStream(ctx, cfg.TaskStream())
	for shard := range cfg.HistoryShards {
		_ = js.DeleteStream(ctx, cfg.HistoryStream(shard))
	}
}
