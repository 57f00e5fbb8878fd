package replay

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/jetsaga/saga/stream"
)

// DefaultVersion is what GetVersion returns for code that ran before the
// change was introduced.
const DefaultVersion = -1

// Env is what workflow code reaches the engine through. The root package
// wraps it in saga.Context. All methods must be called from workflow code
// of the machine, never from another goroutine.
type Env struct {
	m      *Machine
	logger *slog.Logger
}

// SagaID returns the saga's id.
func (e *Env) SagaID() string { return e.m.cfg.SagaID }

// WorkflowType returns the saga's workflow type.
func (e *Env) WorkflowType() string { return e.m.cfg.WorkflowType }

// Now returns the time of the input the code is reacting to: the same on
// every replay.
func (e *Env) Now() time.Time { return e.m.now }

// IsReplaying reports whether the code is re-running decisions that are
// already recorded.
func (e *Env) IsReplaying() bool { return e.m.replaying() }

func (m *Machine) replaying() bool { return m.cursor < len(m.known) }

// ActivityDefaults returns the node's defaults for activity options.
func (e *Env) ActivityDefaults() stream.ActivityOptions { return e.m.cfg.ActivityDefaults }

// CheckPayload refuses a value no reader could take back: larger than the
// node's payload limit or nested deeper than stream.MaxPayloadDepth.
func (e *Env) CheckPayload(what string, p stream.Payload) error {
	return stream.CheckValue(what, p, e.m.cfg.MaxPayloadSize)
}

// Codec is the payload codec of the saga's values (nil: plain).
func (e *Env) Codec() stream.PayloadCodec { return e.m.cfg.Codec }

// Logger logs from workflow code, once per decision rather than once per
// replay.
func (e *Env) Logger() *slog.Logger { return e.logger }

// checkAlive stops a coroutine that runs on after its machine was closed
// (a workflow that blocked past the deadlock timeout and woke up later).
func (e *Env) checkAlive() {
	if e.m.inQuery {
		panic(errQueryChangesState)
	}
	select {
	case <-e.m.stop:
		panic(errAbort)
	default:
	}
}

// ScheduleActivity issues, in scope s, the command to run an activity and
// returns the future of its result. In a canceled scope it issues nothing
// and the future is canceled: replay of the same code issues nothing
// either.
func (e *Env) ScheduleActivity(s *Scope, activityType string, input stream.Payload, opts stream.ActivityOptions) *Future {
	e.checkAlive()
	f := &Future{m: e.m}
	if s.Canceled() {
		f.cancel()
		return f
	}
	c := &activityCommand{scheduled: &stream.ActivityTaskScheduledAttrs{ActivityType: activityType, Input: input, Options: opts, Detached: s.detached}, future: f}
	e.m.issueOrAbort(c)
	s.add(c)
	return f
}

// SideEffect runs fn once and records its result; replays return the
// recorded result without running fn.
func (e *Env) SideEffect(fn func() (stream.Payload, *stream.Failure)) (stream.Payload, *stream.Failure) {
	e.checkAlive()
	c := newSideEffectCommand()
	if _, recorded := e.m.recordedAt(len(e.m.issued)); !recorded {
		c.marker.Data, c.marker.Failure = fn()
		c.used = true
	}
	e.m.issueOrAbort(c) // on replay, commit adopts the recorded value
	return c.marker.Data, c.marker.Failure
}

// GetVersion returns the version of a change to use: the recorded one when
// the history has a version marker for changeID here, DefaultVersion when
// the history was written by code from before the change, and maxSupported
// (recorded as a marker) when the code runs past the end of the history.
// A recorded version outside [minSupported, maxSupported] is a
// non-determinism error: the code no longer supports that history.
func (e *Env) GetVersion(changeID string, minSupported, maxSupported int) int {
	e.checkAlive()
	m := e.m
	if v, ok := m.versions[changeID]; ok {
		return v
	}
	version := maxSupported
	if rec, recorded := m.recordedAt(len(m.issued)); recorded {
		a, ok := rec.Attrs.(*stream.MarkerRecordedAttrs)
		if !ok || a.Name != stream.MarkerVersion || a.ChangeID != changeID {
			version = DefaultVersion // the history predates the change
		} else {
			if err := stream.Unmarshal(a.Data, &version); err != nil {
				m.err = fmt.Errorf("%w: version marker at event %d: %v", ErrCorruptHistory, rec.ID, err)
				panic(errAbort)
			}
			m.issueOrAbort(newVersionCommand(changeID, a.Data))
		}
		if version < minSupported || version > maxSupported {
			m.err = &NonDeterminismError{EventID: rec.ID, History: fmt.Sprintf("version %d of change %s", version, changeID),
				Code: fmt.Sprintf("a version in [%d, %d]", minSupported, maxSupported)}
			panic(errAbort)
		}
	} else {
		data, err := stream.Marshal(version)
		if err != nil {
			panic(err)
		}
		m.issueOrAbort(newVersionCommand(changeID, data))
	}
	m.versions[changeID] = version
	return version
}

// Go starts fn as another coroutine of the workflow. It runs only when the
// coroutines before it block, so the interleaving is the same on replay.
func (e *Env) Go(fn func(env *Env)) {
	e.checkAlive()
	e.m.spawn(fn)
}

// Await blocks the calling coroutine until cond holds. cond must depend
// only on workflow state.
func (e *Env) Await(cond func() bool) {
	e.checkAlive()
	e.m.await(cond, false)
}
