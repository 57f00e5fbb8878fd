package integration

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

type waiterState struct {
	Phase string   `json:"phase"`
	Got   []string `json:"got"`
}

// waiter sleeps, then collects "item" signals until "done" or a timeout,
// answering the query "state" throughout.
var waiterWorkflow = saga.NewWorkflow("waiter", 1, func(ctx saga.Context, timeout time.Duration) (waiterState, error) {
	st := waiterState{Phase: "sleeping"}
	if err := saga.SetQueryHandler(ctx, "state", func(struct{}) (waiterState, error) { return st, nil }); err != nil {
		return st, err
	}
	if err := saga.Sleep(ctx, time.Second); err != nil {
		return st, err
	}
	st.Phase = "collecting"
	items := saga.GetSignalChannel[string](ctx, "item")
	done := saga.GetSignalChannel[struct{}](ctx, "done")
	deadline := saga.NewTimer(ctx, timeout)
	for st.Phase == "collecting" {
		err := saga.Select(ctx,
			items.OnSignal(func(s string, err error) { st.Got = append(st.Got, s) }),
			done.OnSignal(func(struct{}, error) { st.Phase = "done" }),
			saga.OnReady(deadline, func() { st.Phase = "timed out" }),
		)
		if err != nil {
			return st, err
		}
	}
	return st, nil
})

func TestSleepSignalsQueryAndTimeout(t *testing.T) {
	c := newCluster(t)
	node := c.node(worker.Options{}, waiterWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "waiter", time.Minute, saga.StartOptions{ID: "w-1"}); err != nil {
		t.Fatal(err)
	}
	// Signals sent while the saga sleeps wait in its history.
	nc := c.srv.Conn()
	for _, item := range []string{"a", "b"} {
		if err := cl.Signal(ctx, "w-1", "item", item); err != nil {
			t.Fatal(err)
		}
	}
	// A plain publish, in JSON, three times with one message id: recorded once.
	for range 3 {
		m := &nats.Msg{Subject: "saga.signal.w-1.item", Data: []byte(`"c"`), Header: nats.Header{"Content-Type": {"application/json"}, "Nats-Msg-Id": {"c-1"}}}
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	_, out, err := node.Query(ctx, "w-1", "state", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st waiterState
	if err := stream.Unmarshal(out, &st); err != nil || (st.Phase != "sleeping" && st.Phase != "collecting") {
		t.Fatalf("query: %+v %v", st, err)
	}
	before, _ := cl.History(ctx, "w-1")
	if err := cl.Signal(ctx, "w-1", "done", struct{}{}); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Wait(ctx, "w-1")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga: %v %+v", err, d)
	}
	var got waiterState
	if err := stream.Unmarshal(d.Output, &got); err != nil || got.Phase != "done" || !slices.Equal(got.Got, []string{"a", "b", "c"}) {
		t.Fatalf("output %+v %v", got, err)
	}
	events, _ := cl.History(ctx, "w-1")
	types := eventTypes(events)
	if !slices.Contains(types, stream.TimerFired) || len(findSignals(events)) != 4 {
		t.Fatalf("history: %v", types)
	}
	for _, e := range before {
		if e.Type == stream.MarkerRecorded {
			t.Fatal("the query recorded something")
		}
	}

	// No signal: the timeout decides.
	if _, err := cl.Start(ctx, "waiter", 2*time.Second, saga.StartOptions{ID: "w-2"}); err != nil {
		t.Fatal(err)
	}
	d, err = cl.Wait(ctx, "w-2")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga: %v %+v", err, d)
	}
	if err := stream.Unmarshal(d.Output, &got); err != nil || got.Phase != "timed out" {
		t.Fatalf("output %+v %v", got, err)
	}
	// Early firing never happens: every TimerFired comes at or after its due time.
	events, _ = cl.History(ctx, "w-2")
	created := map[uint64]stream.Event{}
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.TimerCreatedAttrs:
			created[e.ID] = e
		case *stream.TimerFiredAttrs:
			c := created[a.StartedEventID]
			if due := c.Attrs.(*stream.TimerCreatedAttrs).FireAt(c.Time); e.Time.Before(due) {
				t.Fatalf("timer at event %d fired %s early", c.ID, due.Sub(e.Time))
			}
		}
	}
}

func findSignals(events []stream.Event) []*stream.SignalReceivedAttrs {
	var out []*stream.SignalReceivedAttrs
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.SignalReceivedAttrs); ok {
			out = append(out, a)
		}
	}
	return out
}

// A node killed after it recorded the signal that ended its saga, before
// it acked the signal: the redelivered signal is found in the history and
// acked, not set aside as a signal to an ended saga.
func TestSignalRedeliveredAfterItEndedTheSagaIsNotDeadLettered(t *testing.T) {
	c := newCluster(t)
	oneSignal := saga.NewWorkflow("one-signal", 1, func(ctx saga.Context, _ int) (string, error) {
		return saga.GetSignalChannel[string](ctx, "go").Receive(ctx)
	})
	recorded := make(chan struct{})
	var once sync.Once
	doomed := c.node(worker.Options{NodeName: "doomed", Hooks: &worker.Hooks{
		AfterAppend: func(ctx context.Context, _ string, commit *stream.Commit) {
			if len(findSignals(commit.Events)) > 0 {
				once.Do(func() { close(recorded) })
				<-ctx.Done() // frozen until killed: the signal is never acked
			}
		},
	}}, oneSignal)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "one-signal", 0, saga.StartOptions{ID: "sig-crash"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Signal(ctx, "sig-crash", "go", "now"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-recorded:
	case <-ctx.Done():
		t.Fatal("the signal was never recorded")
	}
	doomed.kill(t)
	c.node(worker.Options{NodeName: "survivor"}, oneSignal)
	if d, err := cl.Wait(ctx, "sig-crash"); err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga %v %+v", err, d)
	}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the inbox to be empty", func() bool {
		s, err := js.Stream(ctx, stream.Config{}.Defaults().InboxStream())
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	dead, err := c.store().DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 0 {
		t.Fatalf("dead letters: %+v", dead)
	}
}

