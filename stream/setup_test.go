package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/natstest"
)

func setupContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func setupJetStream(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc := natstest.Start(t).Conn()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

func openStore(t *testing.T, nc *nats.Conn, cfg Config) *Store {
	t.Helper()
	st, err := Open(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// logLines captures what a logger writes, one text line per record.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.FieldsFunc(l.buf.String(), func(r rune) bool { return r == '\n' })
}

func capturedLog() (*slog.Logger, *logLines) {
	l := &logLines{}
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelInfo})), l
}

// engineConsumer is a task consumer as the worker creates it.
func engineConsumer(durable, filter string, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "tasks",
		FilterSubject: filter,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 10_000,
	}
}

func streamInfo(t *testing.T, ctx context.Context, js jetstream.JetStream, name string) jetstream.StreamConfig {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config
}

// A node started with the default of one replica must not turn a
// cluster's replicated streams into single copies, nor may a node asking
// for three replicate streams the operator keeps single.
func TestEnsureStreamsKeepsTheReplicasOfExistingStreams(t *testing.T) {
	servers := natstest.StartCluster(t, 3)
	// The first R3 stream can take seconds after the cluster forms;
	// EnsureStreams retries until then.
	ctx := setupContext(t, 60*time.Second)

	first := openStore(t, servers[0].Conn(), Config{Replicas: 3})
	if err := first.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	second := openStore(t, servers[1].Conn(), Config{}) // the default: 1 replica
	if err := second.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	cfg := second.Config()
	for _, name := range []string{cfg.TaskStream(), cfg.HistoryStream(0)} {
		if got := streamInfo(t, ctx, second.JetStream(), name).Replicas; got != 3 {
			t.Errorf("stream %s has %d replicas after a node asking for 1 started, want 3", name, got)
		}
		inForce, ok := second.StreamConfigInForce(name)
		if !ok || inForce.Replicas != 3 {
			t.Errorf("StreamConfigInForce(%s) of the second node = %d replicas (found %v), want 3", name, inForce.Replicas, ok)
		}
	}

	single := openStore(t, servers[2].Conn(), Config{Prefix: "single"})
	if err := single.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	replicated := openStore(t, servers[0].Conn(), Config{Prefix: "single", Replicas: 3})
	if err := replicated.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	name := replicated.Config().HistoryStream(0)
	if got := streamInfo(t, ctx, replicated.JetStream(), name).Replicas; got != 1 {
		t.Errorf("stream %s has %d replicas after a node asking for 3 started, want the existing 1", name, got)
	}
	if inForce, _ := replicated.StreamConfigInForce(name); inForce.Replicas != 1 {
		t.Errorf("StreamConfigInForce(%s) = %d replicas, want 1", name, inForce.Replicas)
	}
}

// A shared consumer keeps the AckWait it has: a node asking for another
// one works with it, and every node sharing the consumer agrees on it.
func TestEnsureConsumerKeepsTheConsumersAckWait(t *testing.T) {
	_, js := setupJetStream(t)
	ctx := setupContext(t, 10*time.Second)
	cfg := Config{}.Defaults()
	if _, err := EnsureStream(ctx, js, cfg.taskStreamConfig(), nil); err != nil {
		t.Fatal(err)
	}
	name := WorkflowTaskConsumer("order")
	if _, err := js.CreateConsumer(ctx, cfg.TaskStream(), engineConsumer(name, cfg.WorkflowTaskSubject("order"), 9*time.Second)); err != nil {
		t.Fatal(err)
	}

	log, logged := capturedLog()
	cons, err := EnsureConsumer(ctx, js, cfg.TaskStream(), engineConsumer(name, cfg.WorkflowTaskSubject("order"), time.Second), log)
	if err != nil {
		t.Fatal(err)
	}
	if got := cons.CachedInfo().Config.AckWait; got != 9*time.Second {
		t.Errorf("EnsureConsumer reports AckWait %s, want the consumer's 9s", got)
	}
	fresh, err := js.Consumer(ctx, cfg.TaskStream(), name)
	if err != nil {
		t.Fatal(err)
	}
	if got := fresh.CachedInfo().Config.AckWait; got != 9*time.Second {
		t.Errorf("the server says AckWait %s, want 9s unchanged", got)
	}
	lines := logged.lines()
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") || !strings.Contains(lines[0], "setting=ack_wait existing=9s this_node=1s") {
		t.Errorf("want one Info line about ack_wait, logged:\n%s", strings.Join(lines, "\n"))
	}
}

