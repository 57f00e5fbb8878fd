// Package approval is the worked example of a saga that waits for people:
// an expense approval. It reserves the amount in a budget, then waits for
// a decision, sent to the saga as a signal, for at most a timeout, on a
// durable timer. saga-node serves it in "saga-node run" and shows it in
// its demo.
//
//   - The signal "approve" ({"by": "alice", "comment": "..."}) pays the
//     expense and completes the saga, its output naming the approver.
//   - The signal "reject" (the same value) fails the saga with an error
//     naming who rejected it and why.
//   - No decision before the timeout fails the saga with an error saying
//     it timed out waiting for approval.
//
// A saga that fails (rejected, timed out, or canceled) releases the budget
// it reserved: the workflow registers release-budget as the undo of
// reserve-budget, and the engine runs it. The query "status" tells where the saga stands
// (Status) while it waits, without appending anything to its history.
//
// The input is
//
//	{"request_id": "r-1", "amount": 120.5, "requester": "bob", "timeout": "1h"}
//
// where timeout is a Go duration (default 24h), rounded up to whole
// seconds as every durable timer is.
package approval

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jetsaga/saga"
)

// WorkflowType is the workflow type id.
const WorkflowType = "approval"

// Activity type ids.
const (
	StepReserveBudget = "reserve-budget"
	StepPayExpense    = "pay-expense"
	// StepReleaseBudget is the undo of reserve-budget, registered as its
	// compensation.
	StepReleaseBudget = "release-budget"
)

// Signal and query names.
const (
	SignalApprove = "approve"
	SignalReject  = "reject"
	QueryStatus   = "status"
)

// Phases the status query reports, in the order a saga goes through them.
const (
	PhaseReserving = "reserving"
	PhaseWaiting   = "waiting for approval"
	PhaseApproved  = "approved"
	PhaseRejected  = "rejected"
	PhaseTimedOut  = "timed out"
)

// DefaultTimeout is how long a saga waits for a decision when its input
// names no timeout.
const DefaultTimeout = 24 * time.Hour

// TimeoutMessage starts the message of the error of a saga that waited
// for a decision in vain.
const TimeoutMessage = "timed out waiting for approval"

// Input starts an approval saga.
type Input struct {
	RequestID string  `json:"request_id"`
	Amount    float64 `json:"amount"`
	Requester string  `json:"requester,omitempty"`
	// Timeout bounds the wait for a decision, as a Go duration ("1h",
	// "30m"); empty: DefaultTimeout.
	Timeout string `json:"timeout,omitempty"`
}

// Decision is the value of the approve and reject signals.
type Decision struct {
	By      string `json:"by"`
	Comment string `json:"comment,omitempty"`
}

// Output is what an approved saga returns.
type Output struct {
	RequestID     string  `json:"request_id"`
	Amount        float64 `json:"amount"`
	ApprovedBy    string  `json:"approved_by"`
	Comment       string  `json:"comment,omitempty"`
	ReservationID string  `json:"reservation_id"`
	PaymentID     string  `json:"payment_id"`
	// Message says in words who approved the expense.
	Message string `json:"message"`
}

// Status is the result of the status query.
type Status struct {
	RequestID string  `json:"request_id"`
	Amount    float64 `json:"amount"`
	Phase     string  `json:"phase"`
	// Deadline is when the wait for a decision ends; set once the saga
	// waits.
	Deadline *time.Time `json:"deadline,omitempty"`
	// DecidedBy names who approved or rejected the expense.
	DecidedBy string `json:"decided_by,omitempty"`
}

// ReserveInput asks to reserve an expense's amount in the budget.
type ReserveInput struct {
	RequestID string  `json:"request_id"`
	Amount    float64 `json:"amount"`
	Requester string  `json:"requester,omitempty"`
}

// Reservation is a reserve-budget result.
type Reservation struct {
	ReservationID string `json:"reservation_id"`
}

// ReleaseInput asks to release the reservation of an expense, if there
// is one: the undo of reserve-budget. A reservation is known by its
// request id, so the undo can be registered before the reservation runs.
type ReleaseInput struct {
	RequestID string  `json:"request_id"`
	Amount    float64 `json:"amount"`
}

// Release is a release-budget result.
type Release struct {
	Released bool `json:"released"`
}

