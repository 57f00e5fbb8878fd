package saga_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
)

type orderIn struct {
	OrderID string   `json:"order_id"`
	Qty     int      `json:"qty"`
	Tags    []string `json:"tags,omitempty"`
}

type orderOut struct {
	Total int `json:"total"`
}

func noopWorkflow(name string) *saga.Workflow[orderIn, orderOut] {
	return saga.NewWorkflow(name, 1, func(saga.Context, orderIn) (orderOut, error) { return orderOut{}, nil })
}

func noopActivity(name string) *saga.Activity[orderIn, orderOut] {
	return saga.NewActivity(name, func(context.Context, orderIn) (orderOut, error) { return orderOut{}, nil })
}

func wantKind(t *testing.T, err error, kind saga.ErrorKind, what string) {
	t.Helper()
	var e *saga.Error
	if !errors.As(err, &e) || !errors.Is(err, kind) {
		t.Fatalf("%s: got %v (%T), want an *Error of kind %s", what, err, err, kind)
	}
}

func TestRegisterRejectsDuplicateNames(t *testing.T) {
	reg := saga.NewRegistry()
	if err := reg.Register(noopWorkflow("order"), noopActivity("charge")); err != nil {
		t.Fatal(err)
	}

	err := reg.Register(noopWorkflow("order"))
	wantKind(t, err, saga.KindConfiguration, "second workflow named order")
	if !strings.Contains(err.Error(), "order") {
		t.Errorf("error %q does not name the workflow", err)
	}

	err = reg.Register(saga.NewActivity("charge", func(context.Context, int) (int, error) { return 0, nil }))
	wantKind(t, err, saga.KindConfiguration, "second activity named charge")
	if !strings.Contains(err.Error(), "charge") {
		t.Errorf("error %q does not name the activity", err)
	}

	// The first definitions stay registered.
	if w, ok := reg.Workflow("order"); !ok || w.Name != "order" || w.Version != 1 {
		t.Fatalf("workflow order: %+v, %v", w, ok)
	}
	if got := reg.ActivityNames(); !slices.Equal(got, []string{"charge"}) {
		t.Fatalf("activities %v", got)
	}

	defer func() {
		r := recover()
		err, ok := r.(error)
		if !ok || !errors.Is(err, saga.KindConfiguration) {
			t.Fatalf("MustRegister of a duplicate panicked with %v, want a Configuration error", r)
		}
	}()
	reg.MustRegister(noopWorkflow("order"))
	t.Fatal("MustRegister of a duplicate did not panic")
}

func TestRegisterRejectsInvalidNames(t *testing.T) {
	for _, name := range []string{"", "a.b", "a b", "a*", ">", "ümlaut", strings.Repeat("x", stream.MaxIDLength+1)} {
		reg := saga.NewRegistry()
		for what, def := range map[string]saga.Definition{
			"workflow": noopWorkflow(name),
			"activity": noopActivity(name),
		} {
			err := reg.Register(def)
			wantKind(t, err, saga.KindValidation, fmt.Sprintf("%s %q", what, name))
			if !errors.Is(err, saga.ErrInvalidID) {
				t.Errorf("%s %q: %v does not match ErrInvalidID", what, name, err)
			}
		}
		if len(reg.WorkflowNames())+len(reg.ActivityNames()) != 0 {
			t.Errorf("%q: something was registered: %v %v", name, reg.WorkflowNames(), reg.ActivityNames())
		}
	}
	// The longest valid name is fine.
	long := strings.Repeat("x", stream.MaxIDLength)
	if err := saga.NewRegistry().Register(noopWorkflow(long), noopActivity(long)); err != nil {
		t.Fatalf("name of %d bytes: %v", len(long), err)
	}
}

func TestRegisterNeedsAnImplementation(t *testing.T) {
	reg := saga.NewRegistry()
	declared := saga.NewActivity[orderIn, orderOut]("charge", nil)
	err := reg.Register(declared)
	wantKind(t, err, saga.KindConfiguration, "activity without run function")
	if !strings.Contains(err.Error(), "charge") {
		t.Errorf("error %q does not name the activity", err)
	}

	impl := declared.Implement(func(_ context.Context, in orderIn) (orderOut, error) { return orderOut{Total: in.Qty}, nil })
	if impl == declared || impl.Name() != "charge" || declared.Name() != "charge" {
		t.Fatalf("Implement returned %p named %q for %p", impl, impl.Name(), declared)
	}
	if err := reg.Register(impl); err != nil {
		t.Fatalf("register implemented activity: %v", err)
	}
	// Implement copied: the declaration itself still has no implementation.
	err = saga.NewRegistry().Register(declared)
	wantKind(t, err, saga.KindConfiguration, "declared activity after Implement")

	// The registered one runs the implementation.
	a, ok := reg.Activity("charge")
	if !ok {
		t.Fatal("charge not registered")
	}
	out := runActivity[orderOut](t, a, orderIn{Qty: 7})
	if out.Total != 7 {
		t.Fatalf("output %+v", out)
	}

	wantKind(t, reg.Register(saga.NewWorkflow[int, int]("flow", 1, nil)), saga.KindConfiguration, "workflow without run function")
}

