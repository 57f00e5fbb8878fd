package saga

import (
	"fmt"
	"strings"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// CompensationOptions say how a workflow's compensations run.
type CompensationOptions struct {
	// Parallel schedules every registered compensation at once (still
	// recorded last registered first) instead of one after the other.
	Parallel bool
	// ContinueAfterFailure runs the remaining compensations after one
	// failed for good. By default compensation stops there: undoing an
	// earlier step may depend on the later one being undone.
	ContinueAfterFailure bool
}

// WorkflowOption adjusts a workflow definition.
type WorkflowOption func(*workflowOptions)

type workflowOptions struct {
	compensation CompensationOptions
}

// WithCompensationOptions sets how the workflow's compensations run, both
// the automatic ones and those of Compensate. The default is strictly
// LIFO, one at a time, stopping at the first that fails for good.
func WithCompensationOptions(o CompensationOptions) WorkflowOption {
	return func(w *workflowOptions) { w.compensation = o }
}

// AddCompensation registers act(in) as the undo of step, a step of the
// workflow that has just succeeded; in may use the step's result. The
// registration is recorded in the saga's history (a compensation marker),
// so that replay rebuilds the same stack.
//
// When the workflow returns an error, is canceled or runs past its run
// timeout, the registered compensations run, last registered first, each
// recorded as CompensationStepScheduled and then CompensationStepCompleted
// or CompensationStepFailed, and each retried under its own options. A
// workflow that completes discards them.
//
// A step that may have taken effect although it failed (its attempt timed
// out after the charge went through, say) should register its undo before
// it runs: compensations are activities, run at least once, and must be
// idempotent, including for a step that never happened.
func AddCompensation[In, Out any](ctx Context, step string, act *Activity[In, Out], in In, opts ...ActivityOption) error {
	if err := stream.ValidateID("compensation step", step); err != nil {
		return &Error{Kind: KindValidation, Message: "add compensation", Cause: err}
	}
	if err := stream.ValidateID("activity type", act.name); err != nil {
		return &Error{Kind: KindValidation, Message: "add compensation", Cause: err}
	}
	o := act.options
	for _, opt := range opts {
		opt(&o)
	}
	o = resolveActivityOptions(o, ctx.env.ActivityDefaults())
	input, err := encodeValue(ctx.env.Codec(), in)
	if err != nil {
		return Errorf(KindCodec, "compensation %s of step %s: encode input: %w", act.name, step, err)
	}
	if err := ctx.env.CheckPayload("input of compensation "+act.name, input); err != nil {
		return &Error{Kind: KindValidation, Message: "add compensation", Cause: err}
	}
	ctx.env.AddCompensation(stream.CompensationRegistration{Step: step, ActivityType: act.name, Input: input, Options: o})
	return nil
}

// Compensate runs the compensations registered so far, now, last
// registered first (or in parallel, see CompensationOptions), and waits
// for them; they run in a context no cancellation reaches. The stack is
// then empty: a workflow that catches an error and handles it can
// compensate and go on, or return. It returns nil when every compensation
// completed, or an *Error of kind Compensation naming the steps whose
// compensation failed, with the first failure as its cause.
func Compensate(ctx Context) error {
	if o := ctx.env.Compensate(); o.Status != stream.CompensationCompleted {
		return compensationError(o)
	}
	return nil
}

// DiscardCompensations drops the compensations registered so far: the
// workflow chose not to undo those steps. The saga's last event lists
// them as not run.
func DiscardCompensations(ctx Context) { ctx.env.DiscardCompensations() }

func compensationError(o *stream.CompensationOutcome) *Error {
	e := &Error{Kind: KindCompensation, Message: fmt.Sprintf("compensation %s", o.Status)}
	if len(o.FailedSteps) > 0 {
		e.Message = fmt.Sprintf("compensation of step %s failed", strings.Join(o.FailedSteps, ", "))
		e.Context = map[string]string{"failed_steps": strings.Join(o.FailedSteps, ",")}
	}
	if len(o.NotRun) > 0 {
		if e.Context == nil {
			e.Context = map[string]string{}
		}
		e.Context["not_run"] = strings.Join(o.NotRun, ",")
	}
	if o.Failure != nil {
		e.Cause = FromFailure(o.Failure)
	}
	return e
}

func (o CompensationOptions) replay() replay.CompensationOptions {
	return replay.CompensationOptions{Parallel: o.Parallel, ContinueAfterFailure: o.ContinueAfterFailure}
}
