package saga_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/embeddednats"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/worker"
)

// engine is what the runnable examples need: an embedded nats-server with
// JetStream, in a temporary directory, and one node running the examples'
// definitions. A program would run saga-node or embed the same pieces.
type engine struct {
	dir  string
	srv  *embeddednats.Server
	nc   *nats.Conn
	node *worker.Node
}

// startEngine starts a server and a node registering defs.
func startEngine(defs ...saga.Definition) (*engine, error) {
	reg := saga.NewRegistry()
	if err := reg.Register(defs...); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "saga-example-")
	if err != nil {
		return nil, err
	}
	e := &engine{dir: dir}
	// Listen "" keeps the server in-process: no port is opened.
	if e.srv, err = embeddednats.Start(embeddednats.Options{Dir: dir}); err != nil {
		e.Stop()
		return nil, err
	}
	if e.nc, err = e.srv.Connect(); err != nil {
		e.Stop()
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	if e.node, err = worker.New(e.nc, reg, worker.Options{Logger: quiet, DisableAPI: true}); err != nil {
		e.Stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.node.Start(ctx); err != nil {
		e.Stop()
		return nil, err
	}
	return e, nil
}

// Client returns a client of the engine.
func (e *engine) Client() *saga.Client { return e.node.Client() }

// Stop stops the node, the connection and the server, and removes the
// server's files.
func (e *engine) Stop() {
	if e.node != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_ = e.node.Stop(ctx)
		cancel()
	}
	if e.nc != nil {
		e.nc.Close()
	}
	if e.srv != nil {
		e.srv.Shutdown()
	}
	_ = os.RemoveAll(e.dir)
}

// The examples' order saga: reserve stock, charge the card, and release
// the stock again when the charge fails.

type Order struct {
	ID     string `json:"id"`
	SKU    string `json:"sku"`
	Qty    int    `json:"qty"`
	Amount int    `json:"amount"`
}

type Receipt struct {
	OrderID       string `json:"order_id"`
	ReservationID string `json:"reservation_id"`
	ChargeID      string `json:"charge_id"`
}

var (
	Reserve = saga.NewActivity("reserve", func(_ context.Context, o Order) (string, error) {
		return fmt.Sprintf("res-%s-%dx%s", o.ID, o.Qty, o.SKU), nil
	})
	Charge = saga.NewActivity("charge", func(_ context.Context, o Order) (string, error) {
		if o.Amount > 100 {
			// Retrying cannot help: fail at once.
			return "", saga.Permanent(saga.NewError(saga.KindValidation, "card declined").
				WithContext("amount", fmt.Sprint(o.Amount)))
		}
		return "chg-" + o.ID, nil
	})
	Release = saga.NewActivity("release", func(_ context.Context, reservationID string) (bool, error) {
		return true, nil
	})

	OrderSaga = saga.NewWorkflow("order", 1, func(ctx saga.Context, o Order) (Receipt, error) {
		res, err := saga.ExecuteActivity(ctx, Reserve, o).Get(ctx)
		if err != nil {
			return Receipt{}, err
		}
		chg, err := saga.ExecuteActivity(ctx, Charge, o).Get(ctx)
		if err != nil {
			// Compensate the step that succeeded, then fail the saga.
			if _, cerr := saga.ExecuteActivity(ctx, Release, res).Get(ctx); cerr != nil {
				return Receipt{}, saga.Errorf(saga.KindCompensation, "release %s: %w", res, cerr)
			}
			return Receipt{}, saga.Errorf(saga.KindWorkflowExecution, "order %s rolled back: %w", o.ID, err)
		}
		return Receipt{OrderID: o.ID, ReservationID: res, ChargeID: chg}, nil
	})
)

