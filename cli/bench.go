package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
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

// errSagasFailed reports sagas of a bench that did not complete.
var errSagasFailed = errors.New("sagas did not complete")

// benchReport is everything one bench run measured; its JSON form is the
// output of --json.
type benchReport struct {
	Where    string `json:"where"`
	Sync     string `json:"sync"`
	Shards   int    `json:"shards"`
	Replicas int    `json:"replicas"`
	InFlight int    `json:"in_flight"`
	StartVia string `json:"start_via"`
	Eager    bool   `json:"eager"`

	// The loaded run.
	Sagas        int     `json:"sagas"`
	Failed       int     `json:"failed"`
	Seconds      float64 `json:"seconds"`
	SagasPerSec  float64 `json:"sagas_per_sec"`
	EventsPerSec float64 `json:"events_per_sec"`
	P50ms        float64 `json:"p50_ms"`
	P90ms        float64 `json:"p90_ms"`
	P99ms        float64 `json:"p99_ms"`
	Maxms        float64 `json:"max_ms"`

	// One saga at a time, after the loaded run.
	IdleSagas int     `json:"idle_sagas"`
	IdleP50ms float64 `json:"idle_p50_ms"`
	IdleP99ms float64 `json:"idle_p99_ms"`

	// The server alone, after both.
	RawAppendsPerSec float64 `json:"raw_appends_per_sec"`
	RawWriters       int     `json:"raw_writers"`
	RawSeconds       float64 `json:"raw_seconds"`
	RawPayloadBytes  int     `json:"raw_payload_bytes"`

	// History appends the engine committed in the loaded run.
	AppendsPerSec  float64 `json:"appends_per_sec"`
	AppendsPerSaga float64 `json:"appends_per_saga"`
	AppendRatio    float64 `json:"append_ratio"`

	// Messages on the wire during the loaded run, per saga.
	WritesPerSaga       float64            `json:"writes_per_saga"`
	StoredWritesPerSaga float64            `json:"stored_writes_per_saga"`
	WritesByKind        map[string]float64 `json:"writes_by_kind"`
	APIByVerb           map[string]float64 `json:"api_by_verb"`
	WriteKinds          map[string]string  `json:"write_kinds"`

	// The whole process (server, node and client) during the loaded run.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	RSSSource  string  `json:"rss_source"`
	CPUSeconds float64 `json:"cpu_seconds"`

	Node struct {
		Commits      int64 `json:"commits"`
		Conflicts    int64 `json:"conflicts"`
		Replays      int64 `json:"replays"`
		HistoryReads int64 `json:"history_reads"`
	} `json:"node"`
}

