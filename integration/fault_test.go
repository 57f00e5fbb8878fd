package integration

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/internal/pgtest"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// Fault injection with real processes: a fleet of three node processes
// (integration/faultnode) on a three-server NATS cluster with every stream
// replicated three times, projecting to a real PostgreSQL, under mixed
// load, while nodes are SIGKILLed, NATS servers crash, everything dies at
// once, and PostgreSQL goes away. Afterwards every saga must end as its
// user expects, and the histories must keep every invariant the engine
// promises (package invariant). See docs/faults.md.

var (
	faultFull = flag.Bool("fault.full", false, "run the fault tests at acceptance size: 1,000 sagas per scenario and the full fault durations")
	faultDir  = flag.String("fault.dir", "", "keep the fault tests' node logs and execution record in this directory (default: a temporary one, removed)")
	faultSeed = flag.Uint64("fault.seed", 0, "seed of the fault tests' random choices (default: from the clock; the run logs it)")
)

// faultSizes sizes one run of the fault tests.
type faultSizes struct {
	// sagas is the load of each scenario.
	sagas int
	// nodeKills: how long nodes are killed, one every nodeKillEvery.
	nodeKills, nodeKillEvery time.Duration
	// natsKills: how long NATS servers are killed, one every
	// natsKillEvery, each down for natsDown before it restarts.
	natsKills, natsKillEvery, natsDown time.Duration
	// outages: how many times everything dies at once, outageEvery apart,
	// over outageWindow of load.
	outages                   int
	outageEvery, outageWindow time.Duration
	// pgDown: how long PostgreSQL is away, within pgWindow of load.
	pgDown, pgWindow time.Duration
	// startSpread is the part of a scenario's window over which its sagas
	// start: the full run starts its 1,000 within the first tenth, so that
	// most are open at once. activityDelay bounds the time an activity
	// execution takes: long enough that kills find activities running,
	// short enough that a kill every 2 s rarely takes all five attempts of
	// one activity (with 1 s, two of 1,000 sagas failed so, by design:
	// an attempt a crash cut short counts).
	startSpread   float64
	activityDelay time.Duration
}

func sizes() faultSizes {
	if *faultFull {
		return faultSizes{
			sagas:     1000,
			nodeKills: 60 * time.Second, nodeKillEvery: 2 * time.Second,
			natsKills: 60 * time.Second, natsKillEvery: 10 * time.Second, natsDown: 3 * time.Second,
			outages: 3, outageEvery: 20 * time.Second, outageWindow: 60 * time.Second,
			pgDown: 10 * time.Second, pgWindow: 30 * time.Second,
			startSpread: 0.1, activityDelay: 300 * time.Millisecond,
		}
	}
	return faultSizes{
		sagas:     100,
		nodeKills: 12 * time.Second, nodeKillEvery: 2 * time.Second,
		natsKills: 20 * time.Second, natsKillEvery: 10 * time.Second, natsDown: 3 * time.Second,
		outages: 1, outageEvery: 20 * time.Second, outageWindow: 12 * time.Second,
		pgDown: 10 * time.Second, pgWindow: 15 * time.Second,
		startSpread: 0.6, activityDelay: 300 * time.Millisecond,
	}
}

// Deadlines after the faults.
const (
	terminalDeadline  = 2 * time.Minute
	projectorDeadline = time.Minute
	// nodeAckWait is the AckWait of the fleet's consumers: how soon a
	// killed node's messages go to another.
	nodeAckWait = "2s"
)

// faultCounts are the faults a scenario injected.
type faultCounts struct {
	nodeRestarts, natsRestarts, pgRestarts int
}

// faultScenario is one kind of fault, injected while a load of window
// runs.
type faultScenario struct {
	name, prefix string
	window       time.Duration
	inject       func(t *testing.T, e *faultEnv, c *faultCounts)
}

