package replay

import (
	"errors"
	"fmt"
)

// Errors of a Machine. After any of them the machine is unusable.
var (
	// ErrStale means the history fed after the code ran differs from what
	// the code saw live (a side effect value recorded by another writer):
	// the machine must be rebuilt from the full history.
	ErrStale = errors.New("replay: machine state is stale, rebuild from history")
	// ErrCorruptHistory means the history contradicts itself, for example
	// a result for an activity that was never scheduled.
	ErrCorruptHistory = errors.New("replay: history is inconsistent")
	// ErrDeadlock means that the code took longer than DeadlockTimeout to
	// settle after an input: a coroutine did not yield (a native channel,
	// a mutex, time.Sleep), or the coroutines kept waking each other (a
	// livelock).
	ErrDeadlock = errors.New("replay: workflow code did not yield to the engine in time (deadlock, livelock or a blocking call in workflow code)")
	// ErrInterrupted means the context of Feed ended while the code was
	// deciding. The error also matches the context's error. The machine
	// is left between two steps of the code and must be rebuilt.
	ErrInterrupted = errors.New("replay: decision interrupted")
	// ErrClosed means the machine was closed.
	ErrClosed = errors.New("replay: machine closed")
	// ErrNewerHistory is matched by a NonDeterminismError whose history
	// holds a version marker for a change the code does not make there:
	// the history was written by newer code (a rolling deploy), and a node
	// running that code can continue it.
	ErrNewerHistory = errors.New("replay: history written by newer code")
)

// NonDeterminismError says that the code, replayed against its history,
// made a different decision than the one recorded.
type NonDeterminismError struct {
	EventID uint64
	// History describes the recorded event, Code what the code did.
	History string
	Code    string
	// UnknownChangeID is set when the recorded event is a version marker
	// for a change the code does not make at that point: code that added
	// the change behind GetVersion wrote the history.
	UnknownChangeID string
}

func (e *NonDeterminismError) Error() string {
	msg := fmt.Sprintf("event %d: history has %s, code asked for %s", e.EventID, e.History, e.Code)
	if e.UnknownChangeID != "" {
		msg += "; the history was written by newer code, with change " + e.UnknownChangeID
	}
	return msg
}

// Is matches ErrNewerHistory when the history holds a change the code
// does not know, so that a worker can leave the saga to newer code
// instead of blocking it as a bug.
func (e *NonDeterminismError) Is(target error) bool {
	return target == ErrNewerHistory && e.UnknownChangeID != ""
}

// PanicError is a panic in workflow code.
type PanicError struct {
	Value any
	Stack string
}

func (e *PanicError) Error() string { return fmt.Sprintf("workflow code panicked: %v", e.Value) }