// runBench measures whole order sagas: on an embedded server in a
// temporary directory, or on an existing NATS (--nats-url) under a prefix
// of its own that it removes afterwards. One run reports throughput and
// latency under load, latency one saga at a time, the server's own OCC
// append rate for comparison, and the messages each saga cost.
func runBench(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("bench", env)
	url := fs.String("nats-url", "", "measure on this NATS instead of an embedded server")
	sagas := fs.Int("sagas", 2000, "sagas to run under load")
	inFlight := fs.Int("in-flight", 256, "sagas started but not finished at any time")
	syncMode := fs.String("sync", "interval", `embedded server fsync: "interval" or "always"`)
	replicas := fs.Int("replicas", 1, "stream replicas (with --nats-url on a cluster)")
	shards := fs.Int("shards", 1, "history shards (streams) of the engine, 1..1024")
	idle := fs.Int("idle", 200, "sagas run one at a time after the loaded run, for idle latency (0: none)")
	rawDuration := fs.Duration("raw-duration", 2*time.Second, "how long to measure raw appends on the server")
	asJSON := fs.Bool("json", false, "print one JSON object")
	eager := fs.Bool("eager", true, "run activities eagerly on the node that dispatches their scheduling commit (false: every activity goes through a task)")
	startVia := fs.String("start-via", "client", `who appends the starts: "client", a separate client as another service would (the start alone), or "node", the node's own client as an application embedding the node, the API and the inbox do (the start with its first decision)`)
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	switch {
	case *sagas < 1 || *inFlight < 1:
		return fmt.Errorf("%w: --sagas and --in-flight must be positive", errUsage)
	case *syncMode != "always" && *syncMode != "interval":
		return fmt.Errorf(`%w: --sync must be "always" or "interval", got %q`, errUsage, *syncMode)
	case *shards < 1 || *shards > 1024:
		return fmt.Errorf("%w: --shards must be 1..1024, got %d", errUsage, *shards)
	case *idle < 0:
		return fmt.Errorf("%w: --idle must not be negative, got %d", errUsage, *idle)
	case *rawDuration <= 0:
		return fmt.Errorf("%w: --raw-duration must be positive, got %s", errUsage, *rawDuration)
	case *replicas < 1 || *replicas > 5:
		return fmt.Errorf("%w: --replicas must be 1..5, got %d", errUsage, *replicas)
	case *startVia != "client" && *startVia != "node":
		return fmt.Errorf(`%w: --start-via must be "client" or "node", got %q`, errUsage, *startVia)
	}
	log := newLogger(env.Stderr, slog.LevelWarn)
	connect := func(opts ...nats.Option) (*nats.Conn, error) {
		return nats.Connect(*url, append([]nats.Option{nats.Name("saga-node bench")}, opts...)...)
	}
	rep := benchReport{Where: *url, Sync: *syncMode, Shards: *shards, Replicas: *replicas, InFlight: *inFlight, StartVia: *startVia, Eager: *eager}
	if *url == "" {
		dir, err := os.MkdirTemp("", "saga-bench-")
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(dir)
		srv, err := embeddednats.Start(embeddednats.Options{Dir: dir, SyncAlways: *syncMode == "always"})
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer srv.Shutdown()
		connect = srv.Connect
		rep.Where = "embedded"
	} else {
		// The server's own fsync setting is in force: --sync only labels it.
		rep.Where = redactURLs(*url)
	}
	var conns []*nats.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	dial := func(opts ...nats.Option) (*nats.Conn, error) {
		nc, err := connect(opts...)
		if err != nil {
			return nil, fmt.Errorf("bench: connect: %w", err)
		}
		conns = append(conns, nc)
		return nc, nil
	}
	nodeConn, err := dial()
	if err != nil {
		return err
	}
	clientConn, err := dial()
	if err != nil {
		return err
	}
	// The bench's own requests go out under an inbox prefix the wire tap
	// leaves out.
	adminConn, err := dial(nats.CustomInboxPrefix(benchInboxPrefix), nats.Name(benchAdminName))
	if err != nil {
		return err
	}

	cfg := stream.Config{Prefix: "bench" + nuid.Next()[:8], Replicas: *replicas, HistoryShards: *shards}.Defaults()
	reg := saga.NewRegistry()
	reg.MustRegister(order.NewService().Definitions()...)
	node, err := worker.New(nodeConn, reg, worker.Options{Stream: cfg, Logger: log, DisableAPI: true,
		WorkflowConcurrency: 128, ActivityConcurrency: 256, CacheSize: 4 * max(*inFlight, 1),
		DisableEagerActivities: !*eager})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	// Registered before Start, so that streams a failed start created on a
	// borrowed server go too; the stop is bounded, so that a server gone
	// away cannot keep them there by hanging it.
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = node.StopAndCancel(stopCtx)
		if *url != "" {
			removeStreams(adminConn, cfg)
		}
	}()
	if err := node.Start(ctx); err != nil {
		return fmt.Errorf("bench: start node: %w", err)
	}
	cl := node.Client()
	if *startVia == "client" {
		if cl, err = saga.NewClient(clientConn, saga.ClientOptions{Stream: cfg, Logger: log}); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer cl.Close()
	}
	runner, err := newSagaRunner(adminConn, cl, cfg)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer runner.close()
	js, err := jetstream.New(adminConn)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}

	prog := startProgress(env.Stderr)
	defer prog.stop()
	if !*asJSON {
		fmt.Fprintf(env.Stdout, "running %d order sagas, %d in flight, %d history shard(s), on %s (sync %s)\n",
			*sagas, *inFlight, *shards, rep.Where, rep.Sync)
	}

	// The loaded run, with the wire tap on and the process's CPU counted.
	tap, err := startWireTap(adminConn, cfg.Prefix)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	cpuBefore, cpuOK := cpuTime()
	loaded, err := runner.run(ctx, "bench", *sagas, *inFlight, prog, "loaded")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	cpuAfter, _ := cpuTime()
	rep.PeakRSSMiB, rep.RSSSource = peakRSS()
	if cpuOK {
		rep.CPUSeconds = (cpuAfter - cpuBefore).Seconds()
	}
	// The acks and removals that follow the last completions are part of
	// what the sagas cost: let them land before the count ends.
	if err := waitSettled(ctx, js, cfg); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	wire, err := tap.stop(ctx, adminConn, nodeConn, clientConn)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	committed, err := historyMessages(ctx, js, cfg)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	st := node.Stats()
	rep.Node.Commits, rep.Node.Conflicts, rep.Node.Replays, rep.Node.HistoryReads = st.Commits, st.Conflicts, st.Replays, st.HistoryReads

	var idlePhase phase
	if *idle > 0 {
		if idlePhase, err = runner.run(ctx, "idle", *idle, 1, prog, "idle"); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}

	payload := 256
	if n := wire.byKind[wireHistory]; n > 0 {
		payload = int(wire.historyBytes / n)
	}
	raw, err := measureRawAppends(ctx, adminConn, cfg, *rawDuration, payload, prog)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	prog.stop()

	secs := loaded.elapsed.Seconds()
	perSaga := func(n int64) float64 { return float64(n) / float64(loaded.sagas) }
	rep.Sagas, rep.Failed, rep.Seconds = loaded.sagas, loaded.failed+idlePhase.failed, secs
	rep.SagasPerSec = float64(loaded.sagas) / secs
	rep.EventsPerSec = float64(loaded.events) / secs
	rep.P50ms, rep.P90ms, rep.P99ms = loaded.percentile(0.5), loaded.percentile(0.9), loaded.percentile(0.99)
	rep.Maxms = loaded.percentile(1)
	rep.IdleSagas, rep.IdleP50ms, rep.IdleP99ms = idlePhase.sagas, idlePhase.percentile(0.5), idlePhase.percentile(0.99)
	rep.RawAppendsPerSec, rep.RawWriters, rep.RawSeconds, rep.RawPayloadBytes = raw.perSec(), rawWriters, raw.elapsed.Seconds(), raw.payloadBytes
	rep.AppendsPerSec = float64(committed) / secs
	rep.AppendsPerSaga = perSaga(committed)
	if rep.RawAppendsPerSec > 0 {
		rep.AppendRatio = rep.AppendsPerSec / rep.RawAppendsPerSec
	}
	rep.WritesByKind = map[string]float64{}
	var total int64
	for _, kind := range []string{wireHistory, wireTask, wireAck, wireKV, wireAPI, wireDeliver, wireInbox, wireOther} {
		n := wire.byKind[kind]
		rep.WritesByKind[kind] = perSaga(n)
		total += n
	}
	rep.WritesPerSaga = perSaga(total)
	rep.StoredWritesPerSaga = perSaga(wire.byKind[wireHistory] + wire.byKind[wireTask] + wire.byKind[wireKV])
	rep.APIByVerb = map[string]float64{}
	for verb, n := range wire.byVerb {
		rep.APIByVerb[verb] = perSaga(n)
	}
	rep.WriteKinds = wireKindNotes

	if *asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	} else {
		printBench(env.Stdout, rep)
	}
	if rep.Failed > 0 {
		return fmt.Errorf("bench: %d %w", rep.Failed, errSagasFailed)
	}
	return nil
}

