package saga

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/jetsaga/saga/stream"
)

// ErrorKind classifies an error, with the reference manual's kinds. Kinds
// are errors themselves, so errors.Is(err, saga.KindTimeout) asks for the
// kind anywhere in err's chain.
type ErrorKind string

// Error kinds.
const (
	KindEventStore        ErrorKind = "EventStore"
	KindCodec             ErrorKind = "Codec"
	KindWorkflowExecution ErrorKind = "WorkflowExecution"
	KindStepExecution     ErrorKind = "StepExecution"
	KindActivityExecution ErrorKind = "ActivityExecution"
	KindTimerStore        ErrorKind = "TimerStore"
	KindSignalDispatcher  ErrorKind = "SignalDispatcher"
	KindTaskQueue         ErrorKind = "TaskQueue"
	KindSnapshot          ErrorKind = "Snapshot"
	KindReplay            ErrorKind = "Replay"
	KindConfiguration     ErrorKind = "Configuration"
	KindValidation        ErrorKind = "Validation"
	KindTimeout           ErrorKind = "Timeout"
	KindCancelled         ErrorKind = "Cancelled"
	KindConcurrency       ErrorKind = "Concurrency"
	KindCompensation      ErrorKind = "Compensation"
	KindUnknown           ErrorKind = "Unknown"
)

func (k ErrorKind) Error() string { return string(k) }

// Specific conditions, matched with errors.Is. Errors returned by this
// package wrap them in an *Error that also carries kind and context.
var (
	// ErrAlreadyStarted: a saga with this id exists.
	ErrAlreadyStarted = errors.New("saga already started")
	// ErrNotFound: no saga has this id.
	ErrNotFound = stream.ErrNotFound
	// ErrConcurrency: another writer appended to the saga first.
	ErrConcurrency = stream.ErrConcurrency
	// ErrInvalidID: an id or type name is not a safe subject token.
	ErrInvalidID = stream.ErrInvalidID
	// ErrUnknownWorkflowType: no definition of that workflow type is
	// registered.
	ErrUnknownWorkflowType = errors.New("unknown workflow type")
	// ErrBlocked: the engine stopped driving the saga (see Description.Blocked).
	ErrBlocked = errors.New("saga is blocked")
	// ErrAlreadyEnded: the saga has ended; it cannot be canceled.
	ErrAlreadyEnded = errors.New("saga already ended")
	// ErrCancelRequested: the saga's cancellation was requested already.
	ErrCancelRequested = errors.New("saga cancellation already requested")
	// ErrCanceled: a workflow context was canceled (see WithCancel). It is
	// matched by Context.Err and by Future.Get in a canceled context.
	ErrCanceled = errors.New("canceled")
	// ErrUnavailable: JetStream did not answer in time (a leader election,
	// a server restarting); the operation may succeed when retried. A start
	// that failed this way is safe to retry with the same RequestID.
	ErrUnavailable = stream.ErrUnavailable
)

// Error is the engine's error: a kind, a message, key/value context and an
// optional cause. It survives a round trip through history: an activity's
// error comes back to the workflow as an *Error with the same kind,
// message, context and causes.
type Error struct {
	Kind    ErrorKind
	Message string
	Context map[string]string
	// NonRetryable stops activity retries when the activity returns it.
	NonRetryable bool
	Cause        error
}

// NewError returns an error of the given kind.
func NewError(kind ErrorKind, message string) *Error {
	return &Error{Kind: kind, Message: message}
}

// Errorf returns an error of the given kind with a formatted message. A %w
// verb makes the wrapped error the cause (several %w: all of them, joined).
func Errorf(kind ErrorKind, format string, args ...any) *Error {
	wrapped := fmt.Errorf(format, args...)
	e := &Error{Kind: kind, Message: wrapped.Error()}
	switch u := wrapped.(type) {
	case interface{ Unwrap() error }:
		e.Cause = u.Unwrap()
		// "context: %w" keeps "context" as the message; the cause follows
		// it in Error().
		if trimmed, ok := strings.CutSuffix(e.Message, ": "+e.Cause.Error()); ok {
			e.Message = trimmed
		}
	case interface{ Unwrap() []error }:
		e.Cause = errors.Join(u.Unwrap()...)
	}
	return e
}