func TestNamesAreSorted(t *testing.T) {
	reg := saga.NewRegistry()
	if len(reg.WorkflowNames()) != 0 || len(reg.ActivityNames()) != 0 {
		t.Fatal("new registry is not empty")
	}
	reg.MustRegister(noopWorkflow("zeta"), noopActivity("ship"), noopWorkflow("alpha"), noopActivity("charge"),
		noopWorkflow("Beta"), noopActivity("reserve"), noopWorkflow("alpha-2"))
	if got, want := reg.WorkflowNames(), []string{"Beta", "alpha", "alpha-2", "zeta"}; !slices.Equal(got, want) {
		t.Errorf("WorkflowNames() = %v, want %v", got, want)
	}
	if got, want := reg.ActivityNames(), []string{"charge", "reserve", "ship"}; !slices.Equal(got, want) {
		t.Errorf("ActivityNames() = %v, want %v", got, want)
	}
	// A caller may change the returned slice without changing the registry.
	names := reg.WorkflowNames()
	names[0] = "changed"
	if reg.WorkflowNames()[0] != "Beta" {
		t.Error("WorkflowNames returned the registry's own storage")
	}
	if _, ok := reg.Workflow("charge"); ok {
		t.Error("an activity name found as a workflow")
	}
	if _, ok := reg.Activity("zeta"); ok {
		t.Error("a workflow name found as an activity")
	}
}

func TestRegistryIsSafeForConcurrentUse(t *testing.T) {
	reg := saga.NewRegistry()
	const n = 50
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range n {
		wg.Go(func() {
			if err := reg.Register(noopWorkflow(fmt.Sprintf("w%02d", i)), noopActivity(fmt.Sprintf("a%02d", i))); err != nil {
				failed.Add(1)
			}
			_ = reg.WorkflowNames()
			_, _ = reg.Activity("a00")
		})
	}
	wg.Wait()
	if failed.Load() != 0 || len(reg.WorkflowNames()) != n || len(reg.ActivityNames()) != n {
		t.Fatalf("%d failures, %d workflows, %d activities", failed.Load(), len(reg.WorkflowNames()), len(reg.ActivityNames()))
	}
}

func TestWorkflowInputFromJSON(t *testing.T) {
	reg := saga.NewRegistry()
	reg.MustRegister(saga.NewWorkflow("order", 3, func(saga.Context, orderIn) (orderOut, error) { return orderOut{}, nil }))
	w, ok := reg.Workflow("order")
	if !ok || w.Version != 3 || w.Func == nil || w.InputFromJSON == nil {
		t.Fatalf("registered workflow %+v, %v", w, ok)
	}

	t.Run("fitting object", func(t *testing.T) {
		p, err := w.InputFromJSON([]byte(`{"order_id":"o-1","qty":2,"tags":["gift"]}`))
		if err != nil {
			t.Fatal(err)
		}
		var got orderIn
		if err := stream.Unmarshal(p, &got); err != nil {
			t.Fatal(err)
		}
		want := orderIn{OrderID: "o-1", Qty: 2, Tags: []string{"gift"}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded %+v, want %+v", got, want)
		}
		// The JSON translation is the payload a typed start would record.
		typed, err := stream.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		var fromTyped orderIn
		if err := stream.Unmarshal(typed, &fromTyped); err != nil || !reflect.DeepEqual(fromTyped, got) {
			t.Fatalf("typed payload decodes to %+v, %v", fromTyped, err)
		}
	})

	for name, doc := range map[string]string{
		"string where int expected":    `{"order_id":"o-1","qty":"two"}`,
		"fraction where int expected":  `{"order_id":"o-1","qty":1.5}`,
		"number where string expected": `{"order_id":7}`,
		"scalar for an object":         `5`,
		"string for an object":         `"o-1"`,
		"malformed JSON":               `{"order_id":`,
		"not JSON":                     `order_id=o-1`,
		"two JSON values":              `{} {}`,
		"empty":                        ``,
	} {
		t.Run(name, func(t *testing.T) {
			p, err := w.InputFromJSON([]byte(doc))
			if err == nil {
				t.Fatalf("%s accepted as %v", doc, p)
			}
			if !errors.Is(err, stream.ErrCodec) {
				t.Fatalf("%s: %v does not match stream.ErrCodec", doc, err)
			}
		})
	}
}

// runActivity runs a registered activity on in, encoded as history
// encodes it, and decodes its output.
func runActivity[Out any](t *testing.T, a *saga.RegisteredActivity, in any) Out {
	t.Helper()
	input, err := stream.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Run(context.Background(), input)
	if err != nil {
		t.Fatalf("run %s: %v", a.Name, err)
	}
	var out Out
	if err := stream.Unmarshal(res, &out); err != nil {
		t.Fatalf("decode output of %s: %v", a.Name, err)
	}
	return out
}

