package stream_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
)

// newDeadLetterStore opens a store whose set-up created the dead-letter
// stream with the others.
func newDeadLetterStore(t *testing.T, adjust ...func(*embeddednats.Options)) (*stream.Store, *nats.Conn) {
	t.Helper()
	return newStore(t, adjust...)
}

func deadLetters(t *testing.T, st *stream.Store, limit int) []stream.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := st.DeadLetters(ctx, limit)
	if err != nil {
		t.Fatalf("DeadLetters(%d): %v", limit, err)
	}
	return got
}

func publishDeadLetter(t *testing.T, st *stream.Store, d stream.DeadLetter) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.PublishDeadLetter(ctx, d); err != nil {
		t.Fatalf("PublishDeadLetter(%s:%d): %v", d.Stream, d.Sequence, err)
	}
}

// sequences lists the original sequences of dead letters, in order.
func sequences(ds []stream.DeadLetter) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Sequence
	}
	return out
}

func TestDeadLetterNames(t *testing.T) {
	cfg := stream.Config{Prefix: "shop"}.Defaults()
	if got := cfg.DeadLetterStream(); got != "SHOP_DEAD_LETTERS" {
		t.Errorf("DeadLetterStream = %q", got)
	}
	if got := cfg.DeadLetterSubject("saga-workflows-order"); got != "shop.dlq.saga-workflows-order" {
		t.Errorf("DeadLetterSubject = %q", got)
	}
	sc := cfg.DeadLetterStreamConfig()
	if sc.Name != "SHOP_DEAD_LETTERS" || len(sc.Subjects) != 1 || sc.Subjects[0] != "shop.dlq.>" ||
		sc.Retention != jetstream.LimitsPolicy || sc.MaxMsgs != 0 || sc.MaxBytes != 0 || sc.MaxAge != 0 ||
		sc.DenyDelete || !sc.AllowDirect || sc.Discard != jetstream.DiscardNew || sc.Duplicates != cfg.DuplicateWindow {
		t.Errorf("DeadLetterStreamConfig = %+v", sc)
	}
}

