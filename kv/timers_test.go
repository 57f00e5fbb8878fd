package kv_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/jetsaga/saga/internal/clock"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/kv"
	"github.com/jetsaga/saga/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var timersFlag = flag.Int("timers", 40, "TestTimerLateness: schedule this many timers due in 1-5 s and report their lateness")

// env is one embedded server with a timers bucket.
type env struct {
	t      *testing.T
	ctx    context.Context
	js     jetstream.JetStream
	cfg    kv.TimersConfig
	bucket jetstream.KeyValue
	timers *kv.Timers
}

func newEnv(t *testing.T, cfg kv.TimersConfig, clk clock.Clock) *env {
	t.Helper()
	srv := natstest.Start(t)
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	bucket, err := js.CreateKeyValue(ctx, cfg.KeyValueConfig())
	if err != nil {
		t.Fatalf("create timers bucket: %v", err)
	}
	return &env{t: t, ctx: ctx, js: js, cfg: cfg, bucket: bucket, timers: kv.NewTimers(js, cfg, clk)}
}

func (e *env) schedule(timers ...kv.Timer) {
	e.t.Helper()
	for _, tm := range timers {
		if err := e.timers.Schedule(e.ctx, tm); err != nil {
			e.t.Fatalf("schedule %s: %v", tm.Key(), err)
		}
	}
}

// lastMsg is the last message stored on the timer's key, nil if none.
func (e *env) lastMsg(tm kv.Timer) *jetstream.RawStreamMsg {
	e.t.Helper()
	s, err := e.js.Stream(e.ctx, e.cfg.StreamName())
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(e.ctx, "$KV."+e.cfg.Bucket+"."+tm.Key())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// seen is one message the timers consumer read.
type seen struct {
	subject  string
	reason   string // Nats-Marker-Reason
	op       string // KV-Operation
	fired    bool
	timer    kv.Timer
	received time.Time
	stored   time.Time
}

// collector is a durable consumer of fired timers, as the engine runs it:
// it reads every message of the bucket's stream and acks it.
type collector struct {
	cons jetstream.Consumer
	mu   sync.Mutex
	msgs []seen
}

func (e *env) collect() *collector {
	e.t.Helper()
	cons, err := e.js.CreateOrUpdateConsumer(e.ctx, e.cfg.StreamName(), jetstream.ConsumerConfig{
		Durable:       "timers",
		FilterSubject: e.cfg.FilterSubject(),
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
	})
	if err != nil {
		e.t.Fatalf("create timers consumer: %v", err)
	}
	c := &collector{cons: cons}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		s := seen{subject: m.Subject(), received: time.Now(), reason: m.Headers().Get("Nats-Marker-Reason"), op: m.Headers().Get("KV-Operation")}
		if meta, err := m.Metadata(); err == nil {
			s.stored = meta.Timestamp
		}
		s.timer, s.fired = kv.Fired(m, e.cfg)
		c.mu.Lock()
		c.msgs = append(c.msgs, s)
		c.mu.Unlock()
		_ = m.Ack()
	})
	if err != nil {
		e.t.Fatalf("consume timers: %v", err)
	}
	e.t.Cleanup(func() {
		cc.Stop()
		<-cc.Closed()
	})
	return c
}

// firings are the fired timers seen, by key.
func (c *collector) firings() map[string][]seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]seen{}
	for _, s := range c.msgs {
		if s.fired {
			out[s.timer.Key()] = append(out[s.timer.Key()], s)
		}
	}
	return out
}

func (c *collector) seenOn(subject string) []seen {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []seen
	for _, s := range c.msgs {
		if s.subject == subject {
			out = append(out, s)
		}
	}
	return out
}

func (c *collector) waitFired(t *testing.T, d time.Duration, timers ...kv.Timer) {
	t.Helper()
	natstest.WaitFor(t, d, fmt.Sprintf("%d timers to fire", len(timers)), func() bool {
		f := c.firings()
		for _, tm := range timers {
			if len(f[tm.Key()]) == 0 {
				return false
			}
		}
		return true
	})
}