func TestRegisteredActivityRun(t *testing.T) {
	errDeclined := saga.NewError(saga.KindValidation, "declined").WithContext("card", "visa")
	var calls atomic.Int32
	charge := saga.NewActivity("charge", func(ctx context.Context, in orderIn) (orderOut, error) {
		calls.Add(1)
		if info, ok := saga.GetActivityInfo(ctx); ok && info.Attempt > 1 {
			return orderOut{Total: -info.Attempt}, nil
		}
		switch in.OrderID {
		case "declined":
			return orderOut{}, errDeclined
		case "eof":
			return orderOut{}, io.EOF
		}
		return orderOut{Total: in.Qty * 10}, nil
	})
	unencodable := saga.NewActivity("callback", func(context.Context, int) (func(), error) { return func() {}, nil })
	reg := saga.NewRegistry()
	reg.MustRegister(charge, unencodable)
	a, ok := reg.Activity("charge")
	if !ok || a.Name != "charge" {
		t.Fatalf("registered activity %+v, %v", a, ok)
	}

	t.Run("decodes, runs and encodes", func(t *testing.T) {
		if out := runActivity[orderOut](t, a, orderIn{OrderID: "o-1", Qty: 3}); out.Total != 30 {
			t.Fatalf("output %+v", out)
		}
		// A payload translated from JSON runs as well.
		p, err := stream.PayloadFromJSON([]byte(`{"order_id":"o-2","qty":4}`))
		if err != nil {
			t.Fatal(err)
		}
		res, err := a.Run(context.Background(), p)
		var out orderOut
		if err != nil || stream.Unmarshal(res, &out) != nil || out.Total != 40 {
			t.Fatalf("from JSON: %+v, %v", out, err)
		}
	})

	t.Run("empty input is the zero value", func(t *testing.T) {
		res, err := a.Run(context.Background(), nil)
		var out orderOut
		if err != nil || stream.Unmarshal(res, &out) != nil || out.Total != 0 {
			t.Fatalf("%+v, %v", out, err)
		}
	})

	t.Run("the context reaches the activity", func(t *testing.T) {
		ctx := saga.WithActivityInfo(context.Background(), saga.ActivityInfo{SagaID: "s", ActivityType: "charge", ScheduledEventID: 1, Attempt: 2})
		input, _ := stream.Marshal(orderIn{Qty: 1})
		res, err := a.Run(ctx, input)
		var out orderOut
		if err != nil || stream.Unmarshal(res, &out) != nil || out.Total != -2 {
			t.Fatalf("%+v, %v", out, err)
		}
		if _, ok := saga.GetActivityInfo(context.Background()); ok {
			t.Fatal("activity info in a plain context")
		}
	})

	t.Run("errors pass through unchanged", func(t *testing.T) {
		for id, want := range map[string]error{"declined": errDeclined, "eof": io.EOF} {
			input, _ := stream.Marshal(orderIn{OrderID: id})
			res, err := a.Run(context.Background(), input)
			if err != want || res != nil {
				t.Errorf("%s: got %v, %v; want exactly %v", id, res, err, want)
			}
		}
		// A plain error is retryable: it is not marked.
		if f := saga.ToFailure(io.EOF, saga.KindActivityExecution); f.NonRetryable {
			t.Error("a plain error is recorded as non-retryable")
		}
	})

	t.Run("input that does not decode fails for good", func(t *testing.T) {
		before := calls.Load()
		for name, input := range map[string]stream.Payload{
			"wrong type":     mustMarshal(t, map[string]any{"qty": "three"}),
			"not msgpack":    stream.Payload{0xc1},
			"truncated":      stream.Payload{0x92, 0x01},
			"trailing bytes": stream.Payload{0x01, 0x02},
		} {
			res, err := a.Run(context.Background(), input)
			if res != nil {
				t.Errorf("%s: result %v", name, res)
			}
			var e *saga.Error
			if !errors.As(err, &e) || e.Retryable() || !errors.Is(err, saga.KindCodec) || !errors.Is(err, stream.ErrCodec) {
				t.Errorf("%s: got %#v, want a non-retryable Codec error", name, err)
				continue
			}
			if !strings.Contains(err.Error(), "charge") {
				t.Errorf("%s: %q does not name the activity", name, err)
			}
			if f := saga.ToFailure(err, saga.KindActivityExecution); !f.NonRetryable || f.Kind != string(saga.KindCodec) {
				t.Errorf("%s: recorded as %+v", name, f)
			}
		}
		if calls.Load() != before {
			t.Fatal("the activity ran on input that does not decode")
		}
	})

	t.Run("output that does not encode fails for good", func(t *testing.T) {
		cb, _ := reg.Activity("callback")
		res, err := cb.Run(context.Background(), mustMarshal(t, 1))
		var e *saga.Error
		if res != nil || !errors.As(err, &e) || e.Retryable() || e.Kind != saga.KindCodec {
			t.Fatalf("got %v, %#v", res, err)
		}
	})
}

func mustMarshal(t *testing.T, v any) stream.Payload {
	t.Helper()
	b, err := stream.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
