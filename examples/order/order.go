// Package order is the worked example: an order saga that reserves
// inventory, takes payment and ships, against a simulated back office.
// saga-node runs it in its demo and serves it in "saga-node run".
//
// Each step that succeeds registers its undo: release-inventory for
// reserve-inventory, refund-payment for process-payment. When a later step
// fails, the engine runs them last registered first (refund, then
// release) before recording the saga as failed.
//
// Its input accepts "fail_step" naming one of the steps, which then fails
// permanently, and "fail_compensation" naming one of the undo activities,
// which then fails permanently too, leaving the compensation failed: for
// the demo and the tests.
package order

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/jetsaga/saga"
)

// Activity type ids.
const (
	StepReserveInventory = "reserve-inventory"
	StepProcessPayment   = "process-payment"
	StepShipOrder        = "ship-order"
	// The undo activities, registered as compensations.
	StepReleaseInventory = "release-inventory"
	StepRefundPayment    = "refund-payment"
)

// Item is one order line.
type Item struct {
	SKU string `json:"sku"`
	Qty int    `json:"qty"`
}

// Input starts an order saga.
type Input struct {
	OrderID string  `json:"order_id"`
	Items   []Item  `json:"items"`
	Amount  float64 `json:"amount"`
	// FailStep names a step that fails permanently.
	FailStep string `json:"fail_step,omitempty"`
	// FailCompensation names an undo activity (StepReleaseInventory or
	// StepRefundPayment) that fails permanently when it runs.
	FailCompensation string `json:"fail_compensation,omitempty"`
}

// Output is what a completed order saga returns.
type Output struct {
	OrderID        string `json:"order_id"`
	ReservationID  string `json:"reservation_id"`
	PaymentID      string `json:"payment_id"`
	TrackingNumber string `json:"tracking_number"`
}

// ReserveInput asks to reserve an order's items.
type ReserveInput struct {
	OrderID string `json:"order_id"`
	Items   []Item `json:"items"`
	Fail    bool   `json:"fail,omitempty"`
}

// Reservation is a reserve-inventory result.
type Reservation struct {
	ReservationID string `json:"reservation_id"`
}

// PaymentInput asks to charge an order.
type PaymentInput struct {
	OrderID string  `json:"order_id"`
	Amount  float64 `json:"amount"`
	Fail    bool    `json:"fail,omitempty"`
}

// Payment is a process-payment result.
type Payment struct {
	PaymentID string `json:"payment_id"`
}

// ShipInput asks to ship a reserved order.
type ShipInput struct {
	OrderID       string `json:"order_id"`
	ReservationID string `json:"reservation_id"`
	Fail          bool   `json:"fail,omitempty"`
}

// Shipment is a ship-order result.
type Shipment struct {
	TrackingNumber string `json:"tracking_number"`
}

// ReleaseInput asks to release an order's reservation: the undo of
// reserve-inventory.
type ReleaseInput struct {
	OrderID       string `json:"order_id"`
	ReservationID string `json:"reservation_id"`
	Fail          bool   `json:"fail,omitempty"`
}

// Release is a release-inventory result.
type Release struct {
	Released bool `json:"released"`
}

// RefundInput asks to refund an order's payment: the undo of
// process-payment.
type RefundInput struct {
	OrderID   string  `json:"order_id"`
	PaymentID string  `json:"payment_id"`
	Amount    float64 `json:"amount"`
	Fail      bool    `json:"fail,omitempty"`
}

// Refund is a refund-payment result.
type Refund struct {
	RefundID string `json:"refund_id"`
}

// The activities as the workflow calls them; Service implements them.
var (
	ReserveInventory = saga.NewActivity[ReserveInput, Reservation](StepReserveInventory, nil)
	ProcessPayment   = saga.NewActivity[PaymentInput, Payment](StepProcessPayment, nil)
	ShipOrder        = saga.NewActivity[ShipInput, Shipment](StepShipOrder, nil)
	ReleaseInventory = saga.NewActivity[ReleaseInput, Release](StepReleaseInventory, nil)
	RefundPayment    = saga.NewActivity[RefundInput, Refund](StepRefundPayment, nil)
)

// Workflow is the order saga, version 1.
var Workflow = saga.NewWorkflow("order", 1, run)