// PayInput asks to pay an approved expense.
type PayInput struct {
	RequestID     string  `json:"request_id"`
	ReservationID string  `json:"reservation_id"`
	Amount        float64 `json:"amount"`
	Requester     string  `json:"requester,omitempty"`
	ApprovedBy    string  `json:"approved_by"`
}

// Payment is a pay-expense result.
type Payment struct {
	PaymentID string `json:"payment_id"`
}

// The activities as the workflow calls them; Service implements them.
var (
	ReserveBudget = saga.NewActivity[ReserveInput, Reservation](StepReserveBudget, nil)
	ReleaseBudget = saga.NewActivity[ReleaseInput, Release](StepReleaseBudget, nil)
	PayExpense    = saga.NewActivity[PayInput, Payment](StepPayExpense, nil)
)

// Workflow is the approval saga, version 1.
var Workflow = saga.NewWorkflow(WorkflowType, 1, run)

// timeout returns the wait for a decision the input asks for, rounded up
// to whole seconds as the durable timer will be, or a Validation error.
func (in Input) timeout() (time.Duration, error) {
	if in.Timeout == "" {
		return DefaultTimeout, nil
	}
	d, err := time.ParseDuration(in.Timeout)
	if err != nil || d <= 0 {
		return 0, saga.NewError(saga.KindValidation, fmt.Sprintf(`timeout must be a positive Go duration such as "1h" or "30m", got %q`, in.Timeout))
	}
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	return d, nil
}

func (in Input) validate() (time.Duration, error) {
	switch {
	case in.RequestID == "":
		return 0, saga.NewError(saga.KindValidation, "request_id is required")
	case !(in.Amount > 0): // also refuses NaN
		return 0, saga.NewError(saga.KindValidation, fmt.Sprintf("amount must be positive, got %v", in.Amount))
	}
	return in.timeout()
}

func run(ctx saga.Context, in Input) (Output, error) {
	st := Status{RequestID: in.RequestID, Amount: in.Amount, Phase: PhaseReserving}
	// Registered first, so that the saga answers from its first step on.
	// The handler only reads st: a query may not change the saga.
	if err := saga.SetQueryHandler(ctx, QueryStatus, func(struct{}) (Status, error) { return st, nil }); err != nil {
		return Output{}, err
	}
	timeout, err := in.validate()
	if err != nil {
		return Output{}, err
	}

	// The undo is registered before the reservation runs: a cancellation
	// while it runs stops the wait for it, not the reservation, which may
	// still take effect. Releasing a reservation that never happened does
	// nothing. From here on, any error the workflow returns (a rejection,
	// the timeout, a failed payment, a cancellation) makes the engine
	// release the budget.
	release := ReleaseInput{RequestID: in.RequestID, Amount: in.Amount}
	if err := saga.AddCompensation(ctx, StepReserveBudget, ReleaseBudget, release); err != nil {
		return Output{}, err
	}
	res, err := saga.ExecuteActivity(ctx, ReserveBudget, ReserveInput{RequestID: in.RequestID, Amount: in.Amount, Requester: in.Requester}).Get(ctx)
	if err != nil {
		return Output{}, err
	}

	decision, approved, err := awaitDecision(ctx, &st, timeout)
	if err != nil {
		return Output{}, err
	}
	if decision == nil {
		st.Phase = PhaseTimedOut
		return Output{}, saga.NewError(saga.KindTimeout, fmt.Sprintf("%s after %s (request %s)", TimeoutMessage, timeout, in.RequestID)).
			WithContext("request_id", in.RequestID)
	}
	by := decision.By
	if by == "" {
		by = "an unnamed approver"
	}
	st.DecidedBy = decision.By
	if !approved {
		st.Phase = PhaseRejected
		msg := fmt.Sprintf("request %s rejected by %s", in.RequestID, by)
		if decision.Comment != "" {
			msg += ": " + decision.Comment
		}
		return Output{}, saga.NewError(saga.KindWorkflowExecution, msg).
			WithContext("request_id", in.RequestID).WithContext("rejected_by", decision.By)
	}
	st.Phase = PhaseApproved

	pay, err := saga.ExecuteActivity(ctx, PayExpense, PayInput{
		RequestID: in.RequestID, ReservationID: res.ReservationID, Amount: in.Amount, Requester: in.Requester, ApprovedBy: decision.By,
	}).Get(ctx)
	if err != nil {
		return Output{}, err
	}
	ctx.Logger().Info("expense paid", "request_id", in.RequestID, "approved_by", by, "payment_id", pay.PaymentID)
	out := Output{
		RequestID: in.RequestID, Amount: in.Amount, ApprovedBy: decision.By, Comment: decision.Comment,
		ReservationID: res.ReservationID, PaymentID: pay.PaymentID,
		Message: fmt.Sprintf("request %s approved by %s", in.RequestID, by),
	}
	if decision.Comment != "" {
		out.Message += ": " + decision.Comment
	}
	return out, nil
}

