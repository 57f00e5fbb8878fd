package saga_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/internal/natstest"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// TestMain checks that no test or example of the package leaves a
// goroutine behind (servers, connections, nodes).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var allKinds = []saga.ErrorKind{
	saga.KindEventStore, saga.KindCodec, saga.KindWorkflowExecution, saga.KindStepExecution,
	saga.KindActivityExecution, saga.KindTimerStore, saga.KindSignalDispatcher, saga.KindTaskQueue,
	saga.KindSnapshot, saga.KindReplay, saga.KindConfiguration, saga.KindValidation,
	saga.KindTimeout, saga.KindCancelled, saga.KindConcurrency, saga.KindCompensation, saga.KindUnknown,
}

func TestErrorKindsAreDistinctErrors(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range allKinds {
		if k.Error() != string(k) || k.Error() == "" {
			t.Errorf("kind %q: Error() = %q", string(k), k.Error())
		}
		if seen[k.Error()] {
			t.Errorf("kind %q defined twice", k)
		}
		seen[k.Error()] = true
	}
}

func TestErrorsIsMatchesKindThroughWrapping(t *testing.T) {
	inner := saga.NewError(saga.KindValidation, "amount must be positive")
	cases := []struct {
		name string
		err  error
		// kinds that must match; every other kind must not.
		kinds []saga.ErrorKind
	}{
		{"bare", saga.NewError(saga.KindTimeout, "too slow"), []saga.ErrorKind{saga.KindTimeout}},
		{"fmt %w once", fmt.Errorf("charge: %w", saga.NewError(saga.KindTimeout, "too slow")), []saga.ErrorKind{saga.KindTimeout}},
		{"fmt %w twice", fmt.Errorf("order: %w", fmt.Errorf("charge: %w", saga.NewError(saga.KindTimeout, "too slow"))), []saga.ErrorKind{saga.KindTimeout}},
		{"errors.Join", errors.Join(io.EOF, saga.NewError(saga.KindTimeout, "too slow")), []saga.ErrorKind{saga.KindTimeout}},
		{"Errorf", saga.Errorf(saga.KindCodec, "decode %s", "x"), []saga.ErrorKind{saga.KindCodec}},
		{"chain of two kinds", &saga.Error{Kind: saga.KindActivityExecution, Message: "activity failed", Cause: inner},
			[]saga.ErrorKind{saga.KindActivityExecution, saga.KindValidation}},
		{"Errorf wrapping an *Error", saga.Errorf(saga.KindWorkflowExecution, "step 2: %w", inner),
			[]saga.ErrorKind{saga.KindWorkflowExecution, saga.KindValidation}},
		{"Permanent of a plain error", saga.Permanent(io.EOF), []saga.ErrorKind{saga.KindActivityExecution}},
		{"plain error", io.EOF, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, k := range allKinds {
				want := false
				for _, w := range c.kinds {
					want = want || w == k
				}
				if got := errors.Is(c.err, k); got != want {
					t.Errorf("errors.Is(%v, %s) = %v, want %v", c.err, k, got, want)
				}
			}
		})
	}
	// A kind is not any other error, and no other error is a kind.
	if errors.Is(saga.NewError(saga.KindTimeout, "x"), context.DeadlineExceeded) {
		t.Error("a Timeout error matched context.DeadlineExceeded without wrapping it")
	}
	if errors.Is(saga.KindTimeout, io.EOF) || !errors.Is(saga.KindTimeout, saga.KindTimeout) {
		t.Error("ErrorKind compares wrongly to itself or another error")
	}
}

func TestErrorsAsFindsTheOutermostError(t *testing.T) {
	inner := saga.NewError(saga.KindValidation, "inner")
	outer := &saga.Error{Kind: saga.KindActivityExecution, Message: "outer", Cause: inner}
	err := fmt.Errorf("workflow: %w", outer)

	var e *saga.Error
	if !errors.As(err, &e) {
		t.Fatalf("errors.As did not find an *Error in %v", err)
	}
	if e != outer {
		t.Fatalf("errors.As found %#v, want the outermost *Error", e)
	}
	if !errors.As(e.Unwrap(), &e) || e != inner {
		t.Fatalf("errors.As on the cause found %#v, want the inner *Error", e)
	}
	if errors.Unwrap(inner) != nil {
		t.Fatalf("an error without cause unwraps to %v", errors.Unwrap(inner))
	}
	var none *saga.Error
	if errors.As(io.EOF, &none) {
		t.Fatal("errors.As matched a plain error")
	}
}

