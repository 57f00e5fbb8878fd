// Package replay is the deterministic replay engine. A Machine runs one
// saga's workflow code as coroutines and drives it with the saga's history:
// input events (the start, activity results) are fed to the code one at a
// time, and every decision the code makes (schedule an activity, record a
// marker, complete) is a command that must match the next command event of
// the history. When the history runs out, the commands the code issues
// beyond it are the saga's next decision.
//
// Matching is by order: the k-th command the code issues pairs with the
// k-th command event of the history. A command event must have been issued
// by the time replay reaches it, because the writer of that event had fed
// the code every input before it. A mismatch is a NonDeterminismError that
// names the event, what the history holds and what the code asked for.
//
// Commands have a lifecycle (command.go) and belong to cancellation
// scopes (scope.go); each kind of command has its own file. Applying one
// input is bounded in wall time by Config.DeadlockTimeout, so code that
// never settles fails the machine instead of holding its driver.
package replay

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jetsaga/saga/stream"
)

// WorkflowFunc is workflow code with its types erased: it gets the encoded
// input and returns the encoded output, or the failure the workflow ends
// with.
type WorkflowFunc func(env *Env, input stream.Payload) (stream.Payload, *stream.Failure)

// Config configures a Machine.
type Config struct {
	SagaID       string
	WorkflowType string
	Workflow     WorkflowFunc
	// Logger is what workflow code logs to; records are dropped while the
	// code replays already recorded history. Defaults to slog.Default().
	Logger *slog.Logger
	// DeadlockTimeout bounds the wall time the code may take to settle
	// after one input: to run until every coroutine blocks. Code that does
	// not yield to the engine (a native channel, a mutex or time.Sleep in
	// workflow code) or whose coroutines keep waking each other (a
	// livelock) never settles. Defaults to 1 second.
	DeadlockTimeout time.Duration
	// ActivityDefaults fill the options an activity call leaves unset, before
	// the engine's own defaults do.
	ActivityDefaults stream.ActivityOptions
	// MaxPayloadSize bounds the values the code records (activity inputs,
	// side effect results, its output); 0 means no bound.
	MaxPayloadSize int
	// Codec seals the values the code records and opens the values it
	// reads; nil leaves them plain.
	Codec stream.PayloadCodec
}

// Machine replays and drives one saga. It is not safe for concurrent use;
// the worker serialises access per saga.
type Machine struct {
	cfg Config
	env *Env

	// base is the id of the first event fed: the run's start, which is
	// event 0 only for a saga's first run.
	base      uint64
	runNumber uint32         // the run's number, from its start
	known     []stream.Event // every event fed, in order
	cursor    int            // index in known of the next event to apply
	recorded  []stream.Event // the command events of known, in order
	// applied counts the command events the cursor has passed: they are
	// applied in order, so the next one is recorded[applied].
	applied int
	issued  []command // every command the code issued, in order

	root       *Scope
	activities map[uint64]*activityCommand // by scheduled event id
	timers     map[uint64]*timerCommand    // by TimerCreated event id
	allTimers  []*timerCommand             // in the order issued
	signals    map[string][]queuedSignal   // received, not yet taken, by name
	queries    map[string]QueryFunc
	inQuery    bool // a query handler runs: the code may not decide
	// queryRunning is set when a query handler overran: closed when it
	// returns (see Close).
	queryRunning chan struct{}
	versions     map[string]int // change id -> version in use
	comp         compensationState
	// cancel is the saga's cancellation request, once fed; closingStarted
	// is set once the saga's end is under way (the code returned, or the
	// run timeout passed), so that it is decided once.
	cancel         *stream.WorkflowExecutionCancelRequestedAttrs
	closingStarted bool
	runTimeout     time.Duration
	// continueWith is set when the code returned saga.ContinueAsNew: the
	// next run's input. continued is the command that ends the run that
	// way, once issued.
	continueWith *stream.Payload
	continued    *continueAsNewCommand

	now        time.Time
	started    bool
	finished   bool // the code returned: completion or failure issued
	coroutines []*coroutine
	current    *coroutine
	overrun    *time.Timer // bounds one resume; reused, as there is one at a time
	stop       chan struct{}
	err        error // sticky: the machine is unusable once set
	// abandoned is set, by the driver and read only by it, when a
	// coroutine overran DeadlockTimeout. That coroutine may resume at any
	// time and owns every other field from then on, so the driver's
	// methods answer from this one alone.
	abandoned error
}

// New returns a machine that has seen no history yet.
func New(cfg Config) *Machine {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DeadlockTimeout == 0 {
		cfg.DeadlockTimeout = time.Second
	}
	m := &Machine{
		cfg:        cfg,
		root:       &Scope{},
		activities: map[uint64]*activityCommand{},
		timers:     map[uint64]*timerCommand{},
		signals:    map[string][]queuedSignal{},
		queries:    map[string]QueryFunc{},
		versions:   map[string]int{},
		stop:       make(chan struct{}),
	}
	m.root.m = m
	m.env = &Env{m: m}
	m.env.logger = slog.New(replayAwareHandler{inner: cfg.Logger.Handler(), m: m}).With("saga_id", cfg.SagaID, "workflow_type", cfg.WorkflowType)
	return m
}

