package saga

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// Workflow is a workflow definition: the manual's DurableWorkflow with
// TYPE_ID, VERSION and run(ctx, input).
type Workflow[In, Out any] struct {
	name    string
	version int
	run     func(Context, In) (Out, error)
	opts    workflowOptions
}

// NewWorkflow defines a workflow. name is its type id (letters, digits, '-'
// and '_'); version is recorded in every saga started from it and is
// bumped when the workflow's logic changes.
func NewWorkflow[In, Out any](name string, version int, run func(Context, In) (Out, error), opts ...WorkflowOption) *Workflow[In, Out] {
	w := &Workflow[In, Out]{name: name, version: version, run: run}
	for _, opt := range opts {
		opt(&w.opts)
	}
	return w
}

// Name returns the workflow type id.
func (w *Workflow[In, Out]) Name() string { return w.name }

// Version returns the workflow version.
func (w *Workflow[In, Out]) Version() int { return w.version }

func (w *Workflow[In, Out]) register(r *Registry) error {
	if err := stream.ValidateID("workflow type", w.name); err != nil {
		return wrapStreamError("register workflow", err)
	}
	if w.run == nil {
		return NewError(KindConfiguration, "workflow "+w.name+" has no run function")
	}
	return r.addWorkflow(&RegisteredWorkflow{
		Name:    w.name,
		Version: w.version,
		Func:    w.erased,
		InputFromJSON: func(doc []byte) (stream.Payload, error) {
			return typedPayloadFromJSON[In](doc)
		},
		CheckInput: func(p stream.Payload) error {
			var in In
			if len(p) == 0 {
				return nil
			}
			if err := stream.Unmarshal(p, &in); err != nil {
				return fmt.Errorf("input does not fit %T: %w", in, err)
			}
			return nil
		},
	})
}

// erased runs the typed function on encoded input and output.
func (w *Workflow[In, Out]) erased(env *replay.Env, input stream.Payload) (stream.Payload, *stream.Failure) {
	env.SetCompensationOptions(w.opts.compensation.replay())
	var in In
	if len(input) > 0 {
		if err := decodeValue(env.Codec(), input, &in); err != nil {
			return nil, ToFailure(Errorf(KindCodec, "workflow %s: decode input: %w", w.name, err), KindCodec)
		}
	}
	out, err := w.run(Context{env: env, scope: env.RootScope()}, in)
	var next *continueAsNewError
	if errors.As(err, &next) {
		// The next run's input must decode into the input type: checked
		// now, as the run ends, rather than when the next run starts.
		var check In
		if err := decodeValue(env.Codec(), next.input, &check); err != nil {
			return nil, ToFailure(Errorf(KindValidation, "workflow %s: continue as new: the input does not fit %T: %w", w.name, check, err), KindValidation)
		}
		env.ContinueAsNew(next.input)
		return nil, nil
	}
	if err != nil {
		return nil, ToFailure(err, KindWorkflowExecution).Bounded()
	}
	b, err := encodeValue(env.Codec(), out)
	if err != nil {
		return nil, ToFailure(Errorf(KindCodec, "workflow %s: encode output: %w", w.name, err), KindCodec)
	}
	if err := env.CheckPayload("workflow output", b); err != nil {
		return nil, ToFailure(&Error{Kind: KindValidation, Message: "workflow " + w.name, Cause: err}, KindValidation)
	}
	return b, nil
}

// typedPayloadFromJSON decodes a JSON document into T, refusing unknown
// fields, and encodes the value as the payload: a bad input is refused at
// start, with encoding/json's account of what does not fit, rather than
// failing the saga later.
func typedPayloadFromJSON[T any](doc []byte) (stream.Payload, error) {
	var v T
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: input does not fit %T: %v", stream.ErrCodec, v, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: input holds more than one JSON value", stream.ErrCodec)
	}
	return stream.Marshal(v)
}