func TestErrorText(t *testing.T) {
	cases := []struct {
		name string
		err  *saga.Error
		want string
	}{
		{"message", saga.NewError(saga.KindValidation, "bad input"), "bad input"},
		{"no message shows the kind", saga.NewError(saga.KindTimeout, ""), "Timeout"},
		{"cause appended", &saga.Error{Kind: saga.KindCodec, Message: "decode", Cause: io.EOF}, "decode: EOF"},
		{"cause repeating the message is not repeated", &saga.Error{Kind: saga.KindCodec, Message: "EOF", Cause: io.EOF}, "EOF"},
		{"nested", &saga.Error{Kind: saga.KindActivityExecution, Message: "a", Cause: &saga.Error{Kind: saga.KindValidation, Message: "b", Cause: io.EOF}}, "a: b: EOF"},
		{"context is not part of the text", saga.NewError(saga.KindValidation, "bad").WithContext("k", "v"), "bad"},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%s: Error() = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestWithContext(t *testing.T) {
	e := saga.NewError(saga.KindValidation, "bad order")
	if e.Context != nil {
		t.Fatalf("new error has context %v", e.Context)
	}
	got := e.WithContext("order_id", "o-1").WithContext("field", "amount")
	if got != e {
		t.Fatal("WithContext returned another error, want the receiver for chaining")
	}
	want := map[string]string{"order_id": "o-1", "field": "amount"}
	if !maps.Equal(e.Context, want) {
		t.Fatalf("context %v, want %v", e.Context, want)
	}
	e.WithContext("field", "items")
	if e.Context["field"] != "items" || len(e.Context) != 2 {
		t.Fatalf("overwriting a key gave %v", e.Context)
	}
	// Context survives wrapping and is reachable with errors.As.
	var found *saga.Error
	if !errors.As(fmt.Errorf("start: %w", e), &found) || found.Context["order_id"] != "o-1" {
		t.Fatalf("context lost through wrapping: %#v", found)
	}
}

func TestErrorf(t *testing.T) {
	inner := saga.NewError(saga.KindValidation, "negative amount")
	cases := []struct {
		name        string
		err         *saga.Error
		wantKind    saga.ErrorKind
		wantMessage string
		wantCause   error
		wantText    string
	}{
		{"no %w", saga.Errorf(saga.KindConfiguration, "shards must be %d or more", 1),
			saga.KindConfiguration, "shards must be 1 or more", nil, "shards must be 1 or more"},
		{"%w at the end", saga.Errorf(saga.KindCodec, "decode order %s: %w", "o-1", io.ErrUnexpectedEOF),
			saga.KindCodec, "decode order o-1", io.ErrUnexpectedEOF, "decode order o-1: unexpected EOF"},
		{"%v does not wrap", saga.Errorf(saga.KindCodec, "decode: %v", io.EOF),
			saga.KindCodec, "decode: EOF", nil, "decode: EOF"},
		{"%w of an *Error", saga.Errorf(saga.KindWorkflowExecution, "charge: %w", inner),
			saga.KindWorkflowExecution, "charge", inner, "charge: negative amount"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.err.Kind != c.wantKind || c.err.Message != c.wantMessage {
				t.Errorf("kind %q message %q, want %q %q", c.err.Kind, c.err.Message, c.wantKind, c.wantMessage)
			}
			if c.err.Cause != c.wantCause {
				t.Errorf("cause %v, want %v", c.err.Cause, c.wantCause)
			}
			if c.wantCause != nil && !errors.Is(c.err, c.wantCause) {
				t.Errorf("errors.Is(err, cause) is false")
			}
			if got := c.err.Error(); got != c.wantText {
				t.Errorf("Error() = %q, want %q", got, c.wantText)
			}
			if c.err.NonRetryable || c.err.Context != nil {
				t.Errorf("Errorf set NonRetryable %v or context %v", c.err.NonRetryable, c.err.Context)
			}
		})
	}
}

func TestErrorfWithSeveralWrapsKeepsTheCauses(t *testing.T) {
	err := saga.Errorf(saga.KindCodec, "%w: %w", stream.ErrCodec, io.EOF)
	if !errors.Is(err, stream.ErrCodec) || !errors.Is(err, io.EOF) {
		t.Fatalf("Errorf with two %%w: %#v does not match its wrapped errors", err)
	}
}

func TestErrorfWithWrapInTheMiddleDoesNotRepeatTheCause(t *testing.T) {
	err := saga.Errorf(saga.KindCodec, "%w while decoding", io.EOF)
	if got, want := err.Error(), "EOF while decoding"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}

func TestPermanent(t *testing.T) {
	if saga.Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}

	t.Run("an *Error keeps its kind, message, context and cause", func(t *testing.T) {
		orig := (&saga.Error{Kind: saga.KindValidation, Message: "card declined", Cause: io.EOF}).WithContext("card", "visa")
		err := saga.Permanent(orig)
		var p *saga.Error
		if !errors.As(err, &p) {
			t.Fatalf("Permanent returned %T", err)
		}
		if p.Kind != saga.KindValidation || p.Message != "card declined" || p.Cause != io.EOF || p.Context["card"] != "visa" {
			t.Fatalf("Permanent changed the error: %#v", p)
		}
		if !p.NonRetryable || p.Retryable() {
			t.Fatalf("Permanent error is retryable: %#v", p)
		}
		if orig.NonRetryable || !orig.Retryable() {
			t.Fatal("Permanent modified its argument instead of copying it")
		}
		if err.Error() != orig.Error() {
			t.Fatalf("text %q, want %q", err.Error(), orig.Error())
		}
		if f := saga.ToFailure(err, saga.KindUnknown); !f.NonRetryable || f.Kind != string(saga.KindValidation) {
			t.Fatalf("recorded as %+v", f)
		}
	})

	t.Run("a plain error becomes ActivityExecution wrapping it", func(t *testing.T) {
		err := saga.Permanent(io.ErrUnexpectedEOF)
		var p *saga.Error
		if !errors.As(err, &p) {
			t.Fatalf("Permanent returned %T", err)
		}
		if p.Kind != saga.KindActivityExecution || !p.NonRetryable || p.Message != io.ErrUnexpectedEOF.Error() {
			t.Fatalf("got %#v", p)
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatal("the plain error is not in the chain")
		}
		// The cause only repeats the message: neither the text nor the
		// record shows it twice.
		if err.Error() != io.ErrUnexpectedEOF.Error() {
			t.Fatalf("text %q", err.Error())
		}
		if f := saga.ToFailure(err, saga.KindUnknown); f.Cause != nil || !f.NonRetryable {
			t.Fatalf("recorded as %+v", f)
		}
	})

	t.Run("a wrapped *Error stays matchable by kind", func(t *testing.T) {
		inner := saga.NewError(saga.KindValidation, "bad sku")
		err := saga.Permanent(fmt.Errorf("reserve: %w", inner))
		var p *saga.Error
		if !errors.As(err, &p) || !p.NonRetryable {
			t.Fatalf("got %#v", err)
		}
		if !errors.Is(err, saga.KindValidation) || err.Error() != "reserve: bad sku" {
			t.Fatalf("errors.Is(KindValidation) false or text %q", err.Error())
		}
		if !saga.ToFailure(err, saga.KindUnknown).NonRetryable {
			t.Fatal("not recorded as non-retryable")
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		once := saga.Permanent(saga.NewError(saga.KindTimeout, "x"))
		twice := saga.Permanent(once)
		if !reflect.DeepEqual(once, twice) {
			t.Fatalf("%#v != %#v", once, twice)
		}
	})
}

func TestPermanentDoesNotShareContextWithItsArgument(t *testing.T) {
	orig := saga.NewError(saga.KindValidation, "x").WithContext("a", "1")
	p := saga.Permanent(orig).(*saga.Error)
	p.WithContext("b", "2")
	if _, leaked := orig.Context["b"]; leaked {
		t.Fatalf("context added to the permanent copy appeared in the original: %v", orig.Context)
	}
}

func TestRetryable(t *testing.T) {
	if !saga.NewError(saga.KindTimeout, "x").Retryable() {
		t.Error("a new error is not retryable")
	}
	if (&saga.Error{Kind: saga.KindTimeout, NonRetryable: true}).Retryable() {
		t.Error("a NonRetryable error is retryable")
	}
}

func TestStructuredAndMarshalJSON(t *testing.T) {
	err := (&saga.Error{
		Kind:         saga.KindActivityExecution,
		Message:      "activity charge failed",
		NonRetryable: true,
		Cause:        (&saga.Error{Kind: saga.KindValidation, Message: "card declined", Cause: io.EOF}).WithContext("card", "visa"),
	}).WithContext("attempts", "3")

	want := &saga.StructuredError{
		Kind:         saga.KindActivityExecution,
		Message:      "activity charge failed",
		Context:      map[string]string{"attempts": "3"},
		NonRetryable: true,
		Cause: &saga.StructuredError{
			Kind:    saga.KindValidation,
			Message: "card declined",
			Context: map[string]string{"card": "visa"},
			Cause:   &saga.StructuredError{Kind: saga.KindUnknown, Message: "EOF"},
		},
	}
	if got := err.Structured(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Structured()\n got %+v\nwant %+v", got, want)
	}

	b, jerr := json.Marshal(err)
	if jerr != nil {
		t.Fatal(jerr)
	}
	const wantJSON = `{"kind":"ActivityExecution","message":"activity charge failed","context":{"attempts":"3"},"non_retryable":true,` +
		`"cause":{"kind":"Validation","message":"card declined","context":{"card":"visa"},"cause":{"kind":"Unknown","message":"EOF"}}}`
	if string(b) != wantJSON {
		t.Fatalf("json.Marshal\n got %s\nwant %s", b, wantJSON)
	}
	direct, jerr := err.MarshalJSON()
	if jerr != nil || string(direct) != wantJSON {
		t.Fatalf("MarshalJSON = %s, %v", direct, jerr)
	}

	// The JSON decodes back into the structured form.
	var back saga.StructuredError
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, want) {
		t.Fatalf("decoded %+v, want %+v", back, want)
	}

	// Empty fields are left out; the message field is always there.
	b, _ = json.Marshal(saga.NewError(saga.KindTimeout, ""))
	if string(b) != `{"kind":"Timeout","message":""}` {
		t.Fatalf("minimal error marshals to %s", b)
	}
	// An *Error inside another value marshals in its structured form.
	b, _ = json.Marshal(struct {
		Err *saga.Error `json:"err"`
	}{saga.NewError(saga.KindTimeout, "slow")})
	if string(b) != `{"err":{"kind":"Timeout","message":"slow"}}` {
		t.Fatalf("embedded error marshals to %s", b)
	}
}

