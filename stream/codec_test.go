package stream_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jetsaga/saga/stream"
)

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "order-1", "A_b-9", strings.Repeat("x", stream.MaxIDLength)} {
		if err := stream.ValidateID("saga id", ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a.b", "a*", ">", "a b", "tab\t", "ü", "a/b", strings.Repeat("x", stream.MaxIDLength+1)} {
		if err := stream.ValidateID("saga id", bad); !errors.Is(err, stream.ErrInvalidID) {
			t.Errorf("%q: got %v, want ErrInvalidID", bad, err)
		}
	}
}

func TestCheckMsgpackRefusesLengthsLargerThanTheData(t *testing.T) {
	cases := map[string][]byte{
		"array32 of 4G elements":   {0xdd, 0xff, 0xff, 0xff, 0xff},
		"map32 of 4G pairs":        {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01},
		"str32 of 4 GiB":           {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},
		"bin32 longer than data":   {0xc6, 0x00, 0x00, 0x10, 0x00, 1, 2, 3},
		"truncated uint64":         {0xcf, 1, 2},
		"reserved byte 0xc1":       {0xc1},
		"trailing bytes":           {0x01, 0x02},
		"empty":                    {},
		"fixarray missing element": {0x92, 0x01},
	}
	for name, data := range cases {
		if err := stream.CheckMsgpack(data); !errors.Is(err, stream.ErrCodec) {
			t.Errorf("%s: got %v, want ErrCodec", name, err)
		}
	}
	deep := []byte{}
	for range 100 {
		deep = append(deep, 0x91)
	}
	deep = append(deep, 0x01)
	if err := stream.CheckMsgpack(deep); !errors.Is(err, stream.ErrCodec) {
		t.Errorf("100 nested arrays: got %v, want ErrCodec", err)
	}
	// Decoding into a typed slice must not allocate from the header.
	var items []struct{ A [1024]byte }
	if err := stream.Unmarshal([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, &items); !errors.Is(err, stream.ErrCodec) {
		t.Errorf("typed slice bomb: got %v", err)
	}
}

func TestCheckMsgpackAcceptsWhatMarshalWrites(t *testing.T) {
	type item struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	}
	values := []any{
		nil, true, 1, -1, 1 << 40, -(1 << 40), 3.5, float32(1.5), "", strings.Repeat("s", 70000),
		[]byte{1, 2, 3}, []item{{"a", 1}, {"b", 2}}, map[string]any{"k": []any{1, "x", nil}},
		time.Now(), map[int]string{1: "a"},
	}
	for _, v := range values {
		b, err := stream.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.CheckMsgpack(b); err != nil {
			t.Errorf("%T: %v", v, err)
		}
	}
}