// TestFault runs every fault scenario, one after the other, on one fleet:
// each under a load of its own, checked on its own. A short run by
// default; -fault.full for the acceptance run.
func TestFault(t *testing.T) {
	e := startFaultEnv(t)
	sz := e.size
	scenarios := []faultScenario{
		{name: "node-kills", prefix: "fk", window: sz.nodeKills, inject: injectNodeKills},
		{name: "nats-kills", prefix: "fn", window: sz.natsKills, inject: injectNATSKills},
		{name: "total-outage", prefix: "fo", window: sz.outageWindow, inject: injectTotalOutage},
		{name: "postgres-outage", prefix: "fp", window: sz.pgWindow, inject: injectPostgresOutage},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) { e.run(t, sc) })
	}
	for _, s := range e.summaries {
		t.Log(s)
	}
}

// Scenario 1: SIGKILL a random node every nodeKillEvery, starting it again
// right after.
func injectNodeKills(t *testing.T, e *faultEnv, c *faultCounts) {
	began := time.Now()
	tick := time.NewTicker(e.size.nodeKillEvery)
	defer tick.Stop()
	for range int(e.size.nodeKills / e.size.nodeKillEvery) {
		<-tick.C
		n := e.nodes[e.rng.IntN(len(e.nodes))]
		e.checkAlive(t, n)
		n.kill()
		if err := n.restart(); err != nil {
			t.Fatal(err)
		}
		c.nodeRestarts++
		if time.Since(began) >= e.size.nodeKills {
			return
		}
	}
}

// Scenario 2: every natsKillEvery, one NATS server crashes (Kill drops its
// routes first, as a crash does), stays down natsDown, and starts again;
// StartAgain waits until it caught up, so never more than one is down and
// the other two keep a majority. Every other round kills the server
// leading the history stream, to force an election under load.
func injectNATSKills(t *testing.T, e *faultEnv, c *faultCounts) {
	began := time.Now()
	for round := 0; ; round++ {
		at := 2*time.Second + time.Duration(round)*e.size.natsKillEvery
		if at >= e.size.natsKills {
			return
		}
		pace(context.Background(), time.Until(began.Add(at)))
		victim := e.rng.IntN(len(e.servers))
		why := "random"
		if round%2 == 0 {
			if leader := historyLeader(context.Background(), e.hist); leader != "" {
				for i, s := range e.servers {
					if s.Name() == leader {
						victim, why = i, "history stream leader"
					}
				}
			}
		}
		name := e.servers[victim].Name()
		e.log.Info("faulttest: killing a NATS server", "server", name, "why", why)
		e.servers[victim].Kill()
		down := time.Now()
		pace(context.Background(), e.size.natsDown)
		e.servers[victim].StartAgain()
		c.natsRestarts++
		t.Logf("killed NATS server %s (%s); back and caught up after %s", name, why, time.Since(down).Round(time.Millisecond))
	}
}

// Scenario 3: every node is SIGKILLed and every NATS server killed at
// once; then the servers start again together (a lone server cannot
// elect anything), and the nodes once the cluster is back.
func injectTotalOutage(t *testing.T, e *faultEnv, c *faultCounts) {
	began := time.Now()
	for round := range e.size.outages {
		pace(context.Background(), time.Until(began.Add(4*time.Second+time.Duration(round)*e.size.outageEvery)))
		for _, n := range e.nodes {
			e.checkAlive(t, n)
			// Signals first, waits after: the nodes die together.
			n.signalKill()
		}
		for _, s := range e.servers {
			s.Kill()
		}
		for _, n := range e.nodes {
			n.kill()
		}
		down := time.Now()
		e.log.Info("faulttest: every node and NATS server killed")
		pace(context.Background(), 2*time.Second)
		// StartAgain waits for a healthy cluster, which needs a majority
		// up: the three start concurrently. It fails the test (Goexit of
		// its goroutine, which wg.Go's deferred Done survives) if the
		// cluster does not come back.
		var wg sync.WaitGroup
		for _, s := range e.servers {
			wg.Go(s.StartAgain)
		}
		wg.Wait()
		c.natsRestarts += len(e.servers)
		clusterBack := time.Since(down)
		for _, n := range e.nodes {
			if err := n.restart(); err != nil {
				t.Fatal(err)
			}
			c.nodeRestarts++
		}
		e.waitStarted(t)
		t.Logf("total outage %d: cluster healthy again %s after the kill, nodes serving after %s",
			round+1, clusterBack.Round(time.Millisecond), time.Since(down).Round(time.Millisecond))
	}
}