// checkOnceNotEarly fails the test unless each timer fired exactly once,
// and neither seen nor stored before its Due.
func checkOnceNotEarly(t *testing.T, f map[string][]seen, timers ...kv.Timer) {
	t.Helper()
	for _, tm := range timers {
		got := f[tm.Key()]
		if len(got) != 1 {
			t.Errorf("timer %s fired %d times, want once", tm.Key(), len(got))
			continue
		}
		if got[0].received.Before(tm.Due) || got[0].stored.Before(tm.Due) {
			t.Errorf("timer %s fired early: due %s, marker stored %s, received %s", tm.Key(), tm.Due.Format(time.StampMilli), got[0].stored.Format(time.StampMilli), got[0].received.Format(time.StampMilli))
		}
		if !got[0].timer.Due.Equal(tm.Due) {
			t.Errorf("fired %+v, scheduled %+v", got[0].timer, tm)
		}
	}
}

// timer is a test timer due d from now, kept to the millisecond as its key
// keeps it.
func timer(saga string, event uint64, d time.Duration) kv.Timer {
	return kv.Timer{Kind: "retry", SagaID: saga, EventID: event, Attempt: 1, Due: time.Now().Add(d).Truncate(time.Millisecond)}
}

func testConfig(bucket string) kv.TimersConfig { return kv.TimersConfig{Bucket: bucket} }

func TestTimerKeyRoundTrip(t *testing.T) {
	due := time.UnixMilli(1_700_000_000_123).UTC()
	tm := kv.Timer{Kind: "retry", SagaID: "order-1", EventID: 7, Attempt: 2, Due: due.Add(456 * time.Microsecond)}
	if got, want := tm.Key(), "retry.order-1.7.2.1700000000123"; got != want {
		t.Fatalf("Key() = %q, want %q", got, want)
	}
	for _, tm := range []kv.Timer{
		tm,
		{Kind: "schedule_to_start", SagaID: strings.Repeat("s", 128), EventID: 1<<64 - 1, Attempt: 0, Due: time.UnixMilli(0)},
		{Kind: "K-9", SagaID: "A_b-C", EventID: 0, Attempt: 1 << 40, Due: time.Now()},
	} {
		got, err := kv.ParseKey(tm.Key())
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", tm.Key(), err)
		}
		want := tm
		want.Due = tm.Due.Truncate(time.Millisecond)
		if got.Kind != want.Kind || got.SagaID != want.SagaID || got.EventID != want.EventID || got.Attempt != want.Attempt || !got.Due.Equal(want.Due) {
			t.Errorf("ParseKey(Key(%+v)) = %+v", want, got)
		}
		if got.Key() != tm.Key() {
			t.Errorf("key %q came back as %q", tm.Key(), got.Key())
		}
	}
	for _, key := range []string{
		"", "retry", "retry.order-1.7.2", "retry.order-1.7.2.1700000000123.x",
		".order-1.7.2.1700000000123", "retry..7.2.1700000000123", "re*try.order-1.7.2.1700000000123",
		"retry.order-1.x.2.1700000000123", "retry.order-1.7.-1.1700000000123", "retry.order-1.7.2.-5",
		"retry.order-1.07.2.1700000000123", "retry.order-1.7.+2.1700000000123",
	} {
		if _, err := kv.ParseKey(key); !errors.Is(err, kv.ErrNotTimer) {
			t.Errorf("ParseKey(%q) = %v, want ErrNotTimer", key, err)
		}
	}
}