func TestFailureRoundTrip(t *testing.T) {
	plainCause := errors.New("connection reset")
	cases := []struct {
		name string
		err  error
		def  saga.ErrorKind
		// want is the recorded form; restored what FromFailure gives back.
		want     *stream.Failure
		restored *saga.Error
		// sameText: the restored error reads as the original.
		sameText bool
	}{
		{
			name:     "plain error takes the default kind",
			err:      errors.New("disk full"),
			def:      saga.KindActivityExecution,
			want:     &stream.Failure{Kind: "ActivityExecution", Message: "disk full"},
			restored: &saga.Error{Kind: saga.KindActivityExecution, Message: "disk full"},
			sameText: true,
		},
		{
			name:     "plain wrapped error keeps its full text but not its chain",
			err:      fmt.Errorf("read: %w", io.EOF),
			def:      saga.KindWorkflowExecution,
			want:     &stream.Failure{Kind: "WorkflowExecution", Message: "read: EOF"},
			restored: &saga.Error{Kind: saga.KindWorkflowExecution, Message: "read: EOF"},
			sameText: true,
		},
		{
			name: "*Error keeps kind, message, context and non-retryable",
			err: (&saga.Error{Kind: saga.KindValidation, Message: "bad sku", NonRetryable: true}).
				WithContext("sku", "x-1").WithContext("line", "2"),
			def:      saga.KindActivityExecution,
			want:     &stream.Failure{Kind: "Validation", Message: "bad sku", NonRetryable: true, Context: map[string]string{"sku": "x-1", "line": "2"}},
			restored: &saga.Error{Kind: saga.KindValidation, Message: "bad sku", NonRetryable: true, Context: map[string]string{"sku": "x-1", "line": "2"}},
			sameText: true,
		},
		{
			name: "*Error wrapped by fmt.Errorf with extra text",
			err:  fmt.Errorf("charge card: %w", saga.NewError(saga.KindValidation, "declined").WithContext("card", "visa")),
			def:  saga.KindActivityExecution,
			want: &stream.Failure{Kind: "Validation", Message: "charge card",
				Cause: &stream.Failure{Kind: "Validation", Message: "declined", Context: map[string]string{"card": "visa"}}},
			restored: &saga.Error{Kind: saga.KindValidation, Message: "charge card",
				Cause: &saga.Error{Kind: saga.KindValidation, Message: "declined", Context: map[string]string{"card": "visa"}}},
			sameText: true,
		},
		{
			name: "chain of two *Errors",
			err: (&saga.Error{Kind: saga.KindActivityExecution, Message: "activity charge failed after 3 attempts",
				Cause: (&saga.Error{Kind: saga.KindTimeout, Message: "attempt timed out", NonRetryable: true}).WithContext("timeout", "1s")}).
				WithContext("attempts", "3"),
			def: saga.KindUnknown,
			want: &stream.Failure{Kind: "ActivityExecution", Message: "activity charge failed after 3 attempts", Context: map[string]string{"attempts": "3"},
				Cause: &stream.Failure{Kind: "Timeout", Message: "attempt timed out", NonRetryable: true, Context: map[string]string{"timeout": "1s"}}},
			restored: &saga.Error{Kind: saga.KindActivityExecution, Message: "activity charge failed after 3 attempts", Context: map[string]string{"attempts": "3"},
				Cause: &saga.Error{Kind: saga.KindTimeout, Message: "attempt timed out", NonRetryable: true, Context: map[string]string{"timeout": "1s"}}},
			sameText: true,
		},
		{
			name:     "plain cause with its own text becomes an Unknown cause",
			err:      &saga.Error{Kind: saga.KindEventStore, Message: "append", Cause: plainCause},
			def:      saga.KindActivityExecution,
			want:     &stream.Failure{Kind: "EventStore", Message: "append", Cause: &stream.Failure{Kind: "Unknown", Message: "connection reset"}},
			restored: &saga.Error{Kind: saga.KindEventStore, Message: "append", Cause: &saga.Error{Kind: saga.KindUnknown, Message: "connection reset"}},
			sameText: true,
		},
		{
			name:     "plain cause that only repeats the message is dropped",
			err:      &saga.Error{Kind: saga.KindActivityExecution, Message: "connection reset", NonRetryable: true, Cause: plainCause},
			def:      saga.KindUnknown,
			want:     &stream.Failure{Kind: "ActivityExecution", Message: "connection reset", NonRetryable: true},
			restored: &saga.Error{Kind: saga.KindActivityExecution, Message: "connection reset", NonRetryable: true},
			sameText: true,
		},
		{
			name: "*Error cause repeating the message is kept",
			err: &saga.Error{Kind: saga.KindActivityExecution, Message: "declined",
				Cause: saga.NewError(saga.KindValidation, "declined")},
			def: saga.KindUnknown,
			want: &stream.Failure{Kind: "ActivityExecution", Message: "declined",
				Cause: &stream.Failure{Kind: "Validation", Message: "declined"}},
			restored: &saga.Error{Kind: saga.KindActivityExecution, Message: "declined",
				Cause: &saga.Error{Kind: saga.KindValidation, Message: "declined"}},
			sameText: true,
		},
		{
			name:     "empty message",
			err:      saga.NewError(saga.KindCancelled, ""),
			def:      saga.KindUnknown,
			want:     &stream.Failure{Kind: "Cancelled"},
			restored: &saga.Error{Kind: saga.KindCancelled},
			sameText: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := saga.ToFailure(c.err, c.def)
			if !reflect.DeepEqual(f, c.want) {
				t.Fatalf("ToFailure\n got %s\nwant %s", dumpFailure(f), dumpFailure(c.want))
			}

			// History stores the failure as msgpack: go through it.
			b, err := stream.Marshal(f)
			if err != nil {
				t.Fatal(err)
			}
			var stored stream.Failure
			if err := stream.Unmarshal(b, &stored); err != nil {
				t.Fatal(err)
			}
			got := saga.FromFailure(&stored)
			if !reflect.DeepEqual(got, c.restored) {
				t.Fatalf("FromFailure\n got %#v\nwant %#v", got, c.restored)
			}
			if c.sameText && got.Error() != c.err.Error() {
				t.Errorf("restored text %q, original %q", got.Error(), c.err.Error())
			}
			// (A failure without message reads empty, not as its kind.)
			if c.sameText && f.Message != "" && f.Error() != c.err.Error() {
				t.Errorf("failure text %q, original %q", f.Error(), c.err.Error())
			}
			// Every kind matched by the original is matched by the restored error.
			for _, k := range allKinds {
				if errors.Is(c.err, k) && !errors.Is(got, k) {
					t.Errorf("original matches %s, restored does not", k)
				}
			}
			// A restored error records as it was stored.
			if again := saga.ToFailure(got, saga.KindUnknown); !reflect.DeepEqual(again, c.want) {
				t.Errorf("re-recording the restored error\n got %s\nwant %s", dumpFailure(again), dumpFailure(c.want))
			}
		})
	}
	if saga.ToFailure(nil, saga.KindUnknown) != nil || saga.FromFailure(nil) != nil {
		t.Fatal("nil does not round trip to nil")
	}
}