func printBench(w io.Writer, r benchReport) {
	fmt.Fprintf(w, "%d sagas in %.3fs: %.0f sagas/s, %.0f events/s\n", r.Sagas, r.Seconds, r.SagasPerSec, r.EventsPerSec)
	fmt.Fprintf(w, "start to end: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms (under load)\n", r.P50ms, r.P90ms, r.P99ms, r.Maxms)
	if r.IdleSagas > 0 {
		fmt.Fprintf(w, "start to end one at a time (%d sagas): p50 %.1f ms, p99 %.1f ms\n", r.IdleSagas, r.IdleP50ms, r.IdleP99ms)
	}
	fmt.Fprintf(w, "history appends: %.0f/s (%.1f per saga); raw OCC appends on the same server: %.0f/s (%d writers, %d-byte messages); ratio %.2f\n",
		r.AppendsPerSec, r.AppendsPerSaga, r.RawAppendsPerSec, r.RawWriters, r.RawPayloadBytes, r.AppendRatio)
	fmt.Fprintf(w, "messages per saga: %.1f, of which %.1f stored JetStream writes\n", r.WritesPerSaga, r.StoredWritesPerSaga)
	kinds := make([]string, 0, len(r.WritesByKind))
	for k := range r.WritesByKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-8s %6.2f  %s\n", k, r.WritesByKind[k], r.WriteKinds[k])
	}
	verbs := make([]string, 0, len(r.APIByVerb))
	for v := range r.APIByVerb {
		verbs = append(verbs, v)
	}
	slices.Sort(verbs)
	for _, v := range verbs {
		fmt.Fprintf(w, "    api %-24s %6.2f\n", v, r.APIByVerb[v])
	}
	fmt.Fprintf(w, "process during the loaded run: %.2f s CPU, peak RSS %.0f MiB (%s)\n", r.CPUSeconds, r.PeakRSSMiB, r.RSSSource)
	fmt.Fprintf(w, "node: %d commits, %d conflicts, %d replays, %d history reads\n", r.Node.Commits, r.Node.Conflicts, r.Node.Replays, r.Node.HistoryReads)
}