func TestDeadLetterRoundTrip(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	at := time.Date(2026, 3, 1, 12, 30, 45, 123456789, time.FixedZone("CET", 3600))
	want := []stream.DeadLetter{{
		Stream: "SAGA_HISTORY_0", Subject: "saga.h.0.o-1", Sequence: 17, Consumer: "saga-dispatcher",
		Reason: "undecodable commit: msgpack: invalid code", Node: "node-a", Deliveries: 1, Time: at,
		Data: []byte{0xc1, 0x00, 0xff},
	}, {
		Stream: "SAGA_TASKS", Subject: "saga.task.activity.charge", Sequence: 4, Consumer: "saga-activities-charge",
		Reason: "handler panicked: index out of range", Node: "node-b", Deliveries: 3, Time: at.Add(time.Second),
		Data: []byte(`{"saga_id":"o-2"}`),
	}}
	for _, d := range want {
		publishDeadLetter(t, st, d)
	}
	got := deadLetters(t, st, 0)
	if len(got) != len(want) {
		t.Fatalf("read back %d dead letters, want %d: %+v", len(got), len(want), got)
	}
	for i, g := range got {
		w := want[i]
		w.Size, w.DeadLetterSequence = len(w.Data), uint64(i+1)
		if !equalDeadLetter(g, w) {
			t.Errorf("dead letter %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

// equalDeadLetter compares every field; times by instant, as they come
// back in UTC.
func equalDeadLetter(a, b stream.DeadLetter) bool {
	return a.Stream == b.Stream && a.Subject == b.Subject && a.Sequence == b.Sequence && a.Consumer == b.Consumer &&
		a.Reason == b.Reason && a.Node == b.Node && a.Deliveries == b.Deliveries && a.Time.Equal(b.Time) &&
		a.Size == b.Size && a.Truncated == b.Truncated && bytes.Equal(a.Data, b.Data) && a.DeadLetterSequence == b.DeadLetterSequence
}

// A message redelivered and set aside again is stored once; another
// consumer giving up on the same message keeps its own record.
func TestDeadLetterIdempotent(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	d := stream.DeadLetter{Stream: "SAGA_HISTORY_0", Subject: "saga.h.0.o-1", Sequence: 9, Consumer: "saga-dispatcher",
		Reason: "undecodable", Deliveries: 1, Data: []byte("x")}
	publishDeadLetter(t, st, d)
	d.Deliveries, d.Reason = 2, "undecodable again"
	publishDeadLetter(t, st, d)
	got := deadLetters(t, st, 0)
	if len(got) != 1 || got[0].Deliveries != 1 || got[0].Reason != "undecodable" {
		t.Fatalf("after the same message twice: %+v, want the first record only", got)
	}
	d.Consumer = "saga-projector"
	publishDeadLetter(t, st, d)
	got = deadLetters(t, st, 0)
	if len(got) != 2 || got[1].Consumer != "saga-projector" || got[1].Sequence != 9 {
		t.Fatalf("after a second consumer: %+v, want a record per consumer", got)
	}
}

// A body that fills the server's max payload on its own is kept, cut to
// make room for the headers.
func TestDeadLetterTruncated(t *testing.T) {
	const maxPayload = 1 << 20
	st, nc := newDeadLetterStore(t, func(o *embeddednats.Options) { o.MaxPayload = maxPayload })
	if nc.MaxPayload() != maxPayload {
		t.Fatalf("server max payload %d, want %d", nc.MaxPayload(), maxPayload)
	}
	body := make([]byte, maxPayload)
	for i := range body {
		body[i] = byte(i % 251)
	}
	publishDeadLetter(t, st, stream.DeadLetter{Stream: "SAGA_TASKS", Subject: "saga.task.activity.big", Sequence: 1,
		Consumer: "saga-activities-big", Reason: "too large to decode", Data: body})
	got := deadLetters(t, st, 0)
	if len(got) != 1 {
		t.Fatalf("read back %d dead letters, want 1", len(got))
	}
	d := got[0]
	if !d.Truncated || d.Size != maxPayload {
		t.Errorf("Truncated %v, Size %d; want true, %d", d.Truncated, d.Size, maxPayload)
	}
	// Cut by no more than the room the headers need.
	if len(d.Data) >= maxPayload || len(d.Data) < maxPayload-8192 || !bytes.Equal(d.Data, body[:len(d.Data)]) {
		t.Errorf("Data is %d bytes; want the start of the body, cut by at most 8 KiB", len(d.Data))
	}

	// A body that fits is kept whole.
	publishDeadLetter(t, st, stream.DeadLetter{Stream: "SAGA_TASKS", Subject: "saga.task.activity.big", Sequence: 2,
		Consumer: "saga-activities-big", Data: body[:maxPayload/2]})
	d = deadLetters(t, st, 1)[0]
	if d.Truncated || d.Size != maxPayload/2 || !bytes.Equal(d.Data, body[:maxPayload/2]) {
		t.Errorf("half a max payload: Truncated %v, Size %d, %d bytes of data", d.Truncated, d.Size, len(d.Data))
	}
}

// limit gives the most recent letters, oldest first, and counts letters,
// not sequences, when some were deleted.
func TestDeadLetterLimit(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	for seq := uint64(1); seq <= 6; seq++ {
		publishDeadLetter(t, st, stream.DeadLetter{Stream: "SAGA_TASKS", Subject: "saga.task.activity.a", Sequence: seq,
			Consumer: "saga-activities-a", Reason: "bad"})
	}
	for _, c := range []struct {
		limit int
		want  []uint64
	}{
		{1, []uint64{6}},
		{3, []uint64{4, 5, 6}},
		{6, []uint64{1, 2, 3, 4, 5, 6}},
		{100, []uint64{1, 2, 3, 4, 5, 6}},
		{0, []uint64{1, 2, 3, 4, 5, 6}},
	} {
		if got := sequences(deadLetters(t, st, c.limit)); !equalUints(got, c.want) {
			t.Errorf("limit %d: %v, want %v", c.limit, got, c.want)
		}
	}

	// An operator deletes two of them.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dls, err := st.JetStream().Stream(ctx, st.Config().DeadLetterStream())
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{5, 2} {
		if err := dls.DeleteMsg(ctx, seq); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		limit int
		want  []uint64
	}{
		{2, []uint64{4, 6}},
		{3, []uint64{3, 4, 6}},
		{4, []uint64{1, 3, 4, 6}},
		{5, []uint64{1, 3, 4, 6}},
	} {
		if got := sequences(deadLetters(t, st, c.limit)); !equalUints(got, c.want) {
			t.Errorf("after deletes, limit %d: %v, want %v", c.limit, got, c.want)
		}
	}
	if _, err := st.DeadLetters(ctx, -1); err == nil {
		t.Error("a negative limit was accepted")
	}
}

func equalUints(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// An operator may write anything to the stream: what does not parse reads
// back as zero values.
func TestDeadLetterGarbageHeaders(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js := st.JetStream()
	h := nats.Header{}
	h.Set("Saga-Dead-Letter-Sequence", "99999999999999999999999")
	h.Set("Saga-Dead-Letter-Deliveries", "-3")
	h.Set("Saga-Dead-Letter-Time", "yesterday")
	h.Set("Saga-Dead-Letter-Size", "-12")
	h.Set("Saga-Dead-Letter-Truncated", "maybe")
	h.Set("Saga-Dead-Letter-Reason", "by hand")
	if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: "saga.dlq.by-hand", Header: h, Data: []byte("body")}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "saga.dlq.bare", nil); err != nil {
		t.Fatal(err)
	}
	got := deadLetters(t, st, 0)
	want := []stream.DeadLetter{
		{Reason: "by hand", Data: []byte("body"), DeadLetterSequence: 1},
		{DeadLetterSequence: 2},
	}
	if len(got) != len(want) {
		t.Fatalf("read back %d, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !equalDeadLetter(got[i], want[i]) {
			t.Errorf("dead letter %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
}

// Header values are one line: a reason with line breaks (a panic's stack)
// is joined, and a long one is cut.
func TestDeadLetterReasonOneLine(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	long := strings.Repeat("é", 2000)
	for i, reason := range []string{"panic: boom\n\ngoroutine 7 [running]:\r\nmain.f()", long} {
		publishDeadLetter(t, st, stream.DeadLetter{Stream: "SAGA_TASKS", Subject: "saga.task.activity.a",
			Sequence: uint64(i + 1), Consumer: "saga-activities-a", Reason: reason})
	}
	got := deadLetters(t, st, 0)
	if len(got) != 2 {
		t.Fatalf("read back %d dead letters, want 2", len(got))
	}
	if want := "panic: boom | goroutine 7 [running]: | main.f()"; got[0].Reason != want {
		t.Errorf("reason %q, want %q", got[0].Reason, want)
	}
	r := got[1].Reason
	if len(r) > 1024 || len(r) < 1000 || !utf8.ValidString(r) || !strings.HasPrefix(long, strings.TrimSuffix(r, "…")) {
		t.Errorf("long reason came back as %d bytes (valid UTF-8: %v)", len(r), utf8.ValidString(r))
	}
}

func TestDeadLetterInvalid(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range []stream.DeadLetter{
		{Stream: "SAGA_TASKS", Sequence: 1, Consumer: "a.b"},
		{Stream: "SAGA_TASKS", Sequence: 1, Consumer: "saga.>"},
		{Stream: "SAGA_TASKS", Sequence: 1},
		{Stream: "", Sequence: 1, Consumer: "c"},
		{Stream: "SAGA_TASKS", Sequence: 0, Consumer: "c"},
	} {
		if err := st.PublishDeadLetter(ctx, d); !errors.Is(err, stream.ErrInvalidID) {
			t.Errorf("PublishDeadLetter(%+v) = %v, want ErrInvalidID", d, err)
		}
	}
	if got := deadLetters(t, st, 0); len(got) != 0 {
		t.Errorf("invalid dead letters were stored: %+v", got)
	}
}

// Without the stream, writing fails rather than dropping the letter, and
// reading says the stream is missing rather than "none".
func TestDeadLetterNoStream(t *testing.T) {
	srv := natstest.Start(t)
	st, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = st.PublishDeadLetter(ctx, stream.DeadLetter{Stream: "SAGA_TASKS", Sequence: 1, Consumer: "c"})
	if !errors.Is(err, stream.ErrNoStream) {
		t.Errorf("PublishDeadLetter without the stream: %v, want ErrNoStream", err)
	}
	if _, err := st.DeadLetters(ctx, 0); !errors.Is(err, stream.ErrNoStream) {
		t.Errorf("DeadLetters without the stream: %v, want ErrNoStream", err)
	}
}

func TestDeadLetterEmpty(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	if got := deadLetters(t, st, 10); got == nil || len(got) != 0 {
		t.Errorf("empty stream: %#v, want an empty list", got)
	}
}

// A dead letter keeps the original's headers, so that it can be sent again
// as it was; NATS's own are renamed, and the original cannot forge the
// dead letter's.
func TestDeadLetterKeepsTheOriginalHeaders(t *testing.T) {
	st, _ := newDeadLetterStore(t)
	publishDeadLetter(t, st, stream.DeadLetter{Stream: "SAGA_INBOX", Subject: "saga.start.order", Sequence: 7, Consumer: "saga-starts-order",
		Reason: "invalid start", Data: []byte(`{}`), Headers: nats.Header{
			"Saga-Id": {"o-1"}, "Content-Type": {"application/json"}, "Nats-Msg-Id": {"m-1"},
			"Saga-Dead-Letter-Reason": {"forged"},
		}})
	got := deadLetters(t, st, 0)
	if len(got) != 1 {
		t.Fatalf("%d dead letters", len(got))
	}
	h := got[0].Headers
	if h.Get("Saga-Id") != "o-1" || h.Get("Content-Type") != "application/json" || h.Get("Saga-Original-Nats-Msg-Id") != "m-1" {
		t.Fatalf("headers %v", h)
	}
	if got[0].Reason != "invalid start" || h.Get("Saga-Dead-Letter-Reason") != "" {
		t.Fatalf("reason %q, headers %v", got[0].Reason, h)
	}
}
