package integration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/examples/approval"
	"github.com/jetsaga/saga/examples/order"
	"github.com/jetsaga/saga/invariant"
	"github.com/jetsaga/saga/stream"
)

// The mixed load of the fault tests: sagas of five kinds, each with the
// outcome its user expects whatever the faults, started and signalled or
// canceled through a saga.Client while the faults run.

// sagaKind is what a saga of the load does, and so how it must end.
type sagaKind int

const (
	kindOrderCompletes sagaKind = iota // an order that completes
	kindOrderFails                     // an order whose step fails for good: it compensates and fails
	kindApproved                       // an approval approved by signal: completes
	kindTimesOut                       // an approval left to its timer: compensates and fails
	kindCanceled                       // an approval canceled by the client: compensates, canceled
)

func (k sagaKind) String() string {
	return [...]string{"order-completes", "order-fails", "approved", "times-out", "canceled"}[k]
}

// mix spreads the kinds over every 20 sagas: 30% orders that complete,
// 20% that fail, 20% approved, 15% timed out, 15% canceled.
var mix = [20]sagaKind{
	kindOrderCompletes, kindOrderFails, kindApproved, kindTimesOut, kindCanceled,
	kindOrderCompletes, kindOrderFails, kindApproved, kindTimesOut, kindCanceled,
	kindOrderCompletes, kindOrderFails, kindApproved, kindTimesOut, kindCanceled,
	kindOrderCompletes, kindOrderFails, kindApproved, kindOrderCompletes, kindOrderCompletes,
}

// plannedSaga is one saga of the load and when things happen to it.
type plannedSaga struct {
	id   string
	kind sagaKind
	// startAt is the start's offset from the beginning of the load;
	// actAfter the signal's or cancellation's offset from the start.
	startAt, actAfter time.Duration
	failStep          string
	// timeout is the approval's wait for a decision, as its input gives it.
	timeout string
	// resend: the approval's signal is published twice with one msg id,
	// as a client retrying after a lost acknowledgement would.
	resend bool
}

// planLoad plans n sagas over window: starts spread over its first
// startSpread part, decisions and timeouts falling before 90% of it, so
// that the faults hit sagas at every stage and many sagas are open at once.
func planLoad(prefix string, n int, window time.Duration, startSpread float64, rng *rand.Rand) []plannedSaga {
	steps := []string{order.StepReserveInventory, order.StepProcessPayment, order.StepShipOrder}
	plan := make([]plannedSaga, n)
	for i := range plan {
		p := plannedSaga{id: fmt.Sprintf("%s-%04d", prefix, i), kind: mix[i%len(mix)]}
		p.startAt = time.Duration(float64(window) * startSpread * float64(i) / float64(n))
		// The decision comes between half a second after the start and
		// 90% of the window.
		latest := max(time.Duration(float64(window)*0.9)-p.startAt, time.Second)
		p.actAfter = 500*time.Millisecond + time.Duration(rng.Int64N(int64(latest-500*time.Millisecond)))
		switch p.kind {
		case kindOrderFails:
			p.failStep = steps[(i/len(mix))%len(steps)]
		case kindApproved, kindCanceled:
			// Never reached: the decision or the cancellation comes first.
			p.timeout = "10m"
			p.resend = i%2 == 0
		case kindTimesOut:
			// Whole seconds, as durable timers are.
			p.timeout = fmt.Sprintf("%ds", 1+int(p.actAfter/time.Second))
		}
		plan[i] = p
	}
	return plan
}

// Bounds of the retries of one client call. A call is retried while the
// engine is unavailable (NATS servers down or electing, a reconnect under
// way), at most callAttempts times and within callBudget; the budget stays
// under the inbox's 2-minute duplicate window, so a signal retried with
// its msg id is never recorded twice.
const (
	callAttempts = 40
	callBudget   = 100 * time.Second
	callTimeout  = 5 * time.Second
)

// errGiveUp ends the retries of a call: its error is final.
var errGiveUp = errors.New("not retried")

// loadRun drives one plan through a client and records what the engine
// acknowledged.
type loadRun struct {
	cl  *saga.Client
	log *slog.Logger
	// sem bounds the client calls in flight.
	sem chan struct{}
	wg  sync.WaitGroup

	retries atomic.Int64

	mu       sync.Mutex
	acked    invariant.Acked
	started  map[string]bool
	failures []string
}

// runLoad starts driving plan from now; wait returns once every saga of
// it was started and decided on or canceled, or its call gave up.
func runLoad(ctx context.Context, cl *saga.Client, log *slog.Logger, plan []plannedSaga) *loadRun {
	l := &loadRun{cl: cl, log: log, sem: make(chan struct{}, 64), started: map[string]bool{}}
	began := time.Now()
	for _, p := range plan {
		l.wg.Go(func() { l.drive(ctx, began, p) })
	}
	return l
}

func (l *loadRun) wait() { l.wg.Wait() }