// Scenario 4: PostgreSQL stops, as a crash would, for pgDown while sagas
// run, then starts again, near the end of the load, so that the sagas
// have ended when it is back and the projector has all to catch up.
func injectPostgresOutage(t *testing.T, e *faultEnv, c *faultCounts) {
	pace(context.Background(), max(e.size.pgWindow-e.size.pgDown-3*time.Second, time.Second))
	e.pg.Stop()
	e.log.Info("faulttest: PostgreSQL stopped")
	pace(context.Background(), e.size.pgDown)
	e.pg.Restart()
	c.pgRestarts++
	e.log.Info("faulttest: PostgreSQL back")
}

// faultEnv is the fleet the scenarios share.
type faultEnv struct {
	size     faultSizes
	dir      string
	servers  []*natstest.Server
	pg       *pgtest.Server
	nodes    []*nodeProc
	execPath string
	cfg      stream.Config
	cl       *saga.Client
	hist     *stream.Store
	proj     *pgarchive.Store
	log      *slog.Logger
	logPath  string
	// rng is used by the test goroutine only.
	rng       *rand.Rand
	seed      uint64
	summaries []string
}

func startFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	e := &faultEnv{size: sizes(), cfg: stream.Config{Replicas: 3}}
	e.seed = *faultSeed
	if e.seed == 0 {
		e.seed = uint64(time.Now().UnixNano())
	}
	e.rng = rand.New(rand.NewPCG(e.seed, 0))
	t.Logf("fault run: full=%v, seed %d (-fault.seed=%d repeats the random choices)", *faultFull, e.seed, e.seed)
	e.dir = *faultDir
	if e.dir == "" {
		e.dir = t.TempDir()
	} else if err := os.MkdirAll(e.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	e.logPath = filepath.Join(e.dir, "harness.log")
	// A kept directory may hold an earlier run's files: start them afresh.
	logFile, err := os.OpenFile(e.logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = logFile.Close() })
	e.log = slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.execPath = filepath.Join(e.dir, "executions.log")
	if err := os.WriteFile(e.execPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	bin := buildFaultNode(t, e.dir)
	began := time.Now()
	e.servers = natstest.StartCluster(t, 3)
	e.pg = pgtest.StartOwn(t)
	t.Logf("NATS cluster and PostgreSQL up in %s", time.Since(began).Round(time.Millisecond))

	urls := make([]string, len(e.servers))
	for i, s := range e.servers {
		urls[i] = s.ClientURL()
	}
	for i := range e.servers {
		// Each node prefers its own server, and knows the others.
		mine := append([]string{urls[i]}, slices.Delete(slices.Clone(urls), i, i+1)...)
		name := fmt.Sprintf("node-%d", i)
		if err := os.WriteFile(filepath.Join(e.dir, name+".log"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		e.nodes = append(e.nodes, &nodeProc{
			name: name, bin: bin, dir: e.dir, log: filepath.Join(e.dir, name+".log"),
			args: []string{"run", "--nats-url", strings.Join(mine, ","), "--replicas", "3", "--pg-url", e.pg.URL(),
				"--name", name, "--drain-timeout", "5s", "--ack-wait", nodeAckWait},
			env: []string{envExecutions + "=" + e.execPath, envActivityDelay + "=" + e.size.activityDelay.String()},
		})
	}
	// Registered after the cluster's and PostgreSQL's cleanups, so it runs
	// before them: the nodes drain while NATS is still there.
	t.Cleanup(func() {
		for _, n := range e.nodes {
			if err := n.stop(15 * time.Second); err != nil {
				t.Errorf("%v", err)
			}
		}
		if t.Failed() {
			e.dumpLogs(t, nil)
		}
	})
	// All at once, as an operator starting a fleet would.
	for _, n := range e.nodes {
		if err := n.start(); err != nil {
			t.Fatal(err)
		}
	}
	e.waitStarted(t)

	nc, err := nats.Connect(strings.Join(urls, ","), nats.Name("faulttest"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if e.cl, err = saga.NewClient(nc, saga.ClientOptions{Stream: e.cfg, Logger: e.log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cl.Close)
	if e.hist, err = stream.Open(nc, e.cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.hist.Close)
	ctx := ctxTimeout(t, 2*time.Minute)
	if e.proj, err = pgarchive.Open(ctx, e.pg.URL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.proj.Close)

	// The fleet is ready when what the nodes create exists and a saga
	// runs through it.
	natstest.WaitFor(t, time.Minute, "the nodes' streams and consumers", func() bool {
		for _, wf := range []string{order.Workflow.Name(), approval.WorkflowType} {
			if ok, err := e.hist.HasWorkflowConsumer(ctx, wf); err != nil || !ok {
				return false
			}
		}
		_, err := e.hist.JetStream().Stream(ctx, e.cfg.Defaults().InboxStream())
		return err == nil
	})
	if _, err := e.cl.Start(ctx, order.Workflow.Name(), orderInput("warmup"), saga.StartOptions{ID: "faulttest-warmup"}); err != nil {
		t.Fatal(err)
	}
	if d, err := e.cl.Wait(ctx, "faulttest-warmup"); err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("warm-up saga: %v %+v", err, d)
	}
	t.Logf("fleet of %d node processes ready %s after the cluster", len(e.nodes), time.Since(began).Round(time.Millisecond))
	return e
}

// waitStarted waits until every node says it started, and fails the
// test if one ends instead.
func (e *faultEnv) waitStarted(t *testing.T) {
	t.Helper()
	natstest.WaitFor(t, time.Minute, "every node to start", func() bool {
		for _, n := range e.nodes {
			if gone, err := n.exited(); gone {
				t.Fatalf("node %s (process %d) ended while starting: %v\n%s", n.name, n.starts, err, tailFile(n.log, 4096))
			}
			if !n.started() {
				return false
			}
		}
		return true
	})
}

// checkAlive fails the test if a node ended without being killed (a
// node process must run until stopped), and starts it again.
func (e *faultEnv) checkAlive(t *testing.T, n *nodeProc) {
	t.Helper()
	if gone, err := n.exited(); gone {
		t.Errorf("node %s (process %d) ended by itself: %v\n%s", n.name, n.starts, err, tailFile(n.log, 4096))
		if err := n.start(); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs one scenario: its load and its faults, then the checks.
func (e *faultEnv) run(t *testing.T, sc faultScenario) {
	plan := planLoad(sc.prefix, e.size.sagas, sc.window, e.size.startSpread, e.rng)
	ctx, cancel := context.WithTimeout(context.Background(), sc.window+callBudget+terminalDeadline+projectorDeadline+time.Minute)
	defer cancel()
	e.log.Info("faulttest: scenario begins", "scenario", sc.name, "sagas", len(plan), "window", sc.window)
	load := runLoad(ctx, e.cl, e.log, plan)
	// On a failure mid-way the load stops before the test returns.
	defer load.wait()
	defer cancel()

	began := time.Now()
	var counts faultCounts
	sc.inject(t, e, &counts)
	faultsEnded := time.Now()
	e.log.Info("faulttest: faults ended", "scenario", sc.name, "after", faultsEnded.Sub(began))
	load.wait()
	loadEnded := time.Now()
	acked, ids, failures := load.result(plan)
	for _, f := range failures {
		t.Errorf("load: %s", f)
	}
	for _, n := range e.nodes {
		e.checkAlive(t, n)
	}

	// Every saga ends.
	final, stalled := e.waitTerminal(ctx, ids, terminalDeadline)
	allTerminal := time.Now()
	if len(stalled) > 0 {
		t.Errorf("%d of %d sagas not ended %s after the faults and the load ended:", len(stalled), len(ids), terminalDeadline)
		for i, s := range stalled {
			if i == 20 {
				t.Errorf("  … and %d more", len(stalled)-20)
				break
			}
			t.Errorf("  %s", s)
		}
	}
	// Each as its user expects.
	kinds := map[string]sagaKind{}
	for _, p := range plan {
		kinds[p.id] = p.kind
	}
	var wrong []string
	for _, id := range ids {
		if d := final[id]; d != nil {
			if msg := checkOutcome(kinds[id], d); msg != "" {
				wrong = append(wrong, fmt.Sprintf("%s (%s): %s", id, kinds[id], msg))
			}
		}
	}
	for i, w := range wrong {
		if i == 20 {
			t.Errorf("  … and %d more sagas with the wrong outcome", len(wrong)-20)
			break
		}
		t.Errorf("wrong outcome: %s", w)
	}

	// The projection catches up, and the histories keep every invariant.
	projBegan := time.Now()
	if err := e.waitProjector(ctx, projectorDeadline); err != nil {
		t.Errorf("projector: %v", err)
	}
	projLag := time.Since(projBegan)
	rep, err := invariant.Check(ctx, invariant.Options{Histories: e.hist, IDs: ids, Acked: acked, Projection: e.proj, RequireEnded: true})
	if err != nil {
		t.Fatalf("invariant check: %v", err)
	}
	if len(rep.Violations) > 0 {
		t.Errorf("invariants violated: %s", rep)
	}

	// Activities run at least once, and more only because of the faults.
	ex, err := e.executions(ctx, sc.prefix, ids)
	if err != nil {
		t.Fatalf("executions: %v", err)
	}
	for i, v := range ex.violations {
		if i == 20 {
			t.Errorf("  … and %d more", len(ex.violations)-20)
			break
		}
		t.Errorf("executions: %s", v)
	}

	violations := len(rep.Violations) + len(wrong) + len(ex.violations) + len(stalled)
	summary := fmt.Sprintf("fault scenario %s: %d sagas (%s); peak %d open at once; all ended %s after the faults (%s after the load's last call); "+
		"%d activity executions, %d beyond one per (saga, activity); %d extra attempts; %d violations; "+
		"node restarts %d, NATS restarts %d, PostgreSQL restarts %d; projector caught up in %s; %d client calls retried",
		sc.name, len(ids), byStatus(final), peakOpen(final), allTerminal.Sub(faultsEnded).Round(100*time.Millisecond), allTerminal.Sub(loadEnded).Round(100*time.Millisecond),
		ex.total, ex.extra, rep.ExtraAttempts, violations,
		counts.nodeRestarts, counts.natsRestarts, counts.pgRestarts, projLag.Round(100*time.Millisecond), load.retries.Load())
	t.Log(summary)
	t.Logf("invariant report: %s", rep)
	if len(ex.extraBy) > 0 {
		t.Logf("extra executions by activity: %v", ex.extraBy)
	}
	e.summaries = append(e.summaries, summary)
	if t.Failed() {
		var suspects []string
		for _, s := range stalled {
			suspects = append(suspects, strings.Fields(s)[0])
		}
		for _, v := range rep.Violations {
			suspects = append(suspects, v.SagaID)
		}
		e.dumpHistories(t, ctx, suspects)
		e.dumpLogs(t, suspects)
	}
}

// dumpHistories shows the histories of the first sagas under suspicion.
func (e *faultEnv) dumpHistories(t *testing.T, ctx context.Context, ids []string) {
	t.Helper()
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	for i, id := range ids {
		if i == 3 {
			break
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		commits, err := e.hist.ReadLatest(rctx, id)
		cancel()
		if err != nil {
			t.Logf("---- history of %s: %v", id, err)
			continue
		}
		var b strings.Builder
		for _, c := range commits {
			fmt.Fprintf(&b, "  commit at seq %d (decided %v):\n", c.Seq, c.Commit.Decided)
			for _, ev := range c.Commit.Events {
				line := fmt.Sprintf("    %3d %s %s %+v", ev.ID, ev.Time.Format("15:04:05.000"), ev.Type, ev.Attrs)
				if len(line) > 240 {
					line = line[:240] + "…"
				}
				b.WriteString(line + "\n")
			}
		}
		t.Logf("---- history of %s:\n%s", id, b.String())
	}
}

// checkOutcome says what is wrong with how a saga ended, "" if nothing.
func checkOutcome(k sagaKind, d *saga.Description) string {
	comp := ""
	if d.Compensation != nil {
		comp = d.Compensation.Status
	}
	errMsg := ""
	if d.Error != nil {
		errMsg = d.Error.Message
	}
	switch k {
	case kindOrderCompletes, kindApproved:
		if d.Status != saga.StatusCompleted {
			return fmt.Sprintf("ended %s (%s), want completed", d.Status, errMsg)
		}
	case kindOrderFails:
		if d.Status != saga.StatusFailed || (comp != "" && comp != stream.CompensationCompleted) {
			return fmt.Sprintf("ended %s with compensation %q (%s), want failed with its compensation completed", d.Status, comp, errMsg)
		}
	case kindTimesOut:
		if d.Status != saga.StatusFailed || comp != stream.CompensationCompleted || !strings.Contains(errMsg, approval.TimeoutMessage) {
			return fmt.Sprintf("ended %s with compensation %q (%s), want failed on its timeout with the budget released", d.Status, comp, errMsg)
		}
	case kindCanceled:
		if d.Status != saga.StatusCanceled || comp != stream.CompensationCompleted {
			return fmt.Sprintf("ended %s with compensation %q (%s), want canceled with the budget released", d.Status, comp, errMsg)
		}
	}
	return ""
}

// waitTerminal describes the sagas until every one has ended or d passed,
// and returns their last descriptions and the ones that did not end.
func (e *faultEnv) waitTerminal(ctx context.Context, ids []string, d time.Duration) (map[string]*saga.Description, []string) {
	deadline := time.Now().Add(d)
	final := map[string]*saga.Description{}
	pending := slices.Clone(ids)
	lastErr := map[string]error{}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		var mu sync.Mutex
		var still []string
		forEach(pending, 8, func(id string) {
			rctx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			desc, err := e.cl.Describe(rctx, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				lastErr[id] = err
				still = append(still, id)
				return
			}
			delete(lastErr, id)
			final[id] = desc
			if !desc.Status.Terminal() {
				still = append(still, id)
			}
		})
		pending = still
		if len(pending) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		<-tick.C
	}
	sort.Strings(pending)
	var stalled []string
	for _, id := range pending {
		switch desc := final[id]; {
		case lastErr[id] != nil:
			stalled = append(stalled, fmt.Sprintf("%s: describe: %v", id, lastErr[id]))
		case desc.Blocked != nil:
			stalled = append(stalled, fmt.Sprintf("%s: blocked: %s: %s (at event %d, node %s)", id, desc.Blocked.Reason, desc.Blocked.Message, desc.Blocked.AtEventID, desc.Blocked.Node))
		default:
			var open []string
			for _, a := range desc.PendingActivities {
				open = append(open, fmt.Sprintf("%s@%d", a.ActivityType, a.ScheduledEventID))
			}
			stalled = append(stalled, fmt.Sprintf("%s: %s after %d events, last update %s, pending activities %v, warning %q",
				id, desc.Status, desc.Events, desc.UpdatedAt.Format(time.RFC3339Nano), open, desc.Warning))
		}
	}
	return final, stalled
}

// waitProjector waits until the projector consumer of every history
// stream has nothing left to deliver or to be acknowledged.
func (e *faultEnv) waitProjector(ctx context.Context, d time.Duration) error {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		behind, err := e.projectorBacklog(ctx)
		if err == nil && behind == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not caught up after %s: %d commits behind (last error: %v)", d, behind, err)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (e *faultEnv) projectorBacklog(ctx context.Context) (uint64, error) {
	var behind uint64
	cfg := e.cfg.Defaults()
	for shard := range cfg.HistoryShards {
		rctx, cancel := context.WithTimeout(ctx, callTimeout)
		c, err := e.hist.JetStream().Consumer(rctx, cfg.HistoryStream(shard), "saga-projector")
		if err != nil {
			cancel()
			return 0, err
		}
		info, err := c.Info(rctx)
		cancel()
		if err != nil {
			return 0, err
		}
		behind += info.NumPending + uint64(info.NumAckPending)
	}
	return behind, nil
}

// executionCount is what the execution record says of one scenario.
type executionCount struct {
	total, extra int
	extraBy      map[string]int
	violations   []string
}

// executions reads the fleet's execution record for the sagas of prefix
// and checks it against their histories: an activity or compensation
// whose result is recorded ran at least once, and nothing ran that was
// not scheduled.
func (e *faultEnv) executions(ctx context.Context, prefix string, ids []string) (executionCount, error) {
	ex := executionCount{extraBy: map[string]int{}}
	f, err := os.Open(e.execPath)
	if err != nil {
		return ex, err
	}
	defer f.Close()
	ran := map[[2]string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, step, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.Contains(step, " ") {
			ex.violations = append(ex.violations, fmt.Sprintf("malformed line %q in %s", sc.Text(), e.execPath))
			continue
		}
		if strings.HasPrefix(id, prefix+"-") {
			ran[[2]string{id, step}]++
			ex.total++
		}
	}
	if err := sc.Err(); err != nil {
		return ex, err
	}
	for k, n := range ran {
		if n > 1 {
			ex.extra += n - 1
			ex.extraBy[k[1]] += n - 1
		}
	}

	var mu sync.Mutex
	scheduled := map[[2]string]bool{}
	var readErr error
	forEach(ids, 8, func(id string) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		events, err := e.cl.History(rctx, id)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			readErr = errors.Join(readErr, err)
			return
		}
		types := map[uint64]string{}
		for _, ev := range events {
			var done uint64
			switch a := ev.Attrs.(type) {
			case *stream.ActivityTaskScheduledAttrs:
				types[ev.ID] = a.ActivityType
				scheduled[[2]string{id, a.ActivityType}] = true
				continue
			case *stream.CompensationStepScheduledAttrs:
				types[ev.ID] = a.ActivityType
				scheduled[[2]string{id, a.ActivityType}] = true
				continue
			case *stream.ActivityTaskCompletedAttrs:
				done = a.ScheduledEventID
			case *stream.CompensationStepCompletedAttrs:
				done = a.ScheduledEventID
			default:
				continue
			}
			if ran[[2]string{id, types[done]}] == 0 {
				ex.violations = append(ex.violations, fmt.Sprintf("saga %s: event %d records a result of %s (scheduled at event %d), which never ran", id, ev.ID, types[done], done))
			}
		}
	})
	if readErr != nil {
		return ex, readErr
	}
	for k := range ran {
		if !scheduled[k] {
			ex.violations = append(ex.violations, fmt.Sprintf("saga %s: %s ran but its history never scheduled it", k[0], k[1]))
		}
	}
	sort.Strings(ex.violations)
	return ex, nil
}

// dumpLogs shows the end of every node's log and of the harness's, and
// the lines that mention the sagas under suspicion.
func (e *faultEnv) dumpLogs(t *testing.T, suspects []string) {
	t.Helper()
	suspects = slices.Compact(slices.Sorted(slices.Values(suspects)))
	if len(suspects) > 5 {
		suspects = suspects[:5]
	}
	for _, n := range e.nodes {
		t.Logf("---- %s: the end of %s\n%s", n.name, n.log, tailFile(n.log, 6000))
		if len(suspects) > 0 {
			t.Logf("---- %s: lines about %v\n%s", n.name, suspects, strings.Join(grepFile(n.log, 40, suspects...), "\n"))
		}
	}
	t.Logf("---- the end of %s\n%s", e.logPath, tailFile(e.logPath, 4000))
}

// forEach calls f for every id, n at a time.
func forEach(ids []string, n int, f func(id string)) {
	work := make(chan string)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for id := range work {
				f(id)
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
}

// byStatus counts the sagas by their last status.
func byStatus(final map[string]*saga.Description) string {
	counts := map[string]int{}
	for _, d := range final {
		counts[string(d.Status)]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// peakOpen is the most sagas that had started and not yet ended at one
// time, as their histories tell.
func peakOpen(final map[string]*saga.Description) int {
	type edge struct {
		at   time.Time
		step int
	}
	var edges []edge
	for _, d := range final {
		edges = append(edges, edge{d.StartedAt, 1})
		if d.ClosedAt != nil {
			edges = append(edges, edge{*d.ClosedAt, -1})
		}
	}
	// Ends before starts at one instant: a saga is open from its start
	// to its end, not both.
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].step < edges[j].step
		}
		return edges[i].at.Before(edges[j].at)
	})
	open, peak := 0, 0
	for _, ed := range edges {
		open += ed.step
		peak = max(peak, open)
	}
	return peak
}