// A signal whose headers fill what the server takes is still set aside
// (without all of them), and the signals behind it move on: one message
// cannot hold every signal of the fleet.
func TestSignalWithHugeHeadersDoesNotStallSignals(t *testing.T) {
	c := newCluster(t)
	oneSignal := saga.NewWorkflow("one-signal", 1, func(ctx saga.Context, _ int) (string, error) {
		return saga.GetSignalChannel[string](ctx, "go").Receive(ctx)
	})
	c.node(worker.Options{}, oneSignal)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "one-signal", 0, saga.StartOptions{ID: "after-huge"}); err != nil {
		t.Fatal(err)
	}
	nc := c.srv.Conn()
	huge := &nats.Msg{Subject: "saga.signal.nobody.go", Data: []byte(`"x"`), Header: nats.Header{
		"Content-Type": {"application/json"}, "X-Padding": {strings.Repeat("p", 60<<10)}}}
	if err := nc.PublishMsg(huge); err != nil {
		t.Fatal(err)
	}
	if err := cl.Signal(ctx, "after-huge", "go", "now"); err != nil {
		t.Fatal(err)
	}
	if d, err := cl.Wait(ctx, "after-huge"); err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("the signal behind the huge one: %v %+v", err, d)
	}
	var dead []stream.DeadLetter
	natstest.WaitFor(t, 20*time.Second, "the huge signal set aside", func() bool {
		var err error
		dead, err = c.store().DeadLetters(ctx, 0)
		return err == nil && len(dead) == 1
	})
	if !strings.Contains(dead[0].Reason, "does not exist") || dead[0].Headers.Get("Content-Type") != "application/json" {
		t.Fatalf("dead letter %+v", dead[0])
	}
}

// Signals rely on one in flight, fleet-wide: a node refuses a signals
// consumer that an operator set to allow more.
func TestNodeRefusesASignalsConsumerAllowingMore(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}) // creates the streams and consumers
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 30*time.Second)
	inbox := stream.Config{}.Defaults().InboxStream()
	cons, err := js.Consumer(ctx, inbox, stream.InboxSignalConsumer)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cons.CachedInfo().Config
	cfg.MaxAckPending = 100
	if _, err := js.UpdateConsumer(ctx, inbox, cfg); err != nil {
		t.Fatal(err)
	}
	reg := saga.NewRegistry()
	n, err := worker.New(c.srv.Conn(), reg, worker.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	err = n.Start(ctx)
	if err == nil {
		_ = n.Stop(ctx)
	}
	if !errors.Is(err, stream.ErrIncompatibleSetup) || !strings.Contains(err.Error(), "MaxAckPending is 100") {
		t.Fatalf("start: %v", err)
	}
}

// An inbox deleted and created again numbers its messages from 1 anew: a
// signal from it is recorded, not taken for one moved already.
func TestSignalsOfARecreatedInboxAreRecorded(t *testing.T) {
	c := newCluster(t)
	twoSignals := saga.NewWorkflow("two-signals", 1, func(ctx saga.Context, _ int) ([]string, error) {
		ch := saga.GetSignalChannel[string](ctx, "go")
		var got []string
		for range 2 {
			s, err := ch.Receive(ctx)
			if err != nil {
				return got, err
			}
			got = append(got, s)
		}
		return got, nil
	})
	first := c.node(worker.Options{NodeName: "first"}, twoSignals)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := cl.Start(ctx, "two-signals", 0, saga.StartOptions{ID: "epochs"}); err != nil {
		t.Fatal(err)
	}
	if err := cl.Signal(ctx, "epochs", "go", "before"); err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 20*time.Second, "the first signal recorded", func() bool {
		events, err := cl.History(ctx, "epochs")
		return err == nil && len(findSignals(events)) == 1
	})
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, stream.Config{}.Defaults().InboxStream()); err != nil {
		t.Fatal(err)
	}
	c.node(worker.Options{NodeName: "second"}, twoSignals) // creates the inbox again
	if err := cl.Signal(ctx, "epochs", "go", "after"); err != nil {
		t.Fatal(err)
	}
	d, err := cl.Wait(ctx, "epochs")
	if err != nil || d.Status != saga.StatusCompleted {
		t.Fatalf("saga %v %+v", err, d)
	}
	events, _ := cl.History(ctx, "epochs")
	signals := findSignals(events)
	if len(signals) != 2 || signals[0].InboxSeq != signals[1].InboxSeq || signals[0].InboxEpoch == signals[1].InboxEpoch {
		t.Fatalf("signals %+v", signals)
	}
}
