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
package replay

import (
	"errors"
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
	// DeadlockTimeout bounds how long workflow code may run without
	// yielding to the engine (a native channel, a mutex or time.Sleep in
	// workflow code blocks it forever). Defaults to 1 second.
	DeadlockTimeout time.Duration
	// ActivityDefaults fill the options an activity call leaves unset, before
	// the engine's own defaults do.
	ActivityDefaults stream.ActivityOptions
	// MaxPayloadSize bounds the values the code records (activity inputs,
	// side effect results, its output); 0 means no bound.
	MaxPayloadSize int
}

// Errors of a Machine. After any of them the machine is unusable.
var (
	// ErrStale means the history fed after the code ran differs from what
	// the code saw live (a side effect value recorded by another writer):
	// the machine must be rebuilt from the full history.
	ErrStale = errors.New("replay: machine state is stale, rebuild from history")
	// ErrCorruptHistory means the history contradicts itself, for example
	// a result for an activity that was never scheduled.
	ErrCorruptHistory = errors.New("replay: history is inconsistent")
	// ErrDeadlock means workflow code ran longer than DeadlockTimeout
	// without yielding.
	ErrDeadlock = errors.New("replay: workflow code did not yield (deadlock or blocking call in workflow code)")
	// ErrClosed means the machine was closed.
	ErrClosed = errors.New("replay: machine closed")
)

// NonDeterminismError says that the code, replayed against its history,
// made a different decision than the one recorded.
type NonDeterminismError struct {
	EventID uint64
	// History describes the recorded event, Code what the code did.
	History string
	Code    string
}

func (e *NonDeterminismError) Error() string {
	return fmt.Sprintf("event %d: history has %s, code asked for %s", e.EventID, e.History, e.Code)
}

// PanicError is a panic in workflow code.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string { return fmt.Sprintf("workflow code panicked: %v", e.Value) }

// command is a decision of the code, matched or not yet matched with a
// history event.
type command struct {
	eventType stream.EventType
	attrs     any
	future    *Future // activity result
	bound     bool    // paired with a history event
}

// Machine replays and drives one saga. It is not safe for concurrent use;
// the worker serialises access per saga.
type Machine struct {
	cfg Config
	env *Env

	known    []stream.Event // every event fed, in order
	cursor   int            // index in known of the next event to apply
	recorded []stream.Event // the command events of known, in order
	issued   []*command     // every command the code issued, in order

	activities map[uint64]*Future // by scheduled event id
	versions   map[string]int     // change id -> version in use

	now        time.Time
	started    bool
	finished   bool // the code returned: completion or failure issued
	coroutines []*coroutine
	current    *coroutine
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
		activities: map[uint64]*Future{},
		versions:   map[string]int{},
		stop:       make(chan struct{}),
	}
	m.env = &Env{m: m}
	m.env.logger = slog.New(replayAwareHandler{inner: cfg.Logger.Handler(), m: m}).With("saga_id", cfg.SagaID, "workflow_type", cfg.WorkflowType)
	return m
}

// NextEventID is the id of the next event to feed or propose.
func (m *Machine) NextEventID() uint64 { return uint64(len(m.known)) }

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
func (m *Machine) Feed(events ...stream.Event) error {
	if err := m.Err(); err != nil {
		return err
	}
	for _, e := range events {
		if e.ID != uint64(len(m.known)) {
			return m.fail(fmt.Errorf("%w: event %d fed after %d events", ErrCorruptHistory, e.ID, len(m.known)))
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
				if err := m.bindFed(m.issued[k], e); err != nil {
					return m.fail(err)
				}
			}
		}
	}
	for m.cursor < len(m.known) {
		e := m.known[m.cursor]
		m.cursor++
		if err := m.apply(e); err != nil {
			return m.fail(err)
		}
	}
	return nil
}