// Future is the result of an activity, ready once history holds it.
type Future[T any] struct {
	f        *replay.Future
	err      error // set when the call failed before scheduling
	activity string
}

var _ Awaitable = (*Future[int])(nil)

// Ready reports whether Get would return without blocking (in a context
// that is not canceled).
func (f *Future[T]) Ready() bool { return f.err != nil || f.f.Ready() }

// Get waits for the activity's result. A failed activity gives an *Error
// of kind ActivityExecution (or Timeout) whose cause is the activity's own
// error as it was recorded. When ctx, or the context the activity was
// started in, is canceled before the result arrives, Get returns at once
// with an *Error of kind Cancelled that matches ErrCanceled.
func (f *Future[T]) Get(ctx Context) (T, error) {
	var out T
	if f.err != nil {
		return out, f.err
	}
	value, failure, canceled := f.f.Get(ctx.scope)
	if canceled {
		return out, canceledError("activity " + f.activity)
	}
	if failure != nil {
		return out, FromFailure(failure)
	}
	if len(value) > 0 {
		if err := decodeValue(ctx.env.Codec(), value, &out); err != nil {
			return out, Errorf(KindCodec, "activity %s: decode result into %T: %w", f.activity, out, err)
		}
	}
	return out, nil
}

// ExecuteActivity schedules an activity and returns the future of its
// result. It does not block: call Get on the future, or schedule several
// activities first to run them in parallel. In a canceled ctx it
// schedules nothing and the future fails at once with an error matching
// ErrCanceled.
//
// Canceling ctx later makes the future report the cancellation to its
// waiters; the activity itself still runs to its end.
func ExecuteActivity[In, Out any](ctx Context, act *Activity[In, Out], in In, opts ...ActivityOption) *Future[Out] {
	if err := stream.ValidateID("activity type", act.name); err != nil {
		// Checked here, deterministically, so that no task for it is ever
		// scheduled.
		return &Future[Out]{err: &Error{Kind: KindValidation, Message: "execute activity", Cause: err}, activity: act.name}
	}
	o := act.options
	for _, opt := range opts {
		opt(&o)
	}
	o = resolveActivityOptions(o, ctx.env.ActivityDefaults())
	input, err := encodeValue(ctx.env.Codec(), in)
	if err != nil {
		return &Future[Out]{err: Errorf(KindCodec, "activity %s: encode input: %w", act.name, err), activity: act.name}
	}
	if err := ctx.env.CheckPayload("input of activity "+act.name, input); err != nil {
		return &Future[Out]{err: &Error{Kind: KindValidation, Message: "execute activity", Cause: err}, activity: act.name}
	}
	return &Future[Out]{f: ctx.env.ScheduleActivity(ctx.scope, act.name, input, o), activity: act.name}
}

// SideEffect runs fn once, records its result in history and returns the
// recorded result on every replay. Use it for random ids and other
// non-deterministic values; fn must not have effects outside the process.
func SideEffect[T any](ctx Context, fn func() (T, error)) (T, error) {
	value, failure := ctx.env.SideEffect(func() (stream.Payload, *stream.Failure) {
		v, err := fn()
		if err != nil {
			return nil, ToFailure(err, KindWorkflowExecution).Bounded()
		}
		b, err := encodeValue(ctx.env.Codec(), v)
		if err != nil {
			return nil, ToFailure(Errorf(KindCodec, "side effect: encode %T: %w", v, err), KindCodec)
		}
		if err := ctx.env.CheckPayload("side effect result", b); err != nil {
			return nil, ToFailure(&Error{Kind: KindValidation, Message: "side effect", Cause: err}, KindValidation)
		}
		return b, nil
	})
	var out T
	if failure != nil {
		return out, FromFailure(failure)
	}
	if err := decodeValue(ctx.env.Codec(), value, &out); err != nil {
		return out, Errorf(KindCodec, "side effect: decode into %T: %w", out, err)
	}
	return out, nil
}