// An existing stream or consumer the engine cannot work with is refused,
// with a message naming it and the setting, and is left as it is.
func TestEnsureRefusesIncompatibleSetups(t *testing.T) {
	cfg := Config{}.Defaults()

	t.Run("history stream with a max age", func(t *testing.T) {
		nc, js := setupJetStream(t)
		ctx := setupContext(t, 10*time.Second)
		operator := cfg.historyStreamConfig(0)
		operator.MaxAge = time.Hour
		if _, err := js.CreateStream(ctx, operator); err != nil {
			t.Fatal(err)
		}
		err := openStore(t, nc, Config{}).EnsureStreams(ctx, nil)
		wantRefusal(t, err, "stream SAGA_HISTORY_0: max_age is 1h0m0s, the engine needs unlimited")
		if got := streamInfo(t, ctx, js, operator.Name).MaxAge; got != time.Hour {
			t.Errorf("the refused stream's max age became %s, want it left at 1h", got)
		}
	})

	t.Run("task stream with limits retention", func(t *testing.T) {
		nc, js := setupJetStream(t)
		ctx := setupContext(t, 10*time.Second)
		operator := cfg.taskStreamConfig()
		operator.Retention = jetstream.LimitsPolicy
		if _, err := js.CreateStream(ctx, operator); err != nil {
			t.Fatal(err)
		}
		err := openStore(t, nc, Config{}).EnsureStreams(ctx, nil)
		wantRefusal(t, err, "stream SAGA_TASKS: retention is limits, the engine needs workqueue")
	})

	consumerCases := []struct {
		name   string
		change func(*jetstream.ConsumerConfig)
		want   string
	}{
		{"bounded max deliver", func(c *jetstream.ConsumerConfig) { c.MaxDeliver = 5 }, "max_deliver is 5, the engine needs unlimited"},
		{"another filter subject", func(c *jetstream.ConsumerConfig) { c.FilterSubject = cfg.WorkflowTaskSubject("other") },
			`filter_subject is ["saga.task.workflow.other"], the engine needs ["saga.task.workflow.order"]`},
		{"a backoff", func(c *jetstream.ConsumerConfig) { c.BackOff = []time.Duration{time.Second, time.Minute} }, "backoff is"},
		{"a push consumer", func(c *jetstream.ConsumerConfig) { c.DeliverSubject = "deliver.here" }, "deliver_subject is set"},
	}
	for _, c := range consumerCases {
		t.Run("consumer with "+c.name, func(t *testing.T) {
			_, js := setupJetStream(t)
			ctx := setupContext(t, 10*time.Second)
			if _, err := EnsureStream(ctx, js, cfg.taskStreamConfig(), nil); err != nil {
				t.Fatal(err)
			}
			name := WorkflowTaskConsumer("order")
			want := engineConsumer(name, cfg.WorkflowTaskSubject("order"), 30*time.Second)
			operator := want
			c.change(&operator)
			var err error
			if operator.DeliverSubject != "" {
				_, err = js.CreatePushConsumer(ctx, cfg.TaskStream(), operator)
			} else {
				_, err = js.CreateConsumer(ctx, cfg.TaskStream(), operator)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = EnsureConsumer(ctx, js, cfg.TaskStream(), want, nil)
			wantRefusal(t, err, "consumer saga-workflows-order on stream SAGA_TASKS: "+c.want)
		})
	}
}

func wantRefusal(t *testing.T, err error, message string) {
	t.Helper()
	if !errors.Is(err, ErrIncompatibleSetup) {
		t.Fatalf("got %v, want ErrIncompatibleSetup", err)
	}
	if !strings.Contains(err.Error(), message) {
		t.Errorf("error %q does not say %q", err, message)
	}
}

// A setting the engine works with although it differs from what it asks
// for is kept and logged, and nothing else is logged: the server's echo
// of a configuration (limits as -1, metadata it adds) is not a difference.
func TestEnsureStreamKeepsAWeakerAcceptableSetting(t *testing.T) {
	_, js := setupJetStream(t)
	ctx := setupContext(t, 10*time.Second)
	want := Config{}.Defaults().historyStreamConfig(0)
	operator := want
	operator.Duplicates = time.Minute
	if _, err := js.CreateStream(ctx, operator); err != nil {
		t.Fatal(err)
	}

	log, logged := capturedLog()
	inForce, err := EnsureStream(ctx, js, want, log)
	if err != nil {
		t.Fatal(err)
	}
	if inForce.Duplicates != time.Minute {
		t.Errorf("duplicate window in force %s, want the stream's 1m", inForce.Duplicates)
	}
	if got := streamInfo(t, ctx, js, want.Name).Duplicates; got != time.Minute {
		t.Errorf("the stream's duplicate window became %s, want it left at 1m", got)
	}
	lines := logged.lines()
	if len(lines) != 1 || !strings.Contains(lines[0], "level=INFO") ||
		!strings.Contains(lines[0], "stream=SAGA_HISTORY_0 setting=duplicate_window existing=1m0s this_node=2m0s") {
		t.Errorf("want one Info line about duplicate_window, logged:\n%s", strings.Join(lines, "\n"))
	}
}

func TestEnsureKeyValue(t *testing.T) {
	_, js := setupJetStream(t)
	ctx := setupContext(t, 10*time.Second)
	want := jetstream.KeyValueConfig{Bucket: "timers", Description: "timers", History: 1, LimitMarkerTTL: time.Hour}

	kv, err := EnsureKeyValue(ctx, js, want, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "t1", []byte("x"), jetstream.KeyTTL(time.Minute)); err != nil {
		t.Fatalf("the bucket takes no TTL keys: %v", err)
	}
	created := streamInfo(t, ctx, js, "KV_timers")
	if created.MaxMsgsPerSubject != 1 || created.SubjectDeleteMarkerTTL != time.Hour {
		t.Fatalf("bucket stream has history %d and marker TTL %s, want 1 and 1h", created.MaxMsgsPerSubject, created.SubjectDeleteMarkerTTL)
	}

	t.Run("as created: nothing differs", func(t *testing.T) {
		log, logged := capturedLog()
		if _, err := EnsureKeyValue(ctx, js, want, log); err != nil {
			t.Fatal(err)
		}
		if lines := logged.lines(); len(lines) != 0 {
			t.Errorf("a bucket as wanted logged:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("another description is kept", func(t *testing.T) {
		other := want
		other.Description = "timer entries"
		log, logged := capturedLog()
		if _, err := EnsureKeyValue(ctx, js, other, log); err != nil {
			t.Fatal(err)
		}
		if got := streamInfo(t, ctx, js, "KV_timers").Description; got != "timers" {
			t.Errorf("description became %q, want it left as %q", got, "timers")
		}
		if lines := logged.lines(); len(lines) != 1 || !strings.Contains(lines[0], "setting=description") {
			t.Errorf("want one line about the description, logged:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("a shorter marker TTL is kept with a warning", func(t *testing.T) {
		longer := want
		longer.LimitMarkerTTL = 2 * time.Hour
		log, logged := capturedLog()
		if _, err := EnsureKeyValue(ctx, js, longer, log); err != nil {
			t.Fatal(err)
		}
		if lines := logged.lines(); len(lines) != 1 || !strings.Contains(lines[0], "level=WARN") ||
			!strings.Contains(lines[0], "setting=subject_delete_marker_ttl existing=1h0m0s this_node=2h0m0s") {
			t.Errorf("want one Warn line about the marker TTL, logged:\n%s", strings.Join(lines, "\n"))
		}
	})

	t.Run("another history is refused", func(t *testing.T) {
		operator := want
		operator.Bucket = "deep"
		operator.History = 5
		if _, err := js.CreateKeyValue(ctx, operator); err != nil {
			t.Fatal(err)
		}
		engine := want
		engine.Bucket = "deep"
		_, err := EnsureKeyValue(ctx, js, engine, nil)
		wantRefusal(t, err, "bucket deep (stream KV_deep): history (max_msgs_per_subject) is 5, the engine needs 1")
	})
}

// Nodes starting together create the same consumer at once: all succeed,
// and all work with the one configuration the server kept.
func TestEnsureConsumerConcurrentCreatesAllSucceed(t *testing.T) {
	_, js := setupJetStream(t)
	ctx := setupContext(t, 20*time.Second)
	cfg := Config{}.Defaults()
	if _, err := EnsureStream(ctx, js, cfg.taskStreamConfig(), nil); err != nil {
		t.Fatal(err)
	}
	for round := range 8 {
		activity := fmt.Sprintf("pay%d", round)
		name := ActivityTaskConsumer(activity)
		// Even rounds race identical creates, odd ones creates that differ.
		ackWaits := []time.Duration{30 * time.Second, 30 * time.Second}
		if round%2 == 1 {
			ackWaits[1] = 10 * time.Second
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		got := make([]time.Duration, len(ackWaits))
		errs := make([]error, len(ackWaits))
		for i, ackWait := range ackWaits {
			wg.Go(func() {
				<-start
				cons, err := EnsureConsumer(ctx, js, cfg.TaskStream(), engineConsumer(name, cfg.ActivityTaskFilter(activity), ackWait), nil)
				if err != nil {
					errs[i] = err
					return
				}
				got[i] = cons.CachedInfo().Config.AckWait
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		fresh, err := js.Consumer(ctx, cfg.TaskStream(), name)
		if err != nil {
			t.Fatal(err)
		}
		server := fresh.CachedInfo().Config.AckWait
		for i, g := range got {
			if g != server {
				t.Errorf("round %d: creator %d works with AckWait %s, the server has %s", round, i, g, server)
			}
		}
	}
}

// Every setting of a stream and of a consumer has a rule: when nats.go
// adds one, this fails until someone decides what a node does with it.
func TestSetupPoliciesCoverEverySetting(t *testing.T) {
	check := func(what string, typ reflect.Type, settings []string) {
		ruled := map[string]bool{}
		for _, s := range settings {
			top, _, _ := strings.Cut(s, ".")
			if ruled[s] {
				t.Errorf("%s: two rules for %s", what, s)
			}
			ruled[s], ruled[top] = true, true
		}
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !ruled[name] {
				t.Errorf("%s: no rule for %s (%s)", what, name, f.Name)
			}
		}
	}
	var streamSettings, consumerSettings []string
	for _, r := range streamPolicy {
		streamSettings = append(streamSettings, r.setting)
	}
	for _, r := range consumerPolicy {
		consumerSettings = append(consumerSettings, r.setting)
	}
	check("stream", reflect.TypeFor[jetstream.StreamConfig](), streamSettings)
	check("consumer", reflect.TypeFor[jetstream.ConsumerConfig](), consumerSettings)
}