func TestScheduleRefusesBadTimers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig("BAD"), clock.Real)
	due := time.Now().Add(time.Hour)
	for _, c := range []struct {
		timer kv.Timer
		says  string
	}{
		{kv.Timer{Kind: "retry", SagaID: "order.1", Due: due}, `saga id "order.1" has '.'`},
		{kv.Timer{Kind: "", SagaID: "order-1", Due: due}, "timer kind is empty"},
		{kv.Timer{Kind: "retry", SagaID: "order 1", Due: due}, `saga id "order 1" has ' '`},
		{kv.Timer{Kind: "retry", SagaID: "order-1", Attempt: -1, Due: due}, "attempt -1 is negative"},
		{kv.Timer{Kind: "retry", SagaID: "order-1"}, "due time"},
	} {
		err := e.timers.Schedule(e.ctx, c.timer)
		if !errors.Is(err, stream.ErrInvalidID) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Schedule(%+v) = %v, want ErrInvalidID saying %q", c.timer, err, c.says)
		}
		if err := e.timers.Cancel(e.ctx, c.timer); !errors.Is(err, stream.ErrInvalidID) {
			t.Errorf("Cancel(%+v) = %v, want ErrInvalidID", c.timer, err)
		}
	}
	s, err := e.js.Stream(e.ctx, e.cfg.StreamName())
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 0 {
		t.Errorf("refused timers left %d messages in the bucket", n)
	}
}

func TestBucketUnfitForTimers(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tm := timer("order-1", 1, time.Hour)

	err = kv.NewTimers(js, testConfig("MISSING"), clock.Real).Schedule(ctx, tm)
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("Schedule in a missing bucket = %v, want ErrStreamNotFound", err)
	}
	if err := kv.NewTimers(js, kv.TimersConfig{}, clock.Real).Schedule(ctx, tm); !errors.Is(err, stream.ErrInvalidID) {
		t.Errorf("Schedule with no bucket name = %v, want ErrInvalidID", err)
	}
	for name, adjust := range map[string]func(*jetstream.KeyValueConfig){
		"HISTORY":   func(c *jetstream.KeyValueConfig) { c.History = 2 },
		"NOMARKERS": func(c *jetstream.KeyValueConfig) { c.LimitMarkerTTL = 0 },
		"SHORT":     func(c *jetstream.KeyValueConfig) { c.LimitMarkerTTL = time.Hour },
		"MAXAGE":    func(c *jetstream.KeyValueConfig) { c.TTL = time.Hour },
	} {
		cfg := testConfig(name)
		kvc := cfg.KeyValueConfig()
		adjust(&kvc)
		if _, err := js.CreateKeyValue(ctx, kvc); err != nil {
			t.Fatalf("create bucket %s: %v", name, err)
		}
		if err := kv.NewTimers(js, cfg, clock.Real).Schedule(ctx, tm); !errors.Is(err, kv.ErrBucketUnfit) {
			t.Errorf("Schedule in bucket %s = %v, want ErrBucketUnfit", name, err)
		}
	}
}

// The TTL must never end before Due: the server drops fractions of a
// second from it.
func TestScheduleRoundsTTLUp(t *testing.T) {
	t.Parallel()
	clk := clock.NewFake(time.Now())
	e := newEnv(t, testConfig("ROUND"), clk)
	now := clk.Now()
	for i, c := range []struct {
		due time.Time
		ttl string
	}{
		{now.Add(1200 * time.Millisecond), "2s"},
		{now.Add(3 * time.Second), "3s"},
		{now.Add(2*time.Second + time.Millisecond), "3s"},
		{now.Add(time.Millisecond), "1s"},
		{now, "1s"},
		{now.Add(-5 * time.Second), "1s"},
		{now.Add(36*time.Hour + 1), "36h0m1s"},
	} {
		tm := kv.Timer{Kind: "round", SagaID: "s", EventID: uint64(i), Due: c.due}
		e.schedule(tm)
		m := e.lastMsg(tm)
		if m == nil {
			t.Fatalf("timer %s: no entry", tm.Key())
		}
		if got := m.Header.Get("Nats-TTL"); got != c.ttl {
			t.Errorf("due in %s: TTL %q, want %q", c.due.Sub(now), got, c.ttl)
		}
	}
}

