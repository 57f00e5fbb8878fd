package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// The roles of docs/security.md, as its users block names them, and the
// inbox prefixes the page tells clients to use.
const (
	roleClient    = "saga-client"
	roleTrusted   = "saga-trusted-client"
	roleNode      = "saga-node"
	roleProjector = "saga-projector"

	clientInboxPrefix  = "_INBOX_saga_client"
	trustedInboxPrefix = "_INBOX_saga_trusted"
)

// TestSecurityDocPermissions runs a server configured with exactly the
// conf blocks of docs/security.md and checks each role against it: the
// node and projector sets are enough for the engine (sagas run, with
// compensation, timers, signals and cancellations, and no request of
// theirs is refused), and the client sets allow what the page promises
// and refuse what it denies, with the server's permissions violation.
//
// It runs with either format of JetStream's ack subjects: the server's
// default, and the one its feature flag js_ack_fc_v2 turns on.
func TestSecurityDocPermissions(t *testing.T) {
	for _, v2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("js_ack_fc_v2=%t", v2), func(t *testing.T) { testSecurityDocPermissions(t, v2) })
	}
}

func testSecurityDocPermissions(t *testing.T, ackV2 bool) {
	doc := loadSecurityDoc(t)
	srv := natstest.Start(t, func(o *embeddednats.Options) {
		o.Configure = func(so *server.Options) {
			so.Users = doc.users
			so.FeatureFlags = map[string]bool{server.FeatureFlagJsAckFormatV2: ackV2}
		}
	})

	admin, _ := doc.connect(t, srv, permAdmin)
	adminStore := rawStore(t, admin)

	// A message held longer than a third of its AckWait is kept alive with
	// "in progress" acks, then acked: more than the one reply
	// allow_responses permits, so it takes the set's ack subjects. The
	// payment of order o-slow, and the projection's first batch, are held
	// until their consumer heartbeats them (AckWait 3s: after a second).
	heartbeats := watchHeartbeats(t, admin, "saga-activities-"+order.StepProcessPayment, "saga-projector")
	orders := order.NewService()
	orders.Hook = func(ctx context.Context, step, orderID string) error {
		if step != order.StepProcessPayment || orderID != "o-slow" {
			return nil
		}
		select {
		case <-heartbeats["saga-activities-"+order.StepProcessPayment]:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	// The engine: a node running both examples, then a read-only projector.
	nodeConn, nodeViolations := doc.connect(t, srv, roleNode)
	metrics := prometheus.NewRegistry()
	// Activities go through tasks, so that the task lines of the set are
	// exercised: an activity run eagerly uses only the dispatcher's ack
	// subject, which every commit exercises.
	startPermNode(t, nodeConn, nodeViolations, worker.Options{NodeName: "perm-node", AckWait: 3 * time.Second, Metrics: metrics, DisableEagerActivities: true},
		append(orders.Definitions(), approval.NewService().Definitions()...)...)
	projection := &listedProjection{sagas: map[string]int{}, hold: heartbeats["saga-projector"]}
	projConn, projViolations := doc.connect(t, srv, roleProjector)
	startPermNode(t, projConn, projViolations, worker.Options{NodeName: "perm-projector", Projection: projection, ProjectorOnly: true, AckWait: 3 * time.Second})

	client, clientViolations := doc.connect(t, srv, roleClient, nats.CustomInboxPrefix(clientInboxPrefix))
	clientJS, err := jetstream.New(client)
	if err != nil {
		t.Fatal(err)
	}
	trustedConn, trustedViolations := doc.connect(t, srv, roleTrusted, nats.CustomInboxPrefix(trustedInboxPrefix))
	trusted, err := saga.NewClient(trustedConn, saga.ClientOptions{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(trusted.Close)

	t.Run("client runs sagas by publishing and through the API", func(t *testing.T) {
		ctx := ctxTimeout(t, 30*time.Second)
		var started api.StartResponse
		// An approval nobody decides on times out on its durable timer
		// (whole seconds): started first, awaited last.
		expiring := jsonOf(t, approval.Input{RequestID: "perm-ap-timeout", Amount: 10, Timeout: "1s"})
		askAPI(t, client, "saga.api.start.approval", api.StartRequest{ID: "perm-ap-timeout", Input: expiring}, &started)

		askAPI(t, client, "saga.api.start.order", api.StartRequest{ID: "perm-order-api", Input: jsonOf(t, orderInput("o-api"))}, &started)
		if started.ID != "perm-order-api" {
			t.Fatalf("start answered %+v", started)
		}
		waitDescribed(t, client, "perm-order-api", saga.StatusCompleted)

		// A start published to the inbox, whose last step fails: the node
		// set covers the inbox consumers and the compensation.
		failing := orderInput("o-pub")
		failing.FailStep = order.StepShipOrder
		publishStored(t, ctx, clientJS, &nats.Msg{Subject: "saga.start.order", Data: jsonOf(t, failing),
			Header: nats.Header{worker.HeaderSagaID: {"perm-order-pub"}, worker.HeaderContentType: {worker.ContentTypeJSON}}})
		d := waitDescribed(t, client, "perm-order-pub", saga.StatusFailed)
		if d.Compensation == nil || d.Compensation.Status != "completed" {
			t.Fatalf("perm-order-pub compensation %+v, want completed", d.Compensation)
		}

		// Approvals wait on a durable timer for a signal: one approved by a
		// published signal, one by the API's signal, one canceled through
		// the API, one by a published cancellation.
		for _, id := range []string{"perm-ap-1", "perm-ap-3", "perm-ap-4"} {
			askAPI(t, client, "saga.api.start.approval", api.StartRequest{ID: id, Input: approvalInput(t, id)}, &started)
		}
		publishStored(t, ctx, clientJS, &nats.Msg{Subject: "saga.start.approval", Data: approvalInput(t, "perm-ap-2"),
			Header: nats.Header{worker.HeaderSagaID: {"perm-ap-2"}, worker.HeaderContentType: {worker.ContentTypeJSON}}})

		var status api.QueryResponse
		askAPI(t, client, "saga.api.query", api.QueryRequest{ID: "perm-ap-1", Name: approval.QueryStatus}, &status)
		if !strings.Contains(string(status.Result), `"request_id":"perm-ap-1"`) {
			t.Fatalf("query answered %s", status.Result)
		}
		publishStored(t, ctx, clientJS, &nats.Msg{Subject: "saga.signal.perm-ap-1." + approval.SignalApprove,
			Data: jsonOf(t, approval.Decision{By: "alice"}), Header: nats.Header{worker.HeaderContentType: {worker.ContentTypeJSON}}})
		waitDescribed(t, client, "perm-ap-1", saga.StatusCompleted)

		waitDescribed(t, client, "perm-ap-2", saga.StatusRunning) // the start moved into its history
		var signaled api.SignalResponse
		askAPI(t, client, "saga.api.signal", api.SignalRequest{ID: "perm-ap-2", Name: approval.SignalApprove, Input: jsonOf(t, approval.Decision{By: "bob"})}, &signaled)
		if signaled.ID != "perm-ap-2" || signaled.InboxSeq == 0 {
			t.Fatalf("signal answered %+v", signaled)
		}
		waitDescribed(t, client, "perm-ap-2", saga.StatusCompleted)

		var canceled api.SagaRequest
		askAPI(t, client, "saga.api.cancel", api.CancelRequest{ID: "perm-ap-3", Reason: "withdrawn"}, &canceled)
		if canceled.ID != "perm-ap-3" {
			t.Fatalf("cancel answered %+v", canceled)
		}
		if d := waitDescribed(t, client, "perm-ap-3", saga.StatusCanceled); d.Compensation == nil || d.Compensation.Status != "completed" {
			t.Fatalf("perm-ap-3 compensation %+v, want completed", d.Compensation)
		}

		if err := client.Publish("saga.cancel.perm-ap-4", []byte("customer called")); err != nil {
			t.Fatal(err)
		}
		waitDescribed(t, client, "perm-ap-4", saga.StatusCanceled)

		if d := waitDescribed(t, client, "perm-ap-timeout", saga.StatusFailed); d.Compensation == nil || d.Compensation.Status != "completed" {
			t.Fatalf("perm-ap-timeout compensation %+v, want completed", d.Compensation)
		}
	})

	t.Run("trusted client starts, waits for, reads and cancels sagas", func(t *testing.T) {
		ctx := ctxTimeout(t, 30*time.Second)
		run, err := saga.StartWorkflow(ctx, trusted, order.Workflow, orderInput("o-go"), saga.StartOptions{ID: "perm-order-go"})
		if err != nil {
			t.Fatal(err)
		}
		out, err := run.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if out.TrackingNumber != "trk-o-go" {
			t.Fatalf("output %+v", out)
		}
		events, err := trusted.History(ctx, "perm-order-go")
		if err != nil || len(events) == 0 || events[len(events)-1].Type != stream.WorkflowExecutionCompleted {
			t.Fatalf("history %v, %v", eventTypes(events), err)
		}
		slow, err := saga.StartWorkflow(ctx, trusted, order.Workflow, orderInput("o-slow"), saga.StartOptions{ID: "perm-order-slow"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := slow.Get(ctx); err != nil {
			t.Fatal(err)
		}
		// Every order's payment ran once: o-slow's task, held until the
		// node heartbeated it, was not delivered again.
		if n := orders.Calls(order.StepProcessPayment); n != 4 {
			t.Fatalf("process-payment ran %d times for 4 orders", n)
		}

		var in approval.Input
		if err := json.Unmarshal(approvalInput(t, "perm-ap-go"), &in); err != nil {
			t.Fatal(err)
		}
		waiting, err := saga.StartWorkflow(ctx, trusted, approval.Workflow, in, saga.StartOptions{ID: "perm-ap-go"})
		if err != nil {
			t.Fatal(err)
		}
		// Describe of a running saga checks that a node runs its type.
		if d, err := trusted.Describe(ctx, "perm-ap-go"); err != nil || d.Status != saga.StatusRunning || d.Warning != "" {
			t.Fatalf("describe %+v, %v", d, err)
		}
		if err := trusted.Cancel(ctx, "perm-ap-go", "withdrawn"); err != nil {
			t.Fatal(err)
		}
		if _, err := waiting.Get(ctx); err == nil {
			t.Fatal("a canceled approval returned an output")
		}
		if d, err := trusted.Describe(ctx, "perm-ap-go"); err != nil || d.Status != saga.StatusCanceled {
			t.Fatalf("describe %+v, %v", d, err)
		}
	})

	t.Run("projector reads histories and serves list, and writes nothing", func(t *testing.T) {
		ctx := ctxTimeout(t, 30*time.Second)
		natstest.WaitFor(t, 20*time.Second, "the projection to receive every saga", func() bool {
			return projection.has("perm-order-api", "perm-order-pub", "perm-ap-1", "perm-ap-2", "perm-ap-3", "perm-ap-4", "perm-order-go", "perm-ap-go")
		})
		var list api.ListResponse
		askAPI(t, client, "saga.api.list", api.ListRequest{}, &list)
		if !strings.Contains(string(list.Sagas), `"perm-order-api"`) {
			t.Fatalf("list answered %s", list.Sagas)
		}

		// A history message no engine wrote is set aside by the dispatcher
		// and by the projector, each on its dead-letter subject.
		if err := admin.Publish("saga.h.0.perm-garbage", []byte("not a commit")); err != nil {
			t.Fatal(err)
		}
		for _, consumer := range []string{stream.DispatcherConsumer, "saga-projector"} {
			natstest.WaitFor(t, 20*time.Second, consumer+" to set the message aside", func() bool {
				return slices.ContainsFunc(deadLettersOf(t, ctx, adminStore, consumer), func(d stream.DeadLetter) bool {
					return d.Subject == "saga.h.0.perm-garbage"
				})
			})
		}

		// Its own reads of a history: a batched direct get. The order
		// started through the API is 4 commits: the node serving the start
		// appended it with its first decision.
		readerConn, readerViolations := doc.connect(t, srv, roleProjector)
		commits, err := rawStore(t, readerConn).Read(ctx, "perm-order-api", 0)
		if err != nil || len(commits) != 4 {
			t.Fatalf("projector read %d commits, %v; want 4", len(commits), err)
		}
		if v := readerViolations.list(); len(v) > 0 {
			t.Fatalf("the projector's reads were refused: %v", v)
		}

		before := historyLen(t, adminStore, "perm-order-api")
		spy, spyViolations := doc.connect(t, srv, roleProjector)
		spyJS, err := jetstream.New(spy)
		if err != nil {
			t.Fatal(err)
		}
		forged := forgedCommit(t, "perm-order-api")
		refusedPublish(t, spyViolations, spyJS, forged)
		refusedPublish(t, spyViolations, spyJS, &nats.Msg{Subject: "saga.task.activity.ship-order.perm-order-api.99", Data: []byte{0x80}})
		refusedPublish(t, spyViolations, spyJS, &nats.Msg{Subject: "saga.start.order", Data: []byte("{}"),
			Header: nats.Header{worker.HeaderSagaID: {"perm-by-projector"}, worker.HeaderContentType: {worker.ContentTypeJSON}}})
		refusedRequest(t, spyViolations, spy, "$JS.API.STREAM.DELETE.SAGA_HISTORY_0", nil)
		refusedRequest(t, spyViolations, spy, "$JS.API.STREAM.PURGE.SAGA_HISTORY_0", []byte(`{"filter":"saga.h.0.perm-order-api"}`))
		refusedRequest(t, spyViolations, spy, "$JS.API.CONSUMER.DELETE.SAGA_HISTORY_0."+stream.DispatcherConsumer, nil)
		refused(t, spyViolations, "Publish", "$JS.API.CONSUMER.CREATE.SAGA_HISTORY_0.saga-dispatch.saga.h.0.*", func(ctx context.Context) error {
			// The dispatcher's consumer, as the projector might change it.
			_, err := spyJS.CreateOrUpdateConsumer(ctx, "SAGA_HISTORY_0", jetstream.ConsumerConfig{
				Durable: stream.DispatcherConsumer, FilterSubject: "saga.h.0.*", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1})
			return err
		})
		if after := historyLen(t, adminStore, "perm-order-api"); after != before {
			t.Fatalf("history of perm-order-api went from %d to %d commits", before, after)
		}
		if c, err := adminStore.JetStream().Consumer(ctx, "SAGA_HISTORY_0", stream.DispatcherConsumer); err != nil || c.CachedInfo().Config.MaxAckPending == 1 {
			t.Fatalf("dispatcher consumer after the projector's attempts: %v", err)
		}
	})

	t.Run("client is refused the history, the stream API and the task subjects", func(t *testing.T) {
		ctx := ctxTimeout(t, 30*time.Second)
		const victim = "perm-order-api"
		before := historyLen(t, adminStore, victim)
		info := func() jetstream.StreamState {
			s, err := adminStore.JetStream().Stream(ctx, "SAGA_HISTORY_0")
			if err != nil {
				t.Fatalf("history stream after the client's attempts: %v", err)
			}
			return s.CachedInfo().State
		}
		state := info()

		// Appends to an existing history and to a history of its own.
		refusedPublish(t, clientViolations, clientJS, forgedCommit(t, victim))
		refusedPublish(t, clientViolations, clientJS, forgedCommit(t, "perm-forged"))
		if after := historyLen(t, adminStore, victim); after != before {
			t.Fatalf("history of %s went from %d to %d commits", victim, before, after)
		}
		if n := historyLen(t, adminStore, "perm-forged"); n != 0 {
			t.Fatalf("a client created a history of %d commits", n)
		}
		refusedPublish(t, clientViolations, clientJS, &nats.Msg{Subject: "saga.task.workflow.order", Data: []byte{0x80}})

		// Stream delete and purge.
		refused(t, clientViolations, "Publish", "$JS.API.STREAM.DELETE.SAGA_HISTORY_0", func(ctx context.Context) error {
			return clientJS.DeleteStream(ctx, "SAGA_HISTORY_0")
		})
		refusedRequest(t, clientViolations, client, "$JS.API.STREAM.PURGE.SAGA_HISTORY_0", nil)
		if now := info(); now.Msgs < state.Msgs || now.FirstSeq != state.FirstSeq {
			t.Fatalf("history stream went from %d messages (first %d) to %d (first %d)", state.Msgs, state.FirstSeq, now.Msgs, now.FirstSeq)
		}

		// Reads of another saga's history: direct gets, both forms, and the
		// leader's message get.
		refusedRequest(t, clientViolations, client, "$JS.API.DIRECT.GET.SAGA_HISTORY_0", []byte(`{"last_by_subj":"saga.h.0.`+victim+`"}`))
		refusedRequest(t, clientViolations, client, "$JS.API.DIRECT.GET.SAGA_HISTORY_0.saga.h.0."+victim, nil)
		refusedRequest(t, clientViolations, client, "$JS.API.STREAM.MSG.GET.SAGA_HISTORY_0", []byte(`{"last_by_subj":"saga.h.0.`+victim+`"}`))

		// A consumer on the history stream.
		refused(t, clientViolations, "Publish", "$JS.API.CONSUMER.CREATE.SAGA_HISTORY_0.spy.saga.h.0.*", func(ctx context.Context) error {
			_, err := clientJS.CreateConsumer(ctx, "SAGA_HISTORY_0", jetstream.ConsumerConfig{Durable: "spy", FilterSubject: "saga.h.0.*"})
			return err
		})

		// Subscriptions to the history and task subjects, and to the
		// nodes' inboxes (which carry their reads of histories): refused,
		// and nothing arrives on them while a saga runs.
		var mu sync.Mutex
		var leaked []string
		for _, subject := range []string{"saga.h.>", "saga.task.>", "_INBOX.>"} {
			mark := clientViolations.mark()
			sub, err := client.Subscribe(subject, func(m *nats.Msg) {
				mu.Lock()
				defer mu.Unlock()
				leaked = append(leaked, m.Subject)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			clientViolations.waitSince(t, mark, fmt.Sprintf("Permissions Violation for Subscription to %q", subject))
		}
		run, err := saga.StartWorkflow(ctx, trusted, order.Workflow, orderInput("o-late"), saga.StartOptions{ID: "perm-order-late"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := run.Get(ctx); err != nil {
			t.Fatal(err)
		}
		if err := client.FlushWithContext(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(leaked) > 0 {
			t.Fatalf("the client received %d messages on refused subscriptions: %v", len(leaked), leaked)
		}
	})

	// The node's metrics read every engine consumer's lag.
	families, err := metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	lagged := map[string]bool{}
	for _, f := range families {
		if f.GetName() != "jetsaga_consumer_pending_messages" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "consumer" {
					lagged[l.GetValue()] = true
				}
			}
		}
	}
	for _, c := range []string{stream.DispatcherConsumer, "saga-projector", "saga-timers", "saga-signals", "saga-activities-" + order.StepShipOrder} {
		if !lagged[c] {
			t.Errorf("no lag metric of consumer %s (have %v)", c, lagged)
		}
	}

	// Service discovery reaches the nodes' API service.
	if reply, err := admin.Request("$SRV.INFO.saga-api", nil, 5*time.Second); err != nil || !strings.Contains(string(reply.Data), `"name":"saga-api"`) {
		t.Fatalf("$SRV.INFO.saga-api: %v", err)
	}
	// Everything the engine and the trusted client did was allowed: a
	// permission refused to them is a missing line in the page's sets.
	for role, v := range map[string]*violations{roleNode: nodeViolations, roleProjector + " node": projViolations, roleTrusted: trustedViolations} {
		if got := v.list(); len(got) > 0 {
			slices.Sort(got)
			t.Errorf("%s was refused: %v", role, slices.Compact(got))
		}
	}
}

// permAdmin is a user the test adds to the page's users, with every
// right, to look at the streams from outside the roles.
const permAdmin = "perm-admin"

// securityDoc is docs/security.md as a server knows it: its users and
// their passwords.
type securityDoc struct {
	users     []*server.User
	passwords map[string]string
}

// loadSecurityDoc loads every conf block of docs/security.md, in order, as
// one server configuration, with a random password for each user in the
// environment, where the page's configuration reads them. It checks that
// the page's nsc example for the client grants what its conf set does.
func loadSecurityDoc(t *testing.T) *securityDoc {
	t.Helper()
	page, err := os.ReadFile(filepath.Join("..", "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	confs := fencedBlocks(string(page), "conf")
	if len(confs) == 0 {
		t.Fatal("docs/security.md has no conf blocks")
	}
	doc := &securityDoc{passwords: map[string]string{}}
	for _, role := range []string{roleClient, roleTrusted, roleNode, roleProjector, permAdmin} {
		doc.passwords[role] = "pw" + nuid.Next()
	}
	for _, role := range []string{roleClient, roleTrusted, roleNode, roleProjector} {
		t.Setenv(strings.ToUpper(strings.ReplaceAll(role, "-", "_"))+"_PASSWORD", doc.passwords[role])
	}
	path := filepath.Join(t.TempDir(), "security.conf")
	if err := os.WriteFile(path, []byte(strings.Join(confs, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("the conf blocks of docs/security.md: %v", err)
	}
	var names []string
	for _, u := range opts.Users {
		names = append(names, u.Username)
		if u.Password != doc.passwords[u.Username] {
			t.Fatalf("user %s does not take its password from $%s_PASSWORD", u.Username, strings.ToUpper(strings.ReplaceAll(u.Username, "-", "_")))
		}
		if u.Permissions == nil || u.Permissions.Publish == nil || len(u.Permissions.Publish.Allow) == 0 {
			t.Fatalf("user %s has no publish allow list", u.Username)
		}
	}
	slices.Sort(names)
	if want := []string{roleClient, roleNode, roleProjector, roleTrusted}; !slices.Equal(names, want) {
		t.Fatalf("docs/security.md defines users %v, want %v", names, want)
	}
	checkNscExample(t, string(page), opts.Users)
	doc.users = append(opts.Users, &server.User{Username: permAdmin, Password: doc.passwords[permAdmin]})
	return doc
}

// fencedBlocks returns the bodies of the page's fenced code blocks whose
// info string is lang.
func fencedBlocks(page, lang string) []string {
	var blocks []string
	var cur []string
	in := false
	for line := range strings.SplitSeq(page, "\n") {
		switch {
		case !in && strings.TrimSpace(line) == "```"+lang:
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}

// checkNscExample compares the page's nsc command for the client with the
// client's conf set.
func checkNscExample(t *testing.T, page string, users []*server.User) {
	t.Helper()
	var cmd string
	for _, b := range fencedBlocks(page, "sh") {
		if strings.Contains(b, "nsc add user") && strings.Contains(b, "--name "+roleClient) {
			cmd = b
		}
	}
	if cmd == "" {
		t.Fatalf("docs/security.md has no nsc example for %s", roleClient)
	}
	flagged := func(flag string) []string {
		var out []string
		for _, m := range regexp.MustCompile(flag+` '([^']+)'`).FindAllStringSubmatch(cmd, -1) {
			out = append(out, m[1])
		}
		slices.Sort(out)
		return out
	}
	for _, u := range users {
		if u.Username != roleClient {
			continue
		}
		pub, sub := slices.Sorted(slices.Values(u.Permissions.Publish.Allow)), slices.Sorted(slices.Values(u.Permissions.Subscribe.Allow))
		if got := flagged("--allow-pub"); !slices.Equal(got, pub) {
			t.Fatalf("nsc example publishes %v, the conf set %v", got, pub)
		}
		if got := flagged("--allow-sub"); !slices.Equal(got, sub) {
			t.Fatalf("nsc example subscribes %v, the conf set %v", got, sub)
		}
	}
}

// connect opens a connection as a user of the page, closed when the test
// ends, that records the errors the server reports on it.
func (d *securityDoc) connect(t *testing.T, srv *natstest.Server, user string, opts ...nats.Option) (*nats.Conn, *violations) {
	t.Helper()
	v := &violations{}
	base := []nats.Option{nats.UserInfo(user, d.passwords[user]), nats.MaxReconnects(-1), nats.ErrorHandler(v.record)}
	nc, err := nats.Connect(srv.ClientURL(), append(base, opts...)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	return nc, v
}

// violations records the permissions violations the server reports on a
// connection (nats.go hands them to the async error handler).
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) record(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.errs)
}

// mark is how many violations were reported so far.
func (v *violations) mark() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.errs)
}

// waitSince waits for a violation containing want reported after mark.
func (v *violations) waitSince(t *testing.T, mark int, want string) {
	t.Helper()
	natstest.WaitFor(t, 5*time.Second, want, func() bool {
		return slices.ContainsFunc(v.list()[mark:], func(e string) bool { return strings.Contains(e, want) })
	})
}

// refused runs op, which the server must refuse with a permissions
// violation of kind ("Publish") on subject. A refused request is never
// answered, so op is stopped once the violation is reported, and must
// have failed.
func refused(t *testing.T, v *violations, kind, subject string, op func(context.Context) error) {
	t.Helper()
	mark := v.mark()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- op(ctx) }()
	v.waitSince(t, mark, fmt.Sprintf("Permissions Violation for %s to %q", kind, subject))
	cancel()
	if err := <-done; err == nil {
		t.Fatalf("%s to %s succeeded", kind, subject)
	}
}

// refusedRequest sends a request the server must refuse.
func refusedRequest(t *testing.T, v *violations, nc *nats.Conn, subject string, body []byte) {
	t.Helper()
	refused(t, v, "Publish", subject, func(ctx context.Context) error {
		_, err := nc.RequestWithContext(ctx, subject, body)
		return err
	})
}

// refusedPublish makes a JetStream publish (one that waits for the
// stream's PubAck) the server must refuse.
func refusedPublish(t *testing.T, v *violations, js jetstream.JetStream, m *nats.Msg) {
	t.Helper()
	refused(t, v, "Publish", m.Subject, func(ctx context.Context) error {
		_, err := js.PublishMsg(ctx, m)
		return err
	})
}

// forgedCommit is a commit on a saga's history subject, without any
// expected sequence: the stream would store it if the server let it
// through.
func forgedCommit(t *testing.T, sagaID string) *nats.Msg {
	t.Helper()
	data, err := startCommit(t, sagaID, "forged").Encode()
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: stream.Config{}.Defaults().HistorySubject(sagaID), Data: data,
		Header: nats.Header{jetstream.MsgIDHeader: {"forged-" + nuid.Next()}}}
}

// historyLen is the number of commits in a saga's history.
func historyLen(t *testing.T, st *stream.Store, sagaID string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	commits, err := st.Read(ctx, sagaID, 0)
	if err != nil {
		t.Fatalf("read %s: %v", sagaID, err)
	}
	return len(commits)
}

// watchHeartbeats returns, for each consumer named, a channel closed once
// a client acknowledges one of its messages as in progress (the body
// "+WPI" on its ack subject), as nc sees the acks go by.
func watchHeartbeats(t *testing.T, nc *nats.Conn, consumers ...string) map[string]chan struct{} {
	t.Helper()
	seen := map[string]chan struct{}{}
	for _, c := range consumers {
		seen[c] = make(chan struct{})
	}
	out := maps.Clone(seen) // seen loses each consumer once seen
	var mu sync.Mutex
	sub, err := nc.Subscribe("$JS.ACK.>", func(m *nats.Msg) {
		if string(m.Data) != "+WPI" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for c, ch := range seen {
			if strings.Contains(m.Subject, "."+c+".") {
				close(ch)
				delete(seen, c)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return out
}

// startPermNode starts a node on nc, stopped when the test ends; v
// names what the server refused it if it cannot start.
func startPermNode(t *testing.T, nc *nats.Conn, v *violations, opts worker.Options, defs ...saga.Definition) *worker.Node {
	t.Helper()
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		t.Fatal(err)
	}
	opts.Logger = testLogger()
	opts.DeadlockTimeout = 5 * time.Second // a loaded race-enabled run can stall a step
	n, err := worker.New(nc, reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatalf("start %s: %v (refused: %v)", opts.NodeName, err, v.list())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := n.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", opts.NodeName, err)
		}
	})
	return n
}

// listedProjection stands in for the Postgres projection: it counts the
// commits of each saga it is given, and lists the sagas. Its writes wait
// until hold is closed, as a slow database's would.
type listedProjection struct {
	hold <-chan struct{}

	mu    sync.Mutex
	sagas map[string]int
}

func (p *listedProjection) Apply(ctx context.Context, commits []stream.StoredCommit) error {
	select {
	case <-p.hold:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range commits {
		p.sagas[c.Commit.SagaID]++
	}
	return nil
}

func (p *listedProjection) ListSagas(context.Context, api.ListRequest) (api.ListResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	type row struct {
		ID string `json:"id"`
	}
	var rows []row
	for id := range p.sagas {
		rows = append(rows, row{id})
	}
	data, err := json.Marshal(rows)
	return api.ListResponse{Sagas: data}, err
}

func (p *listedProjection) has(ids ...string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if p.sagas[id] == 0 {
			return false
		}
	}
	return true
}

// described is what the tests read of a describe reply.
type described struct {
	Status       saga.Status `json:"status"`
	Compensation *struct {
		Status string `json:"status"`
	} `json:"compensation"`
}

// askAPI sends an API request as any NATS client does and decodes the
// reply into out; an error reply fails the test.
func askAPI(t *testing.T, nc *nats.Conn, subject string, req, out any) {
	t.Helper()
	code, body, err := askRaw(nc, subject, req)
	if err != nil || code != "" {
		t.Fatalf("%s: %v %s %s", subject, err, code, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("%s replied %s: %v", subject, body, err)
	}
}

// askRaw returns an API reply's error code ("" for success) and body.
func askRaw(nc *nats.Conn, subject string, req any) (string, []byte, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return "", nil, err
	}
	return reply.Header.Get(micro.ErrorCodeHeader), reply.Data, nil
}

// waitDescribed asks saga.api.describe until the saga has status want; a
// saga that ends otherwise fails the test at once.
func waitDescribed(t *testing.T, nc *nats.Conn, id string, want saga.Status) described {
	t.Helper()
	var d described
	natstest.WaitFor(t, 20*time.Second, "saga "+id+" to be "+string(want), func() bool {
		code, body, err := askRaw(nc, "saga.api.describe", api.SagaRequest{ID: id})
		if err != nil || code == api.CodeNotFound {
			return false // not in its history yet
		}
		d = described{}
		if code != "" || json.Unmarshal(body, &d) != nil {
			t.Fatalf("describe %s: %s %s", id, code, body)
		}
		if d.Status != want && d.Status != saga.StatusRunning {
			t.Fatalf("saga %s ended %s, want %s: %s", id, d.Status, want, body)
		}
		return d.Status == want
	})
	return d
}

func jsonOf(t *testing.T, v any) json.RawMessage {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// approvalInput asks for an approval that waits an hour on its timer.
func approvalInput(t *testing.T, requestID string) json.RawMessage {
	t.Helper()
	return jsonOf(t, approval.Input{RequestID: requestID, Amount: 10, Timeout: "1h"})
}