func TestPayloadJSONRoundTrip(t *testing.T) {
	type line struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	}
	type order struct {
		OrderID string  `json:"order_id"`
		Amount  float64 `json:"amount"`
		Items   []line  `json:"items"`
	}
	p, err := stream.PayloadFromJSON([]byte(`{"order_id":"o-1","amount":42,"items":[{"sku":"A","qty":2}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var o order
	if err := stream.Unmarshal(p, &o); err != nil {
		t.Fatal(err)
	}
	if o.OrderID != "o-1" || o.Amount != 42 || len(o.Items) != 1 || o.Items[0].Qty != 2 {
		t.Fatalf("decoded %+v", o)
	}
	j, err := p.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(j); got != `{"amount":42,"items":[{"qty":2,"sku":"A"}],"order_id":"o-1"}` {
		t.Fatalf("json %s", got)
	}
	if _, err := stream.PayloadFromJSON([]byte(`{"a":`)); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("bad json: %v", err)
	}
}

func TestCommitRoundTripAndRejects(t *testing.T) {
	now := time.Now().UTC()
	c := &stream.Commit{SagaID: "s", WorkflowType: "w", Events: []stream.Event{
		{ID: 3, Type: stream.ActivityTaskStarted, Time: now, Attrs: &stream.ActivityTaskStartedAttrs{ScheduledEventID: 1, Attempt: 2, Node: "n"}},
		{ID: 4, Type: stream.ActivityTaskCompleted, Time: now, Attrs: &stream.ActivityTaskCompletedAttrs{ScheduledEventID: 1, Result: stream.Payload{0x01}}},
	}}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := stream.DecodeCommit(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.SagaID != "s" || len(back.Events) != 2 || back.Events[1].Category != stream.CategoryActivity ||
		back.Events[1].Attrs.(*stream.ActivityTaskCompletedAttrs).Result[0] != 0x01 || !back.Events[0].Time.Equal(now) {
		t.Fatalf("round trip: %+v", back)
	}
	gap := &stream.Commit{SagaID: "s", WorkflowType: "w", Events: []stream.Event{c.Events[0], {ID: 9, Type: stream.ActivityTaskCompleted, Attrs: &stream.ActivityTaskCompletedAttrs{}}}}
	if _, err := gap.Encode(); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("gap: %v", err)
	}
	unknown := &stream.Commit{SagaID: "s", WorkflowType: "w", Events: []stream.Event{{ID: 0, Type: "Bogus", Attrs: &struct{}{}}}}
	if _, err := unknown.Encode(); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := stream.DecodeCommit([]byte{0x80}); !errors.Is(err, stream.ErrCodec) {
		t.Fatalf("empty map: %v", err)
	}
}

func FuzzDecodeCommit(f *testing.F) {
	c := &stream.Commit{SagaID: "s", WorkflowType: "w", Events: []stream.Event{{ID: 0, Type: stream.WorkflowExecutionStarted, Time: time.Unix(1, 0),
		Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: "w", Input: stream.Payload{0x91, 0x01}}}}}
	b, err := c.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := stream.DecodeCommit(data)
		if err != nil {
			// Malformed, or well-formed but newer than this node knows.
			if !errors.Is(err, stream.ErrCodec) && !errors.Is(err, stream.ErrUnsupported) {
				t.Fatalf("error classified as neither ErrCodec nor ErrUnsupported: %v", err)
			}
			return
		}
		// Whatever a node decodes, a node can encode again, and decode
		// again: the writer's checks are the reader's.
		b, err := c.Encode()
		if err != nil {
			t.Fatalf("decoded commit does not encode: %v", err)
		}
		if _, err := stream.DecodeCommit(b); err != nil {
			t.Fatalf("re-encoded commit does not decode: %v", err)
		}
	})
}

// Readers accept msgpack nested 64 levels deep and no deeper; writers
// accept user values of MaxPayloadDepth levels and no deeper, so that a
// value carried inside a commit is still readable.
func TestNestingLimits(t *testing.T) {
	nested := func(levels int, open byte) []byte {
		var b []byte
		for range levels {
			b = append(b, open) // a container of one element
			if open == 0x81 {
				b = append(b, 0xa1, 'k') // its key
			}
		}
		return append(b, 0x01)
	}
	for _, open := range []byte{0x91, 0x81} {
		if err := stream.CheckMsgpack(nested(64, open)); err != nil {
			t.Errorf("64 levels (0x%x): %v", open, err)
		}
		if err := stream.CheckMsgpack(nested(65, open)); !errors.Is(err, stream.ErrCodec) {
			t.Errorf("65 levels (0x%x): %v", open, err)
		}
		if err := stream.CheckValue("v", nested(stream.MaxPayloadDepth, open), 0); err != nil {
			t.Errorf("%d levels as a value (0x%x): %v", stream.MaxPayloadDepth, open, err)
		}
		if err := stream.CheckValue("v", nested(stream.MaxPayloadDepth+1, open), 0); !errors.Is(err, stream.ErrTooLarge) {
			t.Errorf("%d levels as a value (0x%x): %v", stream.MaxPayloadDepth+1, open, err)
		}
	}
	// Siblings do not add up: a wide value is as deep as its deepest part.
	wide := []byte{0x93}
	for range 3 {
		wide = append(wide, nested(60, 0x91)...)
	}
	if err := stream.CheckMsgpack(wide); err != nil {
		t.Errorf("three siblings 61 deep: %v", err)
	}
}

// A failure of any shape is recorded within bounds that leave room in its
// commit: deep causes each with many large context entries are cut to a
// summary that keeps the kind and the message.
func TestFailureBoundedAsAWhole(t *testing.T) {
	var f *stream.Failure
	for level := range 10 {
		ctx := map[string]string{}
		for i := range 40 {
			ctx[fmt.Sprintf("k%d", i)] = strings.Repeat("v", 8<<10)
		}
		f = &stream.Failure{Kind: "ActivityExecution", Message: fmt.Sprintf("level %d", level), Context: ctx, NonRetryable: true, Cause: f}
	}
	b := f.Bounded()
	data, err := stream.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 64<<10 || b.Kind != "ActivityExecution" || !b.NonRetryable || !strings.HasPrefix(b.Message, "level 9") {
		t.Fatalf("bounded failure of %d bytes: kind %s, message %.40q", len(data), b.Kind, b.Message)
	}
	small := &stream.Failure{Kind: "Timeout", Message: "slow", Context: map[string]string{"a": "b"}, Cause: &stream.Failure{Kind: "Unknown", Message: "cause"}}
	if got := small.Bounded(); got.Cause == nil || got.Context["a"] != "b" {
		t.Fatalf("a small failure lost its details: %+v", got)
	}
}