func TestFailureRoundTripKeepsTheTextOfAWrappedError(t *testing.T) {
	err := fmt.Errorf("charge card: %w", saga.NewError(saga.KindValidation, "declined"))
	f := saga.ToFailure(err, saga.KindActivityExecution)
	if got := saga.FromFailure(f).Error(); got != err.Error() {
		t.Errorf("restored error reads %q, original %q", got, err.Error())
	}
	if got := f.Error(); got != err.Error() {
		t.Errorf("recorded failure reads %q, original %q", got, err.Error())
	}
}

func TestFailureConversionsCopyContext(t *testing.T) {
	e := saga.NewError(saga.KindValidation, "x").WithContext("a", "1")
	f := saga.ToFailure(e, saga.KindUnknown)
	e.WithContext("a", "changed")
	if f.Context["a"] != "1" {
		t.Fatalf("ToFailure shares the context map: %v", f.Context)
	}
	r := saga.FromFailure(f)
	r.WithContext("a", "changed again")
	if f.Context["a"] != "1" {
		t.Fatalf("FromFailure shares the context map: %v", f.Context)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func dumpFailure(f *stream.Failure) string {
	b, _ := json.Marshal(f)
	return string(b)
}

func TestSentinelsMatchAfterWrapping(t *testing.T) {
	sentinels := map[string]error{
		"ErrAlreadyStarted":      saga.ErrAlreadyStarted,
		"ErrNotFound":            saga.ErrNotFound,
		"ErrConcurrency":         saga.ErrConcurrency,
		"ErrInvalidID":           saga.ErrInvalidID,
		"ErrUnknownWorkflowType": saga.ErrUnknownWorkflowType,
		"ErrBlocked":             saga.ErrBlocked,
		"ErrCanceled":            saga.ErrCanceled,
	}
	for name, s := range sentinels {
		wraps := map[string]error{
			"cause of *Error":        (&saga.Error{Kind: saga.KindValidation, Message: "op", Cause: s}).WithContext("saga_id", "x"),
			"Errorf %w":              saga.Errorf(saga.KindValidation, "op %s: %w", "x", s),
			"fmt.Errorf of *Error":   fmt.Errorf("api: %w", &saga.Error{Kind: saga.KindValidation, Message: "op", Cause: s}),
			"Permanent":              saga.Permanent(s),
			"*Error in *Error chain": &saga.Error{Kind: saga.KindWorkflowExecution, Message: "outer", Cause: &saga.Error{Kind: saga.KindValidation, Message: "inner", Cause: s}},
		}
		for how, err := range wraps {
			if !errors.Is(err, s) {
				t.Errorf("%s, %s: errors.Is is false for %v", name, how, err)
			}
			for other, o := range sentinels {
				if other != name && errors.Is(err, o) {
					t.Errorf("%s, %s: also matches %s", name, how, other)
				}
			}
		}
	}
	// The log's sentinels are the root package's.
	if saga.ErrNotFound != stream.ErrNotFound || saga.ErrConcurrency != stream.ErrConcurrency || saga.ErrInvalidID != stream.ErrInvalidID {
		t.Fatal("root sentinels are not the stream package's")
	}
}

// TestClientErrorsCarrySentinels checks the sentinels and kinds of the
// errors a client really returns, against a real server.
func TestClientErrorsCarrySentinels(t *testing.T) {
	srv := natstest.Start(t)
	cl, err := saga.NewClient(srv.Conn(), saga.ClientOptions{Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := stream.Open(srv.Conn(), stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}

	res, err := cl.Start(ctx, "greet", "ann", saga.StartOptions{ID: "s-1"})
	if err != nil || res.ID != "s-1" || res.Existing {
		t.Fatalf("first start: %+v, %v", res, err)
	}

	t.Run("second start of one id", func(t *testing.T) {
		_, err := cl.Start(ctx, "greet", "bob", saga.StartOptions{ID: "s-1"})
		if !errors.Is(err, saga.ErrAlreadyStarted) || !errors.Is(err, saga.KindValidation) {
			t.Fatalf("got %v, want ErrAlreadyStarted of kind Validation", err)
		}
		var e *saga.Error
		if !errors.As(err, &e) || e.Context["saga_id"] != "s-1" {
			t.Fatalf("context: %#v", e)
		}
		if wrapped := fmt.Errorf("handler: %w", err); !errors.Is(wrapped, saga.ErrAlreadyStarted) {
			t.Fatal("ErrAlreadyStarted lost by wrapping")
		}
		res, err := cl.Start(ctx, "greet", "bob", saga.StartOptions{ID: "s-1", IfExists: saga.IfExistsUseExisting})
		if err != nil || res != (saga.StartResult{ID: "s-1", Existing: true}) {
			t.Fatalf("start with IfExistsUseExisting: %+v, %v", res, err)
		}
	})

	t.Run("unknown saga", func(t *testing.T) {
		_, err := cl.Describe(ctx, "nobody")
		if !errors.Is(err, saga.ErrNotFound) || !errors.Is(err, saga.KindValidation) {
			t.Fatalf("describe: got %v, want ErrNotFound of kind Validation", err)
		}
		if _, err := cl.History(ctx, "nobody"); !errors.Is(err, saga.ErrNotFound) {
			t.Fatalf("history: got %v", err)
		}
	})

	t.Run("invalid ids", func(t *testing.T) {
		if _, err := cl.Start(ctx, "greet", nil, saga.StartOptions{ID: "a.b"}); !errors.Is(err, saga.ErrInvalidID) || !errors.Is(err, saga.KindValidation) {
			t.Fatalf("start with id a.b: %v", err)
		}
		if _, err := cl.Start(ctx, "a b", nil, saga.StartOptions{}); !errors.Is(err, saga.ErrInvalidID) {
			t.Fatalf("start of type \"a b\": %v", err)
		}
		if _, err := cl.Describe(ctx, ">"); !errors.Is(err, saga.ErrInvalidID) {
			t.Fatalf("describe >: %v", err)
		}
	})

	t.Run("wait gives up with a Timeout", func(t *testing.T) {
		// No node runs, so the saga stays running until the deadline.
		wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer wcancel()
		_, err := cl.Wait(wctx, "s-1")
		if !errors.Is(err, saga.KindTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want Timeout wrapping DeadlineExceeded", err)
		}
	})

	t.Run("unknown workflow type", func(t *testing.T) {
		reg := saga.NewRegistry()
		reg.MustRegister(saga.NewWorkflow("greet", 1, func(_ saga.Context, name string) (string, error) { return "hi " + name, nil }))
		n, err := worker.New(srv.Conn(), reg, worker.Options{Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = n.Stop(ctx) }() // never started: releases its resources

		_, err = n.StartJSON(ctx, "shout", api.StartRequest{Input: json.RawMessage(`"ann"`)})
		if !errors.Is(err, saga.ErrUnknownWorkflowType) || !errors.Is(err, saga.KindValidation) {
			t.Fatalf("got %v, want ErrUnknownWorkflowType", err)
		}
		var e *saga.Error
		if !errors.As(err, &e) || e.Context["registered"] != "greet" {
			t.Fatalf("context %#v", e)
		}
		_, err = n.StartJSON(ctx, "greet", api.StartRequest{Input: json.RawMessage(`{"name":"ann"}`)})
		if !errors.Is(err, saga.KindValidation) || !errors.Is(err, stream.ErrCodec) {
			t.Fatalf("input not fitting: got %v", err)
		}
	})
}