// drive starts one saga at its time, then signals or cancels it.
func (l *loadRun) drive(ctx context.Context, began time.Time, p plannedSaga) {
	if !pace(ctx, time.Until(began.Add(p.startAt))) {
		return
	}
	if err := l.start(ctx, p); err != nil {
		l.fail("start %s (%s): %v", p.id, p.kind, err)
		return
	}
	startedAt := time.Now()
	switch p.kind {
	case kindApproved, kindCanceled:
	default:
		return
	}
	if !pace(ctx, time.Until(startedAt.Add(p.actAfter))) {
		return
	}
	if p.kind == kindCanceled {
		if err := l.cancel(ctx, p.id); err != nil {
			l.fail("cancel %s: %v", p.id, err)
		}
		return
	}
	for range 1 + boolInt(p.resend) {
		if err := l.approve(ctx, p.id); err != nil {
			l.fail("approve %s: %v", p.id, err)
			return
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pace waits d: the load's own schedule, not a wait for the engine.
func pace(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (l *loadRun) start(ctx context.Context, p plannedSaga) error {
	var wfType string
	var in any
	switch p.kind {
	case kindOrderCompletes, kindOrderFails:
		wfType = order.Workflow.Name()
		in = order.Input{OrderID: p.id, Items: []order.Item{{SKU: "book", Qty: 1}}, Amount: 10, FailStep: p.failStep}
	default:
		wfType = approval.WorkflowType
		in = approval.Input{RequestID: p.id, Amount: 99.5, Requester: "faulttest", Timeout: p.timeout}
	}
	// One request id for every attempt: a retry of a start that landed is
	// recognised as the same start.
	opts := saga.StartOptions{ID: p.id, RequestID: "faulttest-" + p.id}
	err := l.retry(ctx, "start "+p.id, func(ctx context.Context, attempt int) error {
		_, err := l.cl.Start(ctx, wfType, in, opts)
		if errors.Is(err, saga.ErrAlreadyStarted) {
			if attempt == 1 {
				return fmt.Errorf("%w: %w", errGiveUp, err)
			}
			// An earlier attempt landed, its acknowledgement lost, and
			// its check of the request id read a replica that lagged:
			// nothing but this run starts these ids.
			l.log.Info("start landed on an earlier attempt", "saga_id", p.id, "attempt", attempt)
			return nil
		}
		return err
	})
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.acked.Starts = append(l.acked.Starts, p.id)
	l.started[p.id] = true
	l.mu.Unlock()
	return nil
}

// approve publishes the approve signal with a msg id of its own, so that
// the inbox drops a retried copy.
func (l *loadRun) approve(ctx context.Context, id string) error {
	value, err := stream.Marshal(approval.Decision{By: "faulttest", Comment: "within budget"})
	if err != nil {
		return fmt.Errorf("encode decision: %w", err)
	}
	msgID := id + "-approve"
	err = l.retry(ctx, "signal "+id, func(ctx context.Context, _ int) error {
		_, err := l.cl.SignalPayload(ctx, id, approval.SignalApprove, value, msgID)
		if errors.Is(err, saga.KindValidation) {
			return fmt.Errorf("%w: %w", errGiveUp, err)
		}
		return err
	})
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.acked.Signals {
		if s.MsgID == msgID {
			return nil // the resent copy: one logical signal
		}
	}
	l.acked.Signals = append(l.acked.Signals, invariant.SignalAck{SagaID: id, Name: approval.SignalApprove, MsgID: msgID})
	return nil
}

func (l *loadRun) cancel(ctx context.Context, id string) error {
	return l.retry(ctx, "cancel "+id, func(ctx context.Context, attempt int) error {
		err := l.cl.Cancel(ctx, id, "faulttest: canceled by the client")
		switch {
		case err == nil:
			return nil
		case attempt > 1 && (errors.Is(err, saga.ErrCancelRequested) || errors.Is(err, saga.ErrAlreadyEnded)):
			// An earlier attempt landed and its reply was lost; the
			// saga may even have finished compensating since.
			l.log.Info("cancel landed on an earlier attempt", "saga_id", id, "attempt", attempt, "err", err)
			return nil
		case errors.Is(err, saga.ErrNotFound):
			// A replica that lags behind the start: read again.
			return err
		case errors.Is(err, saga.KindValidation):
			return fmt.Errorf("%w: %w", errGiveUp, err)
		}
		return err
	})
}

// retry calls f until it succeeds, returns an error wrapping errGiveUp,
// or the attempts or the budget run out. Each attempt has callTimeout.
func (l *loadRun) retry(ctx context.Context, what string, f func(ctx context.Context, attempt int) error) error {
	ctx, cancel := context.WithTimeout(ctx, callBudget)
	defer cancel()
	pause := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := func() error {
			l.sem <- struct{}{}
			defer func() { <-l.sem }()
			actx, cancel := context.WithTimeout(ctx, callTimeout)
			defer cancel()
			return f(actx, attempt)
		}()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errGiveUp):
			return err
		case attempt == callAttempts || ctx.Err() != nil:
			return fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		}
		l.retries.Add(1)
		l.log.Warn("client call failed; retrying", "call", what, "attempt", attempt, "err", err)
		if !pace(ctx, pause) {
			return fmt.Errorf("gave up after %d attempts: %w", attempt, err)
		}
		pause = min(2*pause, 2*time.Second)
	}
}

func (l *loadRun) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("load: " + msg)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = append(l.failures, msg)
}

// result returns what was acknowledged, the ids started in plan order,
// and the calls that gave up.
func (l *loadRun) result(plan []plannedSaga) (invariant.Acked, []string, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for _, p := range plan {
		if l.started[p.id] {
			ids = append(ids, p.id)
		}
	}
	acked := invariant.Acked{Starts: append([]string(nil), l.acked.Starts...), Signals: append([]invariant.SignalAck(nil), l.acked.Signals...)}
	sort.Strings(acked.Starts)
	return acked, ids, append([]string(nil), l.failures...)
}
