package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// collectorWorkflow receives as many "item" signals as its input says and
// returns their values in the order it received them. The query "got"
// answers what it has so far.
var collectorWorkflow = saga.NewWorkflow("collector", 1, func(ctx saga.Context, n int) ([]int, error) {
	got := []int{}
	if err := saga.SetQueryHandler(ctx, "got", func(struct{}) ([]int, error) { return got, nil }); err != nil {
		return nil, err
	}
	items := saga.GetSignalChannel[int](ctx, "item")
	for len(got) < n {
		v, err := items.Receive(ctx)
		if err != nil {
			return got, err
		}
		got = append(got, v)
	}
	return got, nil
})

type greeting struct {
	Name string `json:"name"`
}

// greeterWorkflow greets its input's name: a start published as JSON has
// to fit this type.
var greeterWorkflow = saga.NewWorkflow("greeter", 1, func(ctx saga.Context, in greeting) (string, error) {
	return "hello " + in.Name, nil
})

var inboxCfg = stream.Config{}.Defaults()

// signalMsg is a signal as any NATS client would publish it: a JSON value
// with its content type, and a message id when msgID is not empty.
func signalMsg(sagaID, name string, value any, msgID string) *nats.Msg {
	body, err := json.Marshal(value)
	if err != nil {
		panic(err)
	}
	m := &nats.Msg{Subject: inboxCfg.InboxSignalSubject(sagaID, name), Data: body,
		Header: nats.Header{worker.HeaderContentType: {worker.ContentTypeJSON}}}
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	return m
}

// publishStored publishes m with a JetStream publish, so that the test
// knows the inbox stored it (or dropped it as a duplicate).
func publishStored(t *testing.T, ctx context.Context, js jetstream.JetStream, m *nats.Msg) *jetstream.PubAck {
	t.Helper()
	ack, err := js.PublishMsg(ctx, m)
	if err != nil {
		t.Fatalf("publish to %s: %v", m.Subject, err)
	}
	if ack.Stream != inboxCfg.InboxStream() {
		t.Fatalf("publish to %s: stored by %s, not the inbox", m.Subject, ack.Stream)
	}
	return ack
}