// apply handles one event at the cursor.
func (m *Machine) apply(e stream.Event) error {
	switch stream.RoleOf(e.Type) {
	case stream.RoleCommand:
		k := m.recordedIndex(e)
		if k >= len(m.issued) {
			return &NonDeterminismError{EventID: e.ID, History: describeEvent(e), Code: m.idleDescription()}
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
		m.spawn(func(env *Env) {
			out, failure := m.cfg.Workflow(env, input)
			m.finish(out, failure)
		})
	case *stream.ActivityTaskCompletedAttrs:
		f, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		f.resolve(a.Result, nil)
	case *stream.ActivityTaskFailedAttrs:
		f, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		f.resolve(nil, a.Failure)
	case *stream.ActivityTaskTimedOutAttrs:
		f, err := m.activity(e, a.ScheduledEventID)
		if err != nil {
			return err
		}
		f.resolve(nil, a.Failure)
	default:
		return fmt.Errorf("%w: input event %d of type %s is not handled", ErrCorruptHistory, e.ID, e.Type)
	}
	return m.run()
}

func (m *Machine) activity(e stream.Event, scheduledID uint64) (*Future, error) {
	f := m.activities[scheduledID]
	if f == nil {
		return nil, fmt.Errorf("%w: event %d is a result for event %d, which is not a scheduled activity", ErrCorruptHistory, e.ID, scheduledID)
	}
	return f, nil
}

// recordedIndex finds e's position among the recorded commands; e was
// appended to recorded when fed, so it is near the end.
func (m *Machine) recordedIndex(e stream.Event) int {
	for k := len(m.recorded) - 1; k >= 0; k-- {
		if m.recorded[k].ID == e.ID {
			return k
		}
	}
	return -1
}

func (m *Machine) idleDescription() string {
	if m.finished {
		return "nothing more (the workflow has returned)"
	}
	return "nothing (the workflow is waiting)"
}

// issue records a command from the code. If the history already holds the
// command at this position the two must match, and the recorded event is
// returned so the caller can use recorded values.
func (m *Machine) issue(c *command) (*stream.Event, error) {
	k := len(m.issued)
	m.issued = append(m.issued, c)
	if k >= len(m.recorded) {
		return nil, nil
	}
	e := m.recorded[k]
	if err := m.bind(c, e); err != nil {
		return nil, err
	}
	return &e, nil
}

// bind pairs a command with its history event after checking that they
// are the same decision.
func (m *Machine) bind(c *command, e stream.Event) error {
	if !sameDecision(c, e) {
		return &NonDeterminismError{EventID: e.ID, History: describeEvent(e), Code: describeCommand(c)}
	}
	c.bound = true
	if c.future != nil {
		m.activities[e.ID] = c.future
	}
	return nil
}

// bindFed pairs a command issued before its event was known. A marker's
// value must be the recorded one: if another writer recorded a different
// value, the code has already used the wrong one.
func (m *Machine) bindFed(c *command, e stream.Event) error {
	if err := m.bind(c, e); err != nil {
		return err
	}
	if live, ok := c.attrs.(*stream.MarkerRecordedAttrs); ok {
		rec := e.Attrs.(*stream.MarkerRecordedAttrs)
		if string(live.Data) != string(rec.Data) || (live.Failure == nil) != (rec.Failure == nil) {
			return ErrStale
		}
	}
	return nil
}

func sameDecision(c *command, e stream.Event) bool {
	if c.eventType != e.Type {
		return false
	}
	switch a := c.attrs.(type) {
	case *stream.ActivityTaskScheduledAttrs:
		return a.ActivityType == e.Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType
	case *stream.MarkerRecordedAttrs:
		r := e.Attrs.(*stream.MarkerRecordedAttrs)
		return a.Name == r.Name && a.ChangeID == r.ChangeID
	}
	return true
}

func describeEvent(e stream.Event) string { return describe(e.Type, e.Attrs) }

func describeCommand(c *command) string { return describe(c.eventType, c.attrs) }

func describe(t stream.EventType, attrs any) string {
	switch a := attrs.(type) {
	case *stream.ActivityTaskScheduledAttrs:
		return string(t) + " " + a.ActivityType
	case *stream.MarkerRecordedAttrs:
		if a.ChangeID != "" {
			return fmt.Sprintf("%s %s %s", t, a.Name, a.ChangeID)
		}
		return string(t) + " " + a.Name
	}
	return string(t)
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
		out = append(out, stream.Event{
			ID:       firstID + uint64(len(out)),
			SagaID:   m.cfg.SagaID,
			Type:     c.eventType,
			Category: stream.CategoryOf(c.eventType),
			Time:     now,
			Attrs:    c.attrs,
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

// finish issues the closing command when the workflow function returns.
func (m *Machine) finish(out stream.Payload, failure *stream.Failure) {
	m.finished = true
	if failure != nil {
		m.issueOrAbort(&command{eventType: stream.WorkflowExecutionFailed, attrs: &stream.WorkflowExecutionFailedAttrs{Failure: failure}})
		return
	}
	m.issueOrAbort(&command{eventType: stream.WorkflowExecutionCompleted, attrs: &stream.WorkflowExecutionCompletedAttrs{Output: out}})
}

// issueOrAbort issues a command from a coroutine; a mismatch stops the
// coroutine and surfaces from run.
func (m *Machine) issueOrAbort(c *command) *stream.Event {
	e, err := m.issue(c)
	if err != nil {
		m.err = err
		panic(errAbort)
	}
	return e
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

// Close stops the machine's coroutines and waits for them to exit, at most
// DeadlockTimeout for code that never yields.
func (m *Machine) Close() {
	select {
	case <-m.stop:
		return
	default:
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