// NextEventID is the id of the next event to feed or propose.
func (m *Machine) NextEventID() uint64 { return m.base + uint64(len(m.known)) }

// Finished reports whether the workflow code has returned.
func (m *Machine) Finished() bool { return m.abandoned == nil && m.finished }

// Err returns the error that made the machine unusable, if any.
func (m *Machine) Err() error {
	if m.abandoned != nil {
		return m.abandoned
	}
	return m.err
}

// Feed appends events to the machine's history and applies them in order.
// Their ids must continue the history. All events are known before the
// first is applied, so code replaying an input already sees the commands
// recorded after it (a side effect's recorded value).
//
// ctx bounds the code's decisions: once it ends, the decision in progress
// stops before the next coroutine runs and Feed fails with ErrInterrupted;
// the machine must then be rebuilt.
func (m *Machine) Feed(ctx context.Context, events ...stream.Event) error {
	if err := m.Err(); err != nil {
		return err
	}
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.WorkflowExecutionStartedAttrs); ok && len(m.known) == 0 && a.Continued != nil {
			// A run after the first begins where the one before it ended.
			m.base = e.ID
		}
		if e.ID != m.NextEventID() {
			return m.fail(fmt.Errorf("%w: event %d fed where event %d was due", ErrCorruptHistory, e.ID, m.NextEventID()))
		}
		if stream.RoleOf(e.Type) == 0 {
			return m.fail(fmt.Errorf("%w: event %d has type %s, which replay does not know", ErrCorruptHistory, e.ID, e.Type))
		}
		m.known = append(m.known, e)
		if stream.RoleOf(e.Type) == stream.RoleCommand {
			m.recorded = append(m.recorded, e)
			if k := len(m.recorded) - 1; k < len(m.issued) {
				// The code issued this command before the event was known
				// (it decided live, or on an earlier input of a batch).
				if err := m.commit(m.issued[k], e); err != nil {
					return m.fail(err)
				}
			}
		}
	}
	for m.cursor < len(m.known) {
		e := m.known[m.cursor]
		m.cursor++
		if err := m.apply(ctx, e); err != nil {
			return m.fail(err)
		}
	}
	return nil
}

// apply handles one event at the cursor.
func (m *Machine) apply(ctx context.Context, e stream.Event) error {
	switch stream.RoleOf(e.Type) {
	case stream.RoleCommand:
		// Issued commands were committed when both were known; this only
		// checks that the code got this far.
		k := m.applied
		m.applied++
		if k >= len(m.issued) {
			return nonDeterminism(e, m.idleDescription())
		}
		return nil
	case stream.RoleInfo:
		return nil
	}
	// An input: the code sees it, then runs until it blocks again.
	m.now = e.Time
	switch a := e.Attrs.(type) {
	case *stream.WorkflowExecutionStartedAttrs:
		if m.started {
			return fmt.Errorf("%w: second start at event %d", ErrCorruptHistory, e.ID)
		}
		m.started = true
		input := a.Input
		m.runTimeout = a.RunTimeout
		m.runNumber = 1
		if c := a.Continued; c != nil {
			m.runNumber = c.Run
			// What the run before passed on: its untaken signals wait here
			// first, and a cancellation it recorded too late to act on
			// reaches this run's code from its first step.
			for _, s := range c.Signals {
				m.signals[s.Name] = append(m.signals[s.Name], queuedSignal{value: s.Input, eventID: s.EventID})
			}
			if c.CancelRequested != nil {
				m.cancel = c.CancelRequested
				m.root.Cancel()
			}
		}
		m.spawn(func(env *Env) {
			out, failure := m.cfg.Workflow(env, input)
			m.finish(env, out, failure)
		})
	case *stream.WorkflowExecutionCancelRequestedAttrs:
		if m.cancel == nil {
			m.cancel = a
			m.root.Cancel() // may issue commands (a timer's cancellation)
			if m.err != nil {
				return m.err
			}
		}
		// A run timeout after a request still ends the saga: its code may
		// not have returned.
		if a.Cause == stream.CancelByRunTimeout && !m.closingStarted {
			// Past the run timeout the saga ends without waiting for the
			// code: compensation starts now, on a coroutine of its own.
			m.closingStarted = true
			m.spawn(func(env *Env) { m.close(env, closing{typ: stream.WorkflowExecutionTimedOut}) })
		}
	case *stream.ActivityTaskCompletedAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(a.Result, nil)
	case *stream.ActivityTaskFailedAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(nil, a.Failure)
	case *stream.ActivityTaskTimedOutAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(nil, a.Failure)
	case *stream.ActivityTaskCanceledAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(nil, &stream.Failure{Kind: "Cancelled", Message: "activity canceled", NonRetryable: true})
	case *stream.TimerFiredAttrs:
		c := m.timers[a.StartedEventID]
		if c == nil {
			return fmt.Errorf("%w: event %d fires event %d, which is not a timer", ErrCorruptHistory, e.ID, a.StartedEventID)
		}
		c.fire()
	case *stream.SignalReceivedAttrs:
		m.signals[a.Name] = append(m.signals[a.Name], queuedSignal{value: a.Input, eventID: e.ID})
	case *stream.CompensationStepCompletedAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(a.Result, nil)
	case *stream.CompensationStepFailedAttrs:
		c, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		c.resolve(nil, a.Failure)
	default:
		return fmt.Errorf("%w: input event %d of type %s is not handled", ErrCorruptHistory, e.ID, e.Type)
	}
	return m.run(ctx)
}

