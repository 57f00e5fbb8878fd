package saga

import (
	"github.com/jetsaga/saga/stream"
)

// SignalChannel receives the signals of one name sent to the saga: by a
// publish to <prefix>.signal.<saga id>.<name>, Client.Signal, the API or
// "saga-node signal". Each signal is recorded in the saga's history
// (SignalReceived) and waits there, in order, until the workflow receives
// it: a signal sent before the workflow asks for it is not lost.
type SignalChannel[T any] struct {
	env  Context
	name string
	err  error // the name is not a subject token: no signal can reach it
}

// GetSignalChannel returns the channel of the named signals, whose values
// decode into T. A name that no subject can carry (see stream.ValidateID)
// makes every receive fail with an error of kind Validation.
func GetSignalChannel[T any](ctx Context, name string) *SignalChannel[T] {
	c := &SignalChannel[T]{env: ctx, name: name}
	if err := stream.ValidateID("signal name", name); err != nil {
		c.err = &Error{Kind: KindValidation, Message: "signal channel", Cause: err}
	}
	return c
}

// Name returns the signal name.
func (c *SignalChannel[T]) Name() string { return c.name }

// Ready reports whether a signal waits to be received: a channel is an
// Awaitable.
func (c *SignalChannel[T]) Ready() bool { return c.err != nil || c.env.env.SignalPending(c.name) }

// Receive waits for the next signal and returns its value. It returns an
// error matching ErrCanceled when ctx is canceled first, and one of kind
// Codec when the value does not decode into T (the signal is then
// consumed).
func (c *SignalChannel[T]) Receive(ctx Context) (T, error) {
	var out T
	if c.err != nil {
		return out, c.err
	}
	v, canceled := ctx.env.ReceiveSignal(ctx.scope, c.name)
	if canceled {
		return out, canceledError("signal " + c.name)
	}
	return c.decode(v)
}

// ReceiveAsync takes the next signal if one waits, without blocking.
func (c *SignalChannel[T]) ReceiveAsync() (value T, ok bool, err error) {
	if c.err != nil {
		return value, true, c.err
	}
	v, ok := c.env.env.TakeSignal(c.name)
	if !ok {
		return value, false, nil
	}
	value, err = c.decode(v)
	return value, true, err
}

func (c *SignalChannel[T]) decode(v stream.Payload) (T, error) {
	var out T
	if len(v) == 0 {
		return out, nil
	}
	if err := decodeValue(c.env.env.Codec(), v, &out); err != nil {
		return out, Errorf(KindCodec, "signal %s: decode into %T: %w", c.name, out, err)
	}
	return out, nil
}

// SelectCase is one case of Select.
type SelectCase struct {
	ready func() bool
	run   func()
}

// OnReady is a Select case that is chosen when a is ready (a future or a
// timer that resolved, a context that is done); fn then runs.
func OnReady(a Awaitable, fn func()) SelectCase {
	return SelectCase{ready: a.Ready, run: fn}
}

// OnSignal is a Select case chosen when a signal waits on c: it is
// received, and fn gets its value (or the error of one that does not
// decode).
func (c *SignalChannel[T]) OnSignal(fn func(T, error)) SelectCase {
	return SelectCase{ready: c.Ready, run: func() {
		v, _, err := c.ReceiveAsync()
		fn(v, err)
	}}
}

// Select waits until one of the cases is ready and runs it: the first
// ready one in the order given, the same on every replay. It returns an
// error matching ErrCanceled, running no case, when ctx is canceled
// first.
//
//	timeout := saga.NewTimer(ctx, time.Hour)
//	err := saga.Select(ctx,
//		approvals.OnSignal(func(a Approval, err error) { ... }),
//		saga.OnReady(timeout, func() { ... }),
//	)
func Select(ctx Context, cases ...SelectCase) error {
	var chosen *SelectCase
	ctx.Await(func() bool {
		if ctx.scope.Canceled() {
			return true
		}
		for i := range cases {
			if cases[i].ready() {
				chosen = &cases[i]
				return true
			}
		}
		return false
	})
	if chosen == nil {
		return canceledError("select")
	}
	chosen.run()
	return nil
}
