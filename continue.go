package saga

import (
	"errors"

	"github.com/jetsaga/saga/stream"
)

// ErrContinueAsNew is matched by the error ContinueAsNew returns.
var ErrContinueAsNew = errors.New("continue as new")

// ContinueAsNew ends the saga's current run and starts a new one, under
// the same saga id, whose workflow function gets input (which must decode
// into the workflow's input type). Return the error it gives from the
// workflow function:
//
//	if month < 12 {
//		return Result{}, saga.ContinueAsNew(ctx, State{Month: month + 1})
//	}
//
// A saga that loops for ever (a poller, a monthly charge) continues as new
// every so many iterations, so that its history stays short: a node that
// meets the saga anew reads and replays its latest run alone, and a run
// that grows past the fleet's history limit is blocked (see
// docs/replay.md). The new run starts with what the workflow code carries
// in input and nothing else: its local variables, timers and futures are
// gone. Signals the run received and did not take are passed on to the
// new one, in order; timers still open are canceled.
//
// The run must leave nothing behind that the new one could not finish:
// ContinueAsNew returned while an activity has no result yet, or while
// compensations are registered (neither run with Compensate nor
// discarded), fails the saga with an error of kind Validation that says
// so. A saga whose cancellation was requested ends canceled instead.
// Describe shows the run's number and the link to the run before.
func ContinueAsNew(ctx Context, input any) error {
	b, err := encodeValue(ctx.env.Codec(), input)
	if err != nil {
		return Errorf(KindCodec, "continue as new: encode input: %w", err)
	}
	if err := ctx.env.CheckPayload("continue-as-new input", b); err != nil {
		return &Error{Kind: KindValidation, Message: "continue as new", Cause: err}
	}
	return &continueAsNewError{input: b}
}

// continueAsNewError carries the next run's input from the workflow
// function to the engine.
type continueAsNewError struct {
	input stream.Payload
}

func (e *continueAsNewError) Error() string { return "continue as new" }

func (e *continueAsNewError) Is(target error) bool { return target == ErrContinueAsNew }