func (m *Machine) activity(e stream.Event, scheduledID uint64) (*activityCommand, error) {
	c := m.activities[scheduledID]
	if c == nil {
		return nil, fmt.Errorf("%w: event %d is a result for event %d, which is not a scheduled activity", ErrCorruptHistory, e.ID, scheduledID)
	}
	return c, nil
}

func (m *Machine) idleDescription() string {
	if m.finished {
		return "nothing more (the workflow has returned)"
	}
	return "nothing (the workflow is waiting)"
}

// Propose turns the commands the code issued beyond the history into
// events, numbered from NextEventID, stamped with now. They become part of
// the history only when fed back after a successful append.
func (m *Machine) Propose(firstID uint64, now time.Time) []stream.Event {
	if m.abandoned != nil {
		return nil
	}
	var out []stream.Event
	for _, c := range m.issued[len(m.recorded):] {
		// Later commands may name this one's event (a compensation step
		// names its registration).
		c.lifecycle().eventID = firstID + uint64(len(out))
		out = append(out, stream.Event{
			ID:       firstID + uint64(len(out)),
			SagaID:   m.cfg.SagaID,
			Type:     c.eventType(),
			Category: stream.CategoryOf(c.eventType()),
			Time:     now,
			Attrs:    c.attrs(),
		})
	}
	return out
}

// Pending reports how many issued commands are not yet in the history.
func (m *Machine) Pending() int {
	if m.abandoned != nil {
		return 0
	}
	return len(m.issued) - len(m.recorded)
}

// cancelOpenTimers cancels, in the order they were started, the timers
// nobody waits for any more because the saga ends (a timeout that lost a
// race): their TimerCanceled deletes the durable timers now rather than
// leaving them to fire for an ended saga.
func (m *Machine) cancelOpenTimers() {
	for _, t := range m.allTimers {
		t.requestCancel() // a timer that fired or was canceled stays so
	}
	m.allTimers = nil
}

// finish ends the saga when the workflow function returns: completed
// with its output, or, after compensating what it registered, failed (or
// canceled, when its cancellation was requested). Past the run timeout
// the saga is ending already, and what the code returns changes nothing.
func (m *Machine) finish(env *Env, out stream.Payload, failure *stream.Failure) {
	if m.closingStarted {
		return
	}
	m.closingStarted = true
	if failure == nil && m.continueWith != nil {
		if failure = m.continueAsNew(); failure == nil {
			return
		}
	}
	if failure == nil {
		m.cancelOpenTimers()
		m.finished = true
		m.issueOrAbort(newCompleteCommand(out, nil))
		return
	}
	c := closing{typ: stream.WorkflowExecutionFailed, failure: failure}
	if m.cancel != nil {
		c.typ = stream.WorkflowExecutionCanceled
	}
	m.close(env, c)
}

func (m *Machine) fail(err error) error {
	if m.abandoned != nil {
		return m.abandoned
	}
	if m.err == nil {
		m.err = err
	}
	return m.err
}

// closed reports whether Close was called: the coroutines are unwinding.
func (m *Machine) closed() bool {
	select {
	case <-m.stop:
		return true
	default:
		return false
	}
}

// Close stops the machine's coroutines and waits for them to exit, at most
// DeadlockTimeout for code that never yields. Their deferred calls run as
// they unwind; what they log is dropped.
func (m *Machine) Close() {
	select {
	case <-m.stop:
		return
	default:
	}
	if m.queryRunning != nil {
		// A query handler that overran still reads the workflow's state:
		// the coroutines unwind (running the code's deferred calls) only
		// once it returns. Its goroutine is the handler's, which is gone
		// when the handler returns.
		go func(done <-chan struct{}) {
			<-done
			close(m.stop)
		}(m.queryRunning)
		m.queryRunning = nil
		return
	}
	close(m.stop)
	if m.abandoned != nil {
		// The runaway coroutine aborts at its next call into the engine
		// (or never, if it loops); nothing else of the machine is touched.
		return
	}
	if m.err == nil {
		m.err = ErrClosed
	}
	deadline := time.After(m.cfg.DeadlockTimeout)
	for _, co := range m.coroutines {
		select {
		case <-co.exited:
		case <-deadline:
			m.cfg.Logger.Warn("workflow coroutine did not stop", "saga_id", m.cfg.SagaID)
			return
		}
	}
}