// waitSettled waits until the dispatcher has acked every commit and the
// task queue is empty, or gives up after a few seconds: what is left then
// is not counted.
func waitSettled(ctx context.Context, js jetstream.JetStream, cfg stream.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		settled, err := isSettled(ctx, js, cfg)
		if err == nil && settled {
			return nil
		}
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("wait for the engine to settle: %w", err)
			}
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

func isSettled(ctx context.Context, js jetstream.JetStream, cfg stream.Config) (bool, error) {
	for shard := range cfg.HistoryShards {
		c, err := js.Consumer(ctx, cfg.HistoryStream(shard), stream.DispatcherConsumer)
		if err != nil {
			return false, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, err
		}
		if info.NumAckPending > 0 || info.NumPending > 0 {
			return false, nil
		}
	}
	tasks, err := js.Stream(ctx, cfg.TaskStream())
	if err != nil {
		return false, err
	}
	info, err := tasks.Info(ctx)
	if err != nil {
		return false, err
	}
	return info.State.Msgs == 0, nil
}

// historyMessages counts the commits in every history stream.
func historyMessages(ctx context.Context, js jetstream.JetStream, cfg stream.Config) (int64, error) {
	var n int64
	for shard := range cfg.HistoryShards {
		s, err := js.Stream(ctx, cfg.HistoryStream(shard))
		if err != nil {
			return 0, fmt.Errorf("history stream %d: %w", shard, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("history stream %d: %w", shard, err)
		}
		n += int64(info.State.Msgs)
	}
	return n, nil
}

// removeStreams deletes the benchmark's streams from a NATS it borrowed.
func removeStreams(nc *nats.Conn, cfg stream.Config) {
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Every stream and bucket of the engine is named after the prefix,
	// which is the bench's own.
	upper := strings.ToUpper(cfg.Defaults().Prefix) + "_"
	names := js.StreamNames(ctx)
	var mine []string
	for name := range names.Name() {
		if strings.HasPrefix(name, upper) || strings.HasPrefix(name, "KV_"+upper) {
			mine = append(mine, name)
		}
	}
	for _, name := range mine {
		_ = js.DeleteStream(ctx, name)
	}
}