// A saga runs end to end on a node: the client starts it and waits for its
// result, then reads what history recorded.
func ExampleStartWorkflow() {
	eng, err := startEngine(OrderSaga, Reserve, Charge, Release)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := eng.Client()

	run, err := saga.StartWorkflow(ctx, client, OrderSaga, Order{ID: "o-1", SKU: "book", Qty: 2, Amount: 40}, saga.StartOptions{ID: "order-o-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	receipt, err := run.Get(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%+v\n", receipt)

	d, err := client.Describe(ctx, run.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(d.ID, d.Type, d.Version, d.Status, d.Events)

	events, err := client.History(ctx, run.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.ActivityTaskScheduledAttrs); ok {
			fmt.Println(e.ID, e.Type, a.ActivityType)
		} else {
			fmt.Println(e.ID, e.Type)
		}
	}

	// Starting the same id again is refused, or returns the existing saga.
	_, err = saga.StartWorkflow(ctx, client, OrderSaga, Order{ID: "o-1"}, saga.StartOptions{ID: "order-o-1"})
	fmt.Println(errors.Is(err, saga.ErrAlreadyStarted))
	again, err := saga.StartWorkflow(ctx, client, OrderSaga, Order{ID: "o-1"}, saga.StartOptions{ID: "order-o-1", IfExists: saga.IfExistsUseExisting})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(again.ID, again.Existing)
	// Output:
	// {OrderID:o-1 ReservationID:res-o-1-2xbook ChargeID:chg-o-1}
	// order-o-1 order 1 completed 8
	// 0 WorkflowExecutionStarted
	// 1 ActivityTaskScheduled reserve
	// 2 ActivityTaskStarted
	// 3 ActivityTaskCompleted
	// 4 ActivityTaskScheduled charge
	// 5 ActivityTaskStarted
	// 6 ActivityTaskCompleted
	// 7 WorkflowExecutionCompleted
	// true
	// order-o-1 true
}

// When a step fails for good, the workflow compensates the steps before it
// and fails; the error that reaches the caller keeps the kinds, messages
// and context of the whole chain.
func ExampleStartWorkflow_compensation() {
	eng, err := startEngine(OrderSaga, Reserve, Charge, Release)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := eng.Client()

	run, err := saga.StartWorkflow(ctx, client, OrderSaga, Order{ID: "o-2", SKU: "piano", Qty: 1, Amount: 5000}, saga.StartOptions{ID: "order-o-2"})
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = run.Get(ctx)
	fmt.Println(err)
	fmt.Println(errors.Is(err, saga.KindWorkflowExecution), errors.Is(err, saga.KindActivityExecution), errors.Is(err, saga.KindValidation))
	var e *saga.Error
	for cause := error(err); errors.As(cause, &e); cause = e.Cause {
		fmt.Println(e.Kind, e.Context)
	}

	d, err := client.Describe(ctx, run.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(d.Status, d.Error.Kind, d.Error.Cause.Kind, d.Error.Cause.Cause.Message)

	events, err := client.History(ctx, run.ID)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, ev := range events {
		if a, ok := ev.Attrs.(*stream.ActivityTaskScheduledAttrs); ok {
			fmt.Print(a.ActivityType, " ")
		}
	}
	fmt.Println()
	// Output:
	// order o-2 rolled back: activity charge failed after 1 attempt: card declined
	// true true true
	// WorkflowExecution map[]
	// ActivityExecution map[activity_type:charge attempts:1 scheduled_event_id:4]
	// Validation map[amount:5000]
	// failed WorkflowExecution ActivityExecution card declined
	// reserve charge release
}

// Activities scheduled before any Get run in parallel; the workflow then
// collects their results in the order it chooses, so that replay sees the
// same calls every time.
func ExampleExecuteActivity() {
	price := saga.NewActivity("price", func(_ context.Context, sku string) (int, error) {
		return map[string]int{"book": 12, "pen": 3, "lamp": 40}[sku], nil
	})
	total := saga.NewWorkflow("total", 1, func(ctx saga.Context, skus []string) (int, error) {
		futures := make([]*saga.Future[int], len(skus))
		for i, sku := range skus {
			futures[i] = saga.ExecuteActivity(ctx, price, sku, saga.WithStartToCloseTimeout(5*time.Second))
		}
		sum := 0
		for _, f := range futures {
			p, err := f.Get(ctx)
			if err != nil {
				return 0, err
			}
			sum += p
		}
		return sum, nil
	})

	eng, err := startEngine(total, price)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	run, err := saga.StartWorkflow(ctx, eng.Client(), total, []string{"book", "pen", "lamp"}, saga.StartOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	sum, err := run.Get(ctx)
	fmt.Println(sum, err)
	// Output:
	// 55 <nil>
}

// A failing activity is retried according to its retry policy; the
// activity sees which attempt it is in its ActivityInfo.
func ExampleWithRetryPolicy() {
	flaky := saga.NewActivity("flaky", func(ctx context.Context, _ struct{}) (string, error) {
		info, _ := saga.GetActivityInfo(ctx)
		if info.Attempt < 3 {
			return "", fmt.Errorf("attempt %d: service unavailable", info.Attempt)
		}
		return fmt.Sprintf("%s succeeded on attempt %d", info.ActivityType, info.Attempt), nil
	})
	wf := saga.NewWorkflow("retrying", 1, func(ctx saga.Context, _ struct{}) (string, error) {
		return saga.ExecuteActivity(ctx, flaky, struct{}{}, saga.WithRetryPolicy(saga.RetryPolicy{
			InitialInterval: 10 * time.Millisecond,
			MaximumAttempts: 5,
		})).Get(ctx)
	})

	eng, err := startEngine(wf, flaky)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	run, err := saga.StartWorkflow(ctx, eng.Client(), wf, struct{}{}, saga.StartOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, err := run.Get(ctx)
	fmt.Println(out, err)
	// Output:
	// flaky succeeded on attempt 3 <nil>
}

// A workflow is a function of a saga.Context and a typed input. This one
// needs no activity; SideEffect records a non-deterministic value once so
// that replays see the same one.
func ExampleNewWorkflow() {
	greet := saga.NewWorkflow("greet", 2, func(ctx saga.Context, name string) (string, error) {
		if name == "" {
			return "", saga.NewError(saga.KindValidation, "name is required")
		}
		n, err := saga.SideEffect(ctx, func() (int, error) { return len(name), nil })
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("hello %s (%d letters) from %s v%d", name, n, ctx.WorkflowType(), ctx.GetVersion("letters", saga.DefaultVersion, 1)), nil
	})
	fmt.Println(greet.Name(), greet.Version())

	eng, err := startEngine(greet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer eng.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, name := range []string{"ann", ""} {
		run, err := saga.StartWorkflow(ctx, eng.Client(), greet, name, saga.StartOptions{})
		if err != nil {
			fmt.Println(err)
			return
		}
		out, err := run.Get(ctx)
		fmt.Printf("%q %v %v\n", out, err, errors.Is(err, saga.KindValidation))
	}
	// Output:
	// greet 2
	// "hello ann (3 letters) from greet v1" <nil> false
	// "" name is required true
}

// WithCancel stops waiting for work that is no longer needed: the first
// quote to arrive wins, and canceling the other's context means nothing
// waits for it (the activity itself still runs to its end).
func ExampleWithCancel() {
	quoteA := saga.NewActivity[string, int]("quote-a", nil) // implemented by the suppliers' adapters
	quoteB := saga.NewActivity[string, int]("quote-b", nil)
	_ = saga.NewWorkflow("first-quote", 1, func(ctx saga.Context, sku string) (int, error) {
		quotes, cancel := saga.WithCancel(ctx)
		defer cancel()
		a := saga.ExecuteActivity(quotes, quoteA, sku)
		b := saga.ExecuteActivity(quotes, quoteB, sku)
		ctx.Await(func() bool { return a.Ready() || b.Ready() })
		first := a
		if !a.Ready() {
			first = b
		}
		cancel()
		return first.Get(ctx) // its result is in: the cancellation came after it
	})
}

// Compensation runs in a disconnected context, so that it still runs when
// the context of the steps it undoes was canceled.
func ExampleNewDisconnectedContext() {
	book := saga.NewActivity[string, string]("book-room", nil)
	unbook := saga.NewActivity[string, bool]("unbook-room", nil)
	pay := saga.NewActivity[string, string]("pay", nil)
	_ = saga.NewWorkflow("trip", 1, func(ctx saga.Context, trip string) (string, error) {
		booking, err := saga.ExecuteActivity(ctx, book, trip).Get(ctx)
		if err != nil {
			return "", err
		}
		receipt, err := saga.ExecuteActivity(ctx, pay, trip).Get(ctx)
		if err != nil { // failed, or ctx canceled while paying
			cleanup := saga.NewDisconnectedContext(ctx)
			if _, cerr := saga.ExecuteActivity(cleanup, unbook, booking).Get(cleanup); cerr != nil {
				return "", saga.Errorf(saga.KindCompensation, "unbook %s: %w", booking, cerr)
			}
			return "", err
		}
		return receipt, nil
	})
}

// Errors carry a kind, matched with errors.Is anywhere in a chain, and
// key/value context, read with errors.As.
func ExampleError() {
	err := fmt.Errorf("start order: %w",
		saga.NewError(saga.KindValidation, "amount must be positive").WithContext("order_id", "o-1"))

	fmt.Println(err)
	fmt.Println(errors.Is(err, saga.KindValidation), errors.Is(err, saga.KindTimeout))

	var e *saga.Error
	if errors.As(err, &e) {
		fmt.Println(e.Kind, e.Context["order_id"], e.Retryable())
	}
	b, _ := json.Marshal(e)
	fmt.Println(string(b))
	// Output:
	// start order: amount must be positive
	// true false
	// Validation o-1 true
	// {"kind":"Validation","message":"amount must be positive","context":{"order_id":"o-1"}}
}

// Errorf with %w makes the wrapped error the cause.
func ExampleErrorf() {
	err := saga.Errorf(saga.KindCodec, "decode order %s: %w", "o-1", io.ErrUnexpectedEOF)
	fmt.Printf("message %q, cause %q\n", err.Message, err.Cause)
	fmt.Println(err)
	fmt.Println(errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, saga.KindCodec))
	// Output:
	// message "decode order o-1", cause "unexpected EOF"
	// decode order o-1: unexpected EOF
	// true true
}

// Permanent stops the retries of an activity error. An *Error keeps its
// kind; any other error becomes an ActivityExecution error.
func ExamplePermanent() {
	for _, err := range []error{
		saga.Permanent(saga.NewError(saga.KindValidation, "card declined")),
		saga.Permanent(errors.New("no such sku")),
	} {
		var e *saga.Error
		errors.As(err, &e)
		fmt.Println(e.Kind, e.Retryable(), err)
	}
	// Output:
	// Validation false card declined
	// ActivityExecution false no such sku
}

// ToFailure gives an error the form history stores; FromFailure restores
// it as an *Error with the same kinds, messages, context and causes. This
// is how an activity's error reaches the workflow.
func ExampleToFailure() {
	err := &saga.Error{
		Kind:    saga.KindActivityExecution,
		Message: "charge failed",
		Cause:   saga.NewError(saga.KindValidation, "card declined").WithContext("card", "visa"),
	}
	f := saga.ToFailure(err, saga.KindUnknown)
	b, _ := json.Marshal(f)
	fmt.Println(string(b))

	restored := saga.FromFailure(f)
	fmt.Println(restored)
	fmt.Println(errors.Is(restored, saga.KindValidation))

	// A plain error takes the kind given.
	fmt.Println(saga.FromFailure(saga.ToFailure(errors.New("disk full"), saga.KindActivityExecution)).Kind)
	// Output:
	// {"kind":"ActivityExecution","message":"charge failed","cause":{"kind":"Validation","message":"card declined","context":{"card":"visa"}}}
	// charge failed: card declined
	// true
	// ActivityExecution
}

// A Registry holds what a node runs. An activity declared without a
// function (for workflows that call it) is implemented before it is
// registered.
func ExampleRegistry() {
	declared := saga.NewActivity[Order, string]("charge", nil)
	reg := saga.NewRegistry()
	fmt.Println(reg.Register(declared))

	reg.MustRegister(
		OrderSaga,
		declared.Implement(func(_ context.Context, o Order) (string, error) { return "chg-" + o.ID, nil }),
		Reserve,
		Release,
	)
	fmt.Println(reg.WorkflowNames(), reg.ActivityNames())
	fmt.Println(reg.Register(Reserve))
	fmt.Println(errors.Is(reg.Register(saga.NewWorkflow[int, int]("bad.name", 1, nil)), saga.ErrInvalidID))

	// Inputs given as JSON (API, CLI) are checked against the input type.
	w, _ := reg.Workflow("order")
	_, err := w.InputFromJSON([]byte(`{"id":"o-1","qty":2}`))
	fmt.Println(err)
	_, err = w.InputFromJSON([]byte(`{"id":"o-1","qty":"two"}`))
	fmt.Println(err != nil)
	// Output:
	// activity charge has no run function
	// [order] [charge release reserve]
	// activity reserve is registered twice
	// true
	// <nil>
	// true
}