// awaitDecision waits for the first approve or reject signal, or for the
// timeout: it returns the decision and whether it approves, or a nil
// decision when the timeout passed first. The error is the cancellation
// of the saga.
func awaitDecision(ctx saga.Context, st *Status, timeout time.Duration) (*Decision, bool, error) {
	// The timer lives in a context of its own, so that a decision can
	// cancel it: the durable timer is then deleted rather than left to
	// fire into a saga that moved on.
	waitCtx, stopTimer := saga.WithCancel(ctx)
	defer stopTimer()
	deadline := ctx.Now().Add(timeout)
	timer := saga.NewTimer(waitCtx, timeout)
	st.Phase, st.Deadline = PhaseWaiting, &deadline

	approvals := saga.GetSignalChannel[Decision](ctx, SignalApprove)
	rejections := saga.GetSignalChannel[Decision](ctx, SignalReject)
	var (
		decision *Decision
		approved bool
		expired  bool
	)
	// A signal whose value does not decode decides nothing: it is logged
	// and the wait goes on, so that one malformed message cannot settle
	// an expense.
	take := func(name string, ok bool) func(Decision, error) {
		return func(d Decision, err error) {
			if err != nil {
				ctx.Logger().Warn("signal ignored: its value is not a decision", "signal", name, "err", err)
				return
			}
			decision, approved = &d, ok
		}
	}
	for decision == nil && !expired {
		// Cases are tried in order: a decision that arrived together with
		// the timeout wins over it.
		err := saga.Select(ctx,
			approvals.OnSignal(take(SignalApprove, true)),
			rejections.OnSignal(take(SignalReject, false)),
			saga.OnReady(timer, func() { expired = true }),
		)
		if err != nil {
			return nil, false, err
		}
	}
	return decision, approved, nil
}

// Service simulates the budget and payment systems. Its operations are
// idempotent per request, as activities must be, and it counts every
// call so that tests can see what ran how often.
type Service struct {
	mu    sync.Mutex
	calls map[string]int
	// Hook, when set, runs at the start of every activity call; a test uses
	// it to hold an activity or to fail an attempt.
	Hook func(ctx context.Context, step, requestID string) error
}

// NewService returns a back office with no history.
func NewService() *Service { return &Service{calls: map[string]int{}} }

// Calls reports how many times a step's activity ran.
func (s *Service) Calls(step string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[step]
}

// Definitions returns the workflow and the activities implemented by s,
// ready to register.
func (s *Service) Definitions() []saga.Definition {
	return []saga.Definition{
		Workflow,
		ReserveBudget.Implement(func(ctx context.Context, in ReserveInput) (Reservation, error) {
			if err := s.enter(ctx, StepReserveBudget, in.RequestID); err != nil {
				return Reservation{}, err
			}
			return Reservation{ReservationID: "bud-" + in.RequestID}, nil
		}),
		PayExpense.Implement(func(ctx context.Context, in PayInput) (Payment, error) {
			if err := s.enter(ctx, StepPayExpense, in.RequestID); err != nil {
				return Payment{}, err
			}
			return Payment{PaymentID: "pay-" + in.RequestID}, nil
		}),
		ReleaseBudget.Implement(func(ctx context.Context, in ReleaseInput) (Release, error) {
			if err := s.enter(ctx, StepReleaseBudget, in.RequestID); err != nil {
				return Release{}, err
			}
			// Always a success, as releasing a reservation already
			// released, or never made, must be: an undo runs at least
			// once, and may run for a reservation that never happened.
			return Release{Released: true}, nil
		}),
	}
}

func (s *Service) enter(ctx context.Context, step, requestID string) error {
	s.mu.Lock()
	s.calls[step]++
	hook := s.Hook
	s.mu.Unlock()
	if hook != nil {
		return hook(ctx, step, requestID)
	}
	return nil
}