func run(ctx saga.Context, in Input) (Output, error) {
	if in.OrderID == "" {
		return Output{}, saga.NewError(saga.KindValidation, "order_id is required")
	}
	steps := []string{StepReserveInventory, StepProcessPayment, StepShipOrder}
	if in.FailStep != "" && !slices.Contains(steps, in.FailStep) {
		return Output{}, saga.NewError(saga.KindValidation, fmt.Sprintf("fail_step %q is not one of %v", in.FailStep, steps))
	}
	undos := []string{StepReleaseInventory, StepRefundPayment}
	if in.FailCompensation != "" && !slices.Contains(undos, in.FailCompensation) {
		return Output{}, saga.NewError(saga.KindValidation, fmt.Sprintf("fail_compensation %q is not one of %v", in.FailCompensation, undos))
	}
	fail := func(step string) bool { return in.FailStep == step || in.FailCompensation == step }

	// A returned error makes the engine run the registered undos, last
	// registered first.
	res, err := saga.ExecuteActivity(ctx, ReserveInventory, ReserveInput{OrderID: in.OrderID, Items: in.Items, Fail: fail(StepReserveInventory)}).Get(ctx)
	if err != nil {
		return Output{}, err
	}
	release := ReleaseInput{OrderID: in.OrderID, ReservationID: res.ReservationID, Fail: fail(StepReleaseInventory)}
	if err := saga.AddCompensation(ctx, StepReserveInventory, ReleaseInventory, release); err != nil {
		return Output{}, err
	}
	pay, err := saga.ExecuteActivity(ctx, ProcessPayment, PaymentInput{OrderID: in.OrderID, Amount: in.Amount, Fail: fail(StepProcessPayment)}).Get(ctx)
	if err != nil {
		return Output{}, err
	}
	refund := RefundInput{OrderID: in.OrderID, PaymentID: pay.PaymentID, Amount: in.Amount, Fail: fail(StepRefundPayment)}
	if err := saga.AddCompensation(ctx, StepProcessPayment, RefundPayment, refund); err != nil {
		return Output{}, err
	}
	ship, err := saga.ExecuteActivity(ctx, ShipOrder, ShipInput{OrderID: in.OrderID, ReservationID: res.ReservationID, Fail: fail(StepShipOrder)}).Get(ctx)
	if err != nil {
		return Output{}, err
	}
	ctx.Logger().Info("order completed", "order_id", in.OrderID, "tracking_number", ship.TrackingNumber)
	return Output{OrderID: in.OrderID, ReservationID: res.ReservationID, PaymentID: pay.PaymentID, TrackingNumber: ship.TrackingNumber}, nil
}

// Service simulates the inventory, payment and shipping systems. Its
// operations are idempotent per order, as activities must be, and it
// counts every call so that tests can see what ran how often.
type Service struct {
	mu    sync.Mutex
	calls map[string]int
	// Hook, when set, runs at the start of every activity call; a test uses
	// it to hold an activity or to fail an attempt.
	Hook func(ctx context.Context, step, orderID string) error
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
		ReserveInventory.Implement(func(ctx context.Context, in ReserveInput) (Reservation, error) {
			if err := s.enter(ctx, StepReserveInventory, in.OrderID, in.Fail); err != nil {
				return Reservation{}, err
			}
			return Reservation{ReservationID: "res-" + in.OrderID}, nil
		}),
		ProcessPayment.Implement(func(ctx context.Context, in PaymentInput) (Payment, error) {
			if err := s.enter(ctx, StepProcessPayment, in.OrderID, in.Fail); err != nil {
				return Payment{}, err
			}
			return Payment{PaymentID: "pay-" + in.OrderID}, nil
		}),
		ShipOrder.Implement(func(ctx context.Context, in ShipInput) (Shipment, error) {
			if err := s.enter(ctx, StepShipOrder, in.OrderID, in.Fail); err != nil {
				return Shipment{}, err
			}
			return Shipment{TrackingNumber: "trk-" + in.OrderID}, nil
		}),
		ReleaseInventory.Implement(func(ctx context.Context, in ReleaseInput) (Release, error) {
			if err := s.enter(ctx, StepReleaseInventory, in.OrderID, in.Fail); err != nil {
				return Release{}, err
			}
			// Always a success, as releasing a reservation already
			// released must be: an undo runs at least once, and may run
			// for a step that never took effect.
			return Release{Released: true}, nil
		}),
		RefundPayment.Implement(func(ctx context.Context, in RefundInput) (Refund, error) {
			if err := s.enter(ctx, StepRefundPayment, in.OrderID, in.Fail); err != nil {
				return Refund{}, err
			}
			return Refund{RefundID: "ref-" + in.PaymentID}, nil
		}),
	}
}

func (s *Service) enter(ctx context.Context, step, orderID string, fail bool) error {
	s.mu.Lock()
	s.calls[step]++
	hook := s.Hook
	s.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, step, orderID); err != nil {
			return err
		}
	}
	if fail {
		return saga.Permanent(fmt.Errorf("%s failed for order %s (%s)", step, orderID, failFlag(step)))
	}
	return nil
}

// failFlag names the input field that made step fail.
func failFlag(step string) string {
	if step == StepReleaseInventory || step == StepRefundPayment {
		return "fail_compensation"
	}
	return "fail_step"
}