// Permanent marks err as not worth retrying: an activity returning it
// fails at once, whatever its retry policy.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if !errors.As(err, &e) {
		return &Error{Kind: KindActivityExecution, Message: err.Error(), NonRetryable: true, Cause: err}
	}
	if e != err {
		// Extra text around an *Error: keep the text and the inner kind.
		return &Error{Kind: e.Kind, Message: err.Error(), NonRetryable: true, Cause: err}
	}
	c := *e
	c.Context = maps.Clone(e.Context)
	c.NonRetryable = true
	return &c
}

// WithContext adds a key/value pair of context and returns e.
func (e *Error) WithContext(key, value string) *Error {
	if e.Context == nil {
		e.Context = map[string]string{}
	}
	e.Context[key] = value
	return e
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = string(e.Kind)
	}
	if e.Cause != nil {
		// A message that already holds the cause's text (Errorf with %w
		// inside the text, say) is not repeated.
		if c := e.Cause.Error(); !strings.Contains(msg, c) {
			return msg + ": " + c
		}
	}
	return msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// Is matches the error's kind: errors.Is(err, saga.KindValidation).
func (e *Error) Is(target error) bool {
	k, ok := target.(ErrorKind)
	return ok && k == e.Kind
}

// Retryable reports whether an activity returning e should be retried.
func (e *Error) Retryable() bool { return !e.NonRetryable }

// StructuredError is the JSON form of an *Error.
type StructuredError struct {
	Kind         ErrorKind         `json:"kind"`
	Message      string            `json:"message"`
	Context      map[string]string `json:"context,omitempty"`
	NonRetryable bool              `json:"non_retryable,omitempty"`
	Cause        *StructuredError  `json:"cause,omitempty"`
}

// Structured returns the error as a value that marshals to JSON.
func (e *Error) Structured() *StructuredError {
	if e == nil {
		return nil
	}
	return structured(ToFailure(e, KindUnknown))
}

// MarshalJSON writes the structured form.
func (e *Error) MarshalJSON() ([]byte, error) { return json.Marshal(e.Structured()) }

func structured(f *stream.Failure) *StructuredError {
	if f == nil {
		return nil
	}
	return &StructuredError{Kind: ErrorKind(f.Kind), Message: f.Message, Context: f.Context, NonRetryable: f.NonRetryable, Cause: structured(f.Cause)}
}

// ToFailure converts any error into the form history stores. An *Error
// keeps its fields; another error becomes an error of kind def with its
// text, and its cause chain is kept as far as it holds *Errors. The worker
// uses it to record activity errors.
func ToFailure(err error, def ErrorKind) *stream.Failure {
	if err == nil {
		return nil
	}
	var e *Error
	if !errors.As(err, &e) {
		return &stream.Failure{Kind: string(def), Message: err.Error()}
	}
	f := &stream.Failure{Kind: string(e.Kind), Message: e.Message, NonRetryable: e.NonRetryable}
	if e != err {
		// err wraps the *Error with more text ("charge card: %w"): the
		// text becomes the message, the *Error the cause.
		f.Message = err.Error()
		if trimmed, ok := strings.CutSuffix(f.Message, ": "+e.Error()); ok {
			f.Message = trimmed
		}
		f.Cause = ToFailure(e, def)
		return f
	}
	if len(e.Context) > 0 {
		f.Context = maps.Clone(e.Context)
	}
	// A plain cause that only repeats the message adds nothing.
	if e.Cause != nil {
		var ce *Error
		if errors.As(e.Cause, &ce) || e.Cause.Error() != e.Message {
			f.Cause = ToFailure(e.Cause, KindUnknown)
		}
	}
	return f
}

// FromFailure restores an error stored in history as an *Error.
func FromFailure(f *stream.Failure) *Error {
	if f == nil {
		return nil
	}
	e := &Error{Kind: ErrorKind(f.Kind), Message: f.Message, NonRetryable: f.NonRetryable}
	if len(f.Context) > 0 {
		e.Context = maps.Clone(f.Context)
	}
	if f.Cause != nil {
		e.Cause = FromFailure(f.Cause)
	}
	return e
}

// wrapStreamError gives an error from the history log its kind.
func wrapStreamError(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	kind := KindEventStore
	switch {
	case errors.Is(err, stream.ErrConcurrency):
		kind = KindConcurrency
	case errors.Is(err, stream.ErrInvalidID), errors.Is(err, stream.ErrNotFound), errors.Is(err, stream.ErrTooLarge):
		kind = KindValidation
	case errors.Is(err, stream.ErrCodec):
		kind = KindCodec
	}
	return &Error{Kind: kind, Message: op, Cause: err}
}