// waitInboxConsumed waits until the inbox consumer has nothing left to
// deliver and nothing delivered unacknowledged: every message it was given
// was recorded or set aside.
func waitInboxConsumed(t *testing.T, srv *natstest.Server, consumer string) {
	t.Helper()
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	natstest.WaitFor(t, 60*time.Second, "consumer "+consumer+" to take everything", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, inboxCfg.InboxStream(), consumer)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

// inboxState is the inbox stream's state: what it holds, and the sequence
// of the last message it stored.
func inboxState(t *testing.T, srv *natstest.Server) jetstream.StreamState {
	t.Helper()
	js, err := jetstream.New(srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, inboxCfg.InboxStream())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

// deadLettersOf returns the dead letters one consumer set aside.
func deadLettersOf(t *testing.T, ctx context.Context, st *stream.Store, consumer string) []stream.DeadLetter {
	t.Helper()
	all, err := st.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []stream.DeadLetter
	for _, d := range all {
		if d.Consumer == consumer {
			out = append(out, d)
		}
	}
	return out
}

// signalValues decodes the int values of a history's SignalReceived events.
func signalValues(events []stream.Event) ([]int, []*stream.SignalReceivedAttrs, error) {
	signals := findSignals(events)
	values := make([]int, len(signals))
	for i, s := range signals {
		if err := stream.Unmarshal(s.Input, &values[i]); err != nil {
			return nil, nil, fmt.Errorf("signal %d: %w", i, err)
		}
	}
	return values, signals, nil
}

// The same signal published three times with one Nats-Msg-Id (plain core
// publishes, as a sender retrying would) is recorded once.
func TestSignalPublishedThriceWithOneMsgIDIsRecordedOnce(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, collectorWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	run, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, 2, saga.StartOptions{ID: "dedupe"})
	if err != nil {
		t.Fatal(err)
	}
	nc := c.srv.Conn()
	for range 3 {
		if err := nc.PublishMsg(signalMsg("dedupe", "item", 7, "dedupe-7")); err != nil {
			t.Fatal(err)
		}
	}
	// Published after the three on the same connection, so stored after
	// them: had a repeat been stored, it would be the second value.
	if err := nc.PublishMsg(signalMsg("dedupe", "item", 8, "dedupe-8")); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := run.Get(ctx)
	if err != nil || !slices.Equal(got, []int{7, 8}) {
		t.Fatalf("collected %v, %v; want [7 8]", got, err)
	}
	events, err := cl.History(ctx, "dedupe")
	if err != nil {
		t.Fatal(err)
	}
	values, signals, err := signalValues(events)
	if err != nil || !slices.Equal(values, []int{7, 8}) || signals[0].MsgID != "dedupe-7" || signals[1].MsgID != "dedupe-8" {
		t.Fatalf("recorded %v (%v): %+v", values, err, signals)
	}
	waitInboxConsumed(t, c.srv, stream.InboxSignalConsumer)
	if st := inboxState(t, c.srv); st.LastSeq != 2 || st.Msgs != 0 {
		t.Fatalf("the inbox stored %d messages and holds %d; want 2 stored, none held", st.LastSeq, st.Msgs)
	}
	if dl := deadLettersOf(t, ctx, c.store(), stream.InboxSignalConsumer); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// A thousand signals to a hundred sagas, ten each, published in turn from
// one connection, each carrying its index: every one is recorded exactly
// once, and each saga records (and receives) its ten in the order sent.
func TestThousandSignalsRecordedOnceInOrder(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, collectorWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 3*time.Minute)
	const sagas, each = 100, 10
	id := func(k int) string { return fmt.Sprintf("collect-%d", k) }
	inParallel(sagas, startParallelism, func(k int) {
		if _, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, each, saga.StartOptions{ID: id(k)}); err != nil {
			t.Errorf("start %s: %v", id(k), err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	acks := make([]jetstream.PubAckFuture, sagas*each)
	for i := range acks {
		// Signal i goes to saga i mod 100: each saga's signals are
		// interleaved with every other saga's.
		if acks[i], err = js.PublishMsgAsync(signalMsg(id(i%sagas), "item", i, "sig-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("the inbox did not acknowledge every signal")
	}
	var lastSeq uint64
	for i, f := range acks {
		select {
		case ack := <-f.Ok():
			// One connection: the inbox stores them in the order sent.
			if ack.Duplicate || ack.Sequence <= lastSeq {
				t.Fatalf("signal %d: %+v after sequence %d", i, ack, lastSeq)
			}
			lastSeq = ack.Sequence
		case err := <-f.Err():
			t.Fatalf("signal %d: %v", i, err)
		}
	}

	inParallel(sagas, sagas, func(k int) {
		d, err := cl.Wait(ctx, id(k))
		if err != nil || d.Status != saga.StatusCompleted {
			t.Errorf("saga %s: %v %+v", id(k), err, d)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d signals published and moved into %d histories in %s", sagas*each, sagas, time.Since(began).Round(time.Millisecond))

	inParallel(sagas, 16, func(k int) {
		want := make([]int, each)
		for j := range want {
			want[j] = k + j*sagas
		}
		events, err := cl.History(ctx, id(k))
		if err != nil {
			t.Errorf("saga %s: %v", id(k), err)
			return
		}
		values, signals, err := signalValues(events)
		if err != nil || !slices.Equal(values, want) {
			t.Errorf("saga %s recorded %v (%v), sent %v", id(k), values, err, want)
			return
		}
		for j, s := range signals {
			if s.MsgID != "sig-"+strconv.Itoa(want[j]) || j > 0 && s.InboxSeq <= signals[j-1].InboxSeq {
				t.Errorf("saga %s signal %d: %+v", id(k), j, s)
			}
		}
		var out []int
		if err := stream.Unmarshal(lastPayload(events), &out); err != nil || !slices.Equal(out, want) {
			t.Errorf("saga %s received %v (%v), sent %v", id(k), out, err, want)
		}
	})
	if n := inboxState(t, c.srv).Msgs; n != 0 {
		t.Fatalf("the inbox still holds %d messages", n)
	}
	if dl := deadLettersOf(t, ctx, c.store(), stream.InboxSignalConsumer); len(dl) != 0 {
		t.Fatalf("dead letters: %+v", dl)
	}
}

// lastPayload is the output of a history that completed.
func lastPayload(events []stream.Event) stream.Payload {
	if a, ok := events[len(events)-1].Attrs.(*stream.WorkflowExecutionCompletedAttrs); ok {
		return a.Output
	}
	return nil
}

// A signal to a saga that does not exist and one to a saga that has ended
// are set aside in the dead-letter stream, with the reason, subject and
// body; the signals around them are recorded: every published signal is
// accounted for.
func TestSignalsToMissingOrEndedSagasAreDeadLettered(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, collectorWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	ended, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, 0, saga.StartOptions{ID: "ended"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ended.Get(ctx); err != nil {
		t.Fatal(err)
	}
	live, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, 2, saga.StartOptions{ID: "live"})
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	toMissing := publishStored(t, ctx, js, signalMsg("nobody", "item", 1, ""))
	publishStored(t, ctx, js, signalMsg("live", "item", 2, ""))
	toEnded := publishStored(t, ctx, js, signalMsg("ended", "item", 3, ""))
	publishStored(t, ctx, js, signalMsg("live", "item", 4, ""))
	got, err := live.Get(ctx)
	if err != nil || !slices.Equal(got, []int{2, 4}) {
		t.Fatalf("live saga collected %v, %v; want [2 4]", got, err)
	}
	waitInboxConsumed(t, c.srv, stream.InboxSignalConsumer)
	if n := inboxState(t, c.srv).Msgs; n != 0 {
		t.Fatalf("the inbox still holds %d messages", n)
	}

	dl := deadLettersOf(t, ctx, c.store(), stream.InboxSignalConsumer)
	want := []struct {
		seq     uint64
		subject string
		body    string
		reason  string
	}{
		{toMissing.Sequence, inboxCfg.InboxSignalSubject("nobody", "item"), "1", "signal to a saga that does not exist"},
		{toEnded.Sequence, inboxCfg.InboxSignalSubject("ended", "item"), "3", "signal to a saga that has ended"},
	}
	if len(dl) != len(want) {
		t.Fatalf("%d dead letters, want %d: %+v", len(dl), len(want), dl)
	}
	for i, w := range want {
		d := dl[i]
		if d.Stream != inboxCfg.InboxStream() || d.Sequence != w.seq || d.Subject != w.subject || string(d.Data) != w.body ||
			!strings.HasPrefix(d.Reason, w.reason) || d.Truncated {
			t.Errorf("dead letter %d: %+v; want sequence %d on %s, body %s, reason %q…", i, d, w.seq, w.subject, w.body, w.reason)
		}
	}
	events, err := cl.History(ctx, "ended")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(findSignals(events)); n != 0 {
		t.Fatalf("the ended saga recorded %d signals", n)
	}
}

// Starts published before any node runs wait in the inbox and are
// honoured once one starts: in the header form (JSON, and msgpack), and
// as a JSON envelope. A second start of an id leaves the saga as the first
// made it and is acknowledged, not set aside; a start whose input does not
// fit the workflow is set aside with the reason.
func TestStartsPublishedBeforeAnyNodeRuns(t *testing.T) {
	c := newCluster(t)
	ctx := ctxTimeout(t, 60*time.Second)
	// An operator's set-up: the streams, and no node yet.
	st := c.store()
	if err := st.EnsureStreams(ctx, testLogger()); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	subject := inboxCfg.InboxStartSubject("greeter")
	jsonStart := func(id, body string) *nats.Msg {
		m := &nats.Msg{Subject: subject, Data: []byte(body), Header: nats.Header{worker.HeaderContentType: {worker.ContentTypeJSON}}}
		if id != "" {
			m.Header.Set(worker.HeaderSagaID, id)
		}
		return m
	}
	publishStored(t, ctx, js, jsonStart("pub-1", `{"name":"ada"}`))
	again := publishStored(t, ctx, js, jsonStart("pub-1", `{"name":"bob"}`))
	publishStored(t, ctx, js, jsonStart("", `{"id":"pub-2","input":{"name":"cy"}}`))
	packed, err := stream.Marshal(greeting{Name: "dee"})
	if err != nil {
		t.Fatal(err)
	}
	publishStored(t, ctx, js, &nats.Msg{Subject: subject, Data: packed, Header: nats.Header{worker.HeaderSagaID: {"pub-3"}}})
	bad := publishStored(t, ctx, js, jsonStart("pub-bad", `{"name":42}`))
	if again.Duplicate {
		t.Fatal("the second start of pub-1 was dropped as a duplicate; the test needs it stored")
	}

	cl := c.client()
	if _, err := cl.Describe(ctx, "pub-1"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("a published start became a saga with no node running: %v", err)
	}
	c.node(worker.Options{}, greeterWorkflow)
	// Pending starts are handled concurrently: of the two of pub-1, either
	// may land, and the other then leaves it as it made it.
	for id, want := range map[string][]string{"pub-1": {"hello ada", "hello bob"}, "pub-2": {"hello cy"}, "pub-3": {"hello dee"}} {
		d, err := cl.Wait(ctx, id)
		if err != nil || d.Status != saga.StatusCompleted {
			t.Fatalf("saga %s: %v %+v", id, err, d)
		}
		var out string
		if err := stream.Unmarshal(d.Output, &out); err != nil || !slices.Contains(want, out) {
			t.Fatalf("saga %s: output %q (%v), want one of %q", id, out, err, want)
		}
	}
	waitInboxConsumed(t, c.srv, stream.InboxStartConsumer("greeter"))
	if n := inboxState(t, c.srv).Msgs; n != 0 {
		t.Fatalf("the inbox still holds %d messages", n)
	}
	events, err := cl.History(ctx, "pub-1")
	if err != nil {
		t.Fatal(err)
	}
	if types := eventTypes(events); len(types) != 2 || types[0] != stream.WorkflowExecutionStarted || types[1] != stream.WorkflowExecutionCompleted {
		t.Fatalf("pub-1: %v", types)
	}
	if _, err := cl.Describe(ctx, "pub-bad"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("pub-bad: %v", err)
	}
	dl := deadLettersOf(t, ctx, st, stream.InboxStartConsumer("greeter"))
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want the invalid start alone: %+v", len(dl), dl)
	}
	if d := dl[0]; d.Sequence != bad.Sequence || d.Subject != subject || string(d.Data) != `{"name":42}` || !strings.HasPrefix(d.Reason, "invalid start") {
		t.Fatalf("dead letter %+v", d)
	}
}

// A cancellation published with a reason cancels a waiting saga, which
// ends canceled with that reason and the publisher's identity; one of a
// saga that does not exist is set aside.
func TestCancellationsPublished(t *testing.T) {
	c := newCluster(t)
	c.node(worker.Options{}, collectorWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, 1, saga.StartOptions{ID: "waiting"}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(c.srv.Conn())
	if err != nil {
		t.Fatal(err)
	}
	publishStored(t, ctx, js, &nats.Msg{Subject: inboxCfg.InboxCancelSubject("waiting"), Data: []byte("customer called"),
		Header: nats.Header{worker.HeaderIdentity: {"support-desk"}}})
	missing := publishStored(t, ctx, js, &nats.Msg{Subject: inboxCfg.InboxCancelSubject("nobody"), Data: []byte("no such saga")})

	d, err := cl.Wait(ctx, "waiting")
	if err != nil || d.Status != saga.StatusCanceled {
		t.Fatalf("saga: %v %+v", err, d)
	}
	if r := d.CancelRequested; r == nil || r.Reason != "customer called" || r.Identity != "support-desk" || r.Cause != stream.CancelByRequest {
		t.Fatalf("cancellation recorded as %+v", r)
	}
	events, err := cl.History(ctx, "waiting")
	if err != nil {
		t.Fatal(err)
	}
	if end, ok := events[len(events)-1].Attrs.(*stream.WorkflowExecutionCanceledAttrs); !ok || end.Reason != "customer called" {
		t.Fatalf("history ends %v", eventTypes(events))
	}
	waitInboxConsumed(t, c.srv, stream.InboxCancelConsumer)
	dl := deadLettersOf(t, ctx, c.store(), stream.InboxCancelConsumer)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1: %+v", len(dl), dl)
	}
	if x := dl[0]; x.Sequence != missing.Sequence || x.Subject != inboxCfg.InboxCancelSubject("nobody") || string(x.Data) != "no such saga" ||
		!strings.HasPrefix(x.Reason, "cancellation of a saga that does not exist") {
		t.Fatalf("dead letter %+v", x)
	}
}

// A query answers from the running saga's current state and appends
// nothing: the history is as long after two queries as before.
func TestQueryAddsNothingToTheHistory(t *testing.T) {
	c := newCluster(t)
	node := c.node(worker.Options{}, collectorWorkflow)
	cl := c.client()
	ctx := ctxTimeout(t, 60*time.Second)
	run, err := saga.StartWorkflow(ctx, cl, collectorWorkflow, 3, saga.StartOptions{ID: "queried"})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []int{5, 6} {
		if err := cl.Signal(ctx, "queried", "item", v); err != nil {
			t.Fatal(err)
		}
	}
	var before []stream.Event
	natstest.WaitFor(t, 30*time.Second, "both signals recorded", func() bool {
		before, err = cl.History(ctx, "queried")
		return err == nil && len(findSignals(before)) == 2
	})
	for range 2 {
		typ, out, err := node.Query(ctx, "queried", "got", nil)
		if err != nil || typ != "collector" {
			t.Fatalf("query: %s %v", typ, err)
		}
		var got []int
		if err := stream.Unmarshal(out, &got); err != nil || !slices.Equal(got, []int{5, 6}) {
			t.Fatalf("query answered %v (%v), want [5 6]", got, err)
		}
	}
	after, err := cl.History(ctx, "queried")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("history grew from %d to %d events: %v", len(before), len(after), eventTypes(after[len(before):]))
	}
	d, err := cl.Describe(ctx, "queried")
	if err != nil || d.Status != saga.StatusRunning || d.Events != uint64(len(before)) {
		t.Fatalf("describe: %v %+v", err, d)
	}
	if err := cl.Signal(ctx, "queried", "item", 7); err != nil {
		t.Fatal(err)
	}
	if got, err := run.Get(ctx); err != nil || !slices.Equal(got, []int{5, 6, 7}) {
		t.Fatalf("collected %v, %v", got, err)
	}
}