// fireAndMeasure schedules n timers due from lo to hi from now, waits for
// them and one more due a second after the last, the proof that the others
// had time to fire twice, and checks that each fired once, never early. It
// logs their lateness. The dues are spread to the millisecond, or, with
// whole, a whole number of seconds after the moment each is scheduled: the
// TTL then needs no rounding up, and lateness is the server's and the
// consumer's alone.
func fireAndMeasure(t *testing.T, n int, lo, hi time.Duration, whole bool) {
	e := newEnv(t, testConfig("LATENESS"), clock.Real)
	c := e.collect()
	timers := make([]kv.Timer, n)
	for i := range timers {
		d := lo + time.Duration(i)*(hi-lo)/time.Duration(n)
		if whole {
			d = d.Truncate(time.Second)
		}
		timers[i] = timer(fmt.Sprintf("saga-%d", i), uint64(i), d)
		e.schedule(timers[i])
	}
	last := timer("sentinel", 0, hi+time.Second)
	e.schedule(last)
	c.waitFired(t, hi+10*time.Second, last)
	f := c.firings()
	checkOnceNotEarly(t, f, timers...)
	if len(f) != n+1 {
		t.Errorf("%d timers fired, %d were scheduled", len(f), n+1)
	}
	var received, stored []time.Duration
	for _, tm := range timers {
		if got := f[tm.Key()]; len(got) > 0 {
			received = append(received, got[0].received.Sub(tm.Due))
			stored = append(stored, got[0].stored.Sub(tm.Due))
		}
	}
	spread := "spread to the millisecond"
	if whole {
		spread = "in whole seconds"
	}
	t.Logf("%d timers due in %s-%s, %s: lateness of the marker's receipt %s; of its stored time %s", n, lo, hi, spread, percentiles(received), percentiles(stored))
}

func percentiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	slices.Sort(ds)
	at := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return fmt.Sprintf("p50 %s p99 %s max %s", at(0.5).Round(time.Millisecond), at(0.99).Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
}

func TestTimersFireOnceNeverEarly(t *testing.T) {
	t.Parallel()
	fireAndMeasure(t, 200, time.Second, 3*time.Second, false)
}

// TestTimerLateness reports the lateness of timers due in 1-5 s (40 by
// default, so that every run checks the path; measure with
// go test ./kv -run TestTimerLateness -timers=1000 -v).
func TestTimerLateness(t *testing.T) {
	t.Parallel()
	for _, whole := range []bool{false, true} {
		name := "spread"
		if whole {
			name = "whole-seconds"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fireAndMeasure(t, *timersFlag, time.Second, 5*time.Second, whole)
		})
	}
}

func TestCanceledTimerNeverFires(t *testing.T) {
	t.Parallel()
	// Markers and cancellation tombstones kept 1 s, so that the test sees a
	// tombstone expire: that must not fire the timer either.
	cfg := testConfig("CANCEL")
	cfg.MarkerTTL = time.Second
	e := newEnv(t, cfg, clock.Real)
	c := e.collect()
	canceled := timer("order-1", 1, time.Second)
	e.schedule(canceled)
	if err := e.timers.Cancel(e.ctx, canceled); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if err := e.timers.Cancel(e.ctx, timer("order-2", 1, time.Second)); err != nil {
		t.Errorf("cancel a timer never scheduled: %v", err)
	}
	natstest.WaitFor(t, 10*time.Second, "the cancellation's tombstone to expire", func() bool { return e.lastMsg(canceled) == nil })
	// The consumer reads in stream order: once a timer scheduled now fired,
	// any marker of the canceled timer's would have been read.
	later := timer("order-3", 1, time.Second)
	e.schedule(later)
	c.waitFired(t, 10*time.Second, later)
	if got := c.firings()[canceled.Key()]; len(got) != 0 {
		t.Errorf("canceled timer fired %d times", len(got))
	}
	// The purge may roll the creation up before the consumer reads it.
	var ops []string
	for _, s := range c.seenOn("$KV." + cfg.Bucket + "." + canceled.Key()) {
		ops = append(ops, s.op+s.reason)
	}
	if len(ops) == 0 || ops[len(ops)-1] != "PURGE" || slices.Contains(ops, "MaxAge") {
		t.Errorf("the canceled timer's key saw %q, want its purge last and no expiry", ops)
	}
	if err := e.timers.Cancel(e.ctx, later); err != nil {
		t.Errorf("cancel a fired timer: %v", err)
	}
}

func TestTimersFireAfterOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig("OUTAGE"), clock.Real)
	timers := make([]kv.Timer, 20)
	for i := range timers {
		timers[i] = timer(fmt.Sprintf("order-%d", i), 3, time.Second+time.Duration(i)*50*time.Millisecond)
	}
	e.schedule(timers...)
	natstest.WaitFor(t, 15*time.Second, "every timer's entry to expire", func() bool {
		for _, tm := range timers {
			if _, err := e.bucket.Get(e.ctx, tm.Key()); !errors.Is(err, jetstream.ErrKeyNotFound) {
				return false
			}
		}
		return true
	})
	c := e.collect()
	// Everything the consumer will ever get is in the stream already.
	natstest.WaitFor(t, 10*time.Second, "the consumer to read the whole bucket", func() bool {
		info, err := c.cons.Info(e.ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	f := c.firings()
	checkOnceNotEarly(t, f, timers...)
	if len(f) != len(timers) {
		t.Errorf("%d timers fired, %d were scheduled", len(f), len(timers))
	}
}

func TestScheduleIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig("ONCE"), clock.Real)
	c := e.collect()
	twice := timer("order-1", 1, time.Second)
	e.schedule(twice, twice)

	// Many schedulers at once: one entry.
	raced := timer("order-2", 1, time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- e.timers.Schedule(e.ctx, raced) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent schedule: %v", err)
		}
	}

	// Cancel, then schedule again: armed again, fires once.
	rearmed := timer("order-3", 1, time.Second)
	e.schedule(rearmed)
	if err := e.timers.Cancel(e.ctx, rearmed); err != nil {
		t.Fatal(err)
	}
	e.schedule(rearmed)

	c.waitFired(t, 10*time.Second, twice, raced, rearmed)
	// A retry after the timer fired (a lost reply, a redelivered command)
	// finds its marker and does not arm it again.
	e.schedule(twice)
	if m := e.lastMsg(twice); m == nil || m.Header.Get("Nats-Marker-Reason") != "MaxAge" {
		t.Errorf("scheduling a fired timer replaced its marker with %+v", m)
	}
	// Re-armed, it would fire about a second from now.
	last := timer("sentinel", 0, 2*time.Second)
	e.schedule(last)
	c.waitFired(t, 10*time.Second, last)
	checkOnceNotEarly(t, c.firings(), twice, raced, rearmed, last)
}

func TestFiredIgnoresOtherMessages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testConfig("OTHER"), clock.Real)
	c := e.collect()
	if _, err := e.bucket.Create(e.ctx, "foreign", []byte("x"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.bucket.Create(e.ctx, "retry.s.1.01.1700000000000", []byte("x"), jetstream.KeyTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	deleted := timer("order-1", 1, time.Hour)
	e.schedule(deleted)
	if err := e.bucket.Delete(e.ctx, deleted.Key()); err != nil {
		t.Fatal(err)
	}
	tm := timer("order-2", 1, time.Second)
	e.schedule(tm)
	natstest.WaitFor(t, 10*time.Second, "both foreign keys' markers", func() bool {
		n := 0
		for _, s := range append(c.seenOn("$KV.OTHER.foreign"), c.seenOn("$KV.OTHER.retry.s.1.01.1700000000000")...) {
			if s.reason == "MaxAge" {
				n++
			}
		}
		return n == 2
	})
	c.waitFired(t, 10*time.Second, tm)
	f := c.firings()
	checkOnceNotEarly(t, f, tm)
	if len(f) != 1 {
		t.Errorf("fired: %v, want only %s", f, tm.Key())
	}
}
