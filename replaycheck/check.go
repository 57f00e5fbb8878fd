// Package replaycheck replays recorded saga histories against the
// workflow code of a registry and reports every saga that code would not
// reproduce: a non-deterministic change, a panic, a deadlock, a history
// that contradicts itself, or a history written by newer code.
//
// It is the check to run before deploying a workflow change: a node
// running the new code blocks every saga it cannot replay (see
// docs/replay.md), and this finds them first, without a node and without
// writing anything. "saga-node replay-check" runs it.
//
// Histories come from a Source: StreamSource reads the engine's history
// streams; an archive (package pgarchive) can provide another.
package replaycheck

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// Filter selects the sagas to check.
type Filter struct {
	// Type keeps the sagas of one workflow type; "" keeps every type.
	Type string
	// Since keeps the sagas started at or after it; zero keeps all.
	Since time.Time
	// Limit stops after that many sagas matched (checked or skipped), in
	// the order the source lists them; 0: no limit.
	Limit int
}

// Matches reports whether a saga of that type, started then, passes the
// type and start-time conditions (the limit is the caller's to count).
func (f Filter) Matches(workflowType string, startedAt time.Time) bool {
	return (f.Type == "" || f.Type == workflowType) && !startedAt.Before(f.Since)
}

// Source is where histories come from.
//
// Check applies the Filter to what each history records, so a source
// that cannot filter cheaply may list more sagas than match; one that can
// (an indexed archive) should, and may apply the Limit too.
type Source interface {
	// SagaIDs lists the sagas to check, in the order to check them.
	SagaIDs(ctx context.Context, f Filter) ([]string, error)
	// Events returns a saga's history in order: the whole history from
	// event 0, or its latest run alone (from that run's
	// WorkflowExecutionStarted) for a saga that continued as new. Check
	// replays the latest run either way. A history that does not decode
	// is an error matching stream.ErrCodec
	// (a newer engine's format: stream.ErrUnsupported); a saga that is
	// gone since it was listed, stream.ErrNotFound. Any other error stops
	// the check.
	Events(ctx context.Context, sagaID string) ([]stream.Event, error)
}

// ErrNoArchiveSource means histories were asked of an archive this
// program cannot reach.
var ErrNoArchiveSource = errors.New("no archive source")

// ErrWouldNotReplay is matched by Report.Err when some saga would not
// replay on the code checked.
var ErrWouldNotReplay = errors.New("sagas would not replay on this code")

// Kind classifies why a saga would not replay.
type Kind string

// Kinds of failures. KindNewerCode is not a bug in the code checked: the
// history went past it, and only the newer code can continue the saga.
const (
	// KindNondeterminism: the code asks for something else than the
	// history holds (replay.NonDeterminismError).
	KindNondeterminism Kind = "nondeterminism"
	// KindPanic: the workflow code panicked.
	KindPanic Kind = "panic"
	// KindCorrupt: the history contradicts itself or does not decode.
	KindCorrupt Kind = "corrupt"
	// KindDeadlock: the code did not settle within the deadlock timeout.
	KindDeadlock Kind = "deadlock"
	// KindNewerCode: the history was written by newer code: a version
	// marker for a change this code does not make (replay.ErrNewerHistory),
	// a recorded workflow version above the code's, or a history format
	// this engine does not read.
	KindNewerCode Kind = "newer_code"
	// KindOther: any other replay error. A history replayed at once from
	// its start is not expected to give one.
	KindOther Kind = "other"
)

// Failure is one saga that would not replay.
type Failure struct {
	SagaID string `json:"saga_id"`
	// Type and Version are the recorded ones; empty and 0 when the
	// history is too broken to say.
	Type    string `json:"type"`
	Version int    `json:"version"`
	// EventID is the event the replay stopped at, when the error names
	// one (a non-deterministic command).
	EventID *uint64 `json:"event_id,omitempty"`
	Kind    Kind    `json:"kind"`
	// Error is the one-line message, as a node would record it in
	// WorkflowExecutionBlocked.
	Error string `json:"error"`
	// Detail holds what does not fit on a line: a panic's stack.
	Detail string `json:"detail,omitempty"`
}

// Report is the outcome of a check. Checked = OK + Failed + NewerCode:
// the sagas whose code this program has; Skipped are the others.
type Report struct {
	Checked   int `json:"checked"`
	OK        int `json:"ok"`
	Failed    int `json:"failed"`
	NewerCode int `json:"newer_code"`
	Skipped   int `json:"skipped"`
	// Types counts the checked sagas by type, SkippedTypes the skipped
	// ones (types this registry does not have).
	Types        map[string]int `json:"types"`
	SkippedTypes map[string]int `json:"skipped_types"`
	// Failures lists the sagas that would not replay (the newer-code ones
	// included), in the order checked.
	Failures []Failure `json:"failures"`
}

// NotReplayable is how many checked sagas would not replay.
func (r *Report) NotReplayable() int { return r.Failed + r.NewerCode }

// Err is nil when every checked saga replays, else an error matching
// ErrWouldNotReplay that counts them.
func (r *Report) Err() error {
	if r.NotReplayable() == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d of %d checked (%d failed, %d written by newer code)",
		ErrWouldNotReplay, r.NotReplayable(), r.Checked, r.Failed, r.NewerCode)
}

// Options tune Check.
type Options struct {
	Filter Filter
	// DeadlockTimeout is the decision budget of each replay (see
	// replay.Config). It defaults to 5 seconds rather than a node's 1:
	// a check runs on a CI machine, often loaded, and a false deadlock
	// would fail a deploy for nothing.
	DeadlockTimeout time.Duration
	// Logger hears what workflow code logs while it runs past the end of a
	// history. Defaults to discarding it: the check's output is the report.
	Logger *slog.Logger
	// Codec opens sealed payloads, as the nodes do; without it a saga
	// whose values are sealed fails to replay with a codec error.
	Codec stream.PayloadCodec
}

// DefaultDeadlockTimeout is Options.DeadlockTimeout's default.
const DefaultDeadlockTimeout = 5 * time.Second

// Check replays every saga src lists that matches opts.Filter against the
// workflow code reg holds, each in a fresh machine configured as a node
// configures its own, and reports those that would not replay. A saga
// that continued as new is replayed from its latest run's start, and
// filtered by that run's start time and version. A saga
// whose type reg does not have is skipped. A history that ends before its
// code decided (a running saga) is fed as it is: what the code would do
// next is not checked, since nothing recorded says what it should be.
//
// Replay runs workflow code, and so the side effects it runs past the end
// of a history (saga.SideEffect functions); activities never run.
//
// The error is for a check that could not finish (a source that fails, ctx
// ending), with the report so far. Sagas that do not replay are in the
// report, and in Report.Err.
func Check(ctx context.Context, src Source, reg *saga.Registry, opts Options) (*Report, error) {
	if opts.DeadlockTimeout <= 0 {
		opts.DeadlockTimeout = DefaultDeadlockTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	rep := &Report{Types: map[string]int{}, SkippedTypes: map[string]int{}, Failures: []Failure{}}
	ids, err := src.SagaIDs(ctx, opts.Filter)
	if err != nil {
		return rep, fmt.Errorf("list sagas: %w", err)
	}
	matched := 0
	for _, id := range ids {
		if opts.Filter.Limit > 0 && matched >= opts.Filter.Limit {
			break
		}
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("check interrupted before saga %s: %w", id, err)
		}
		events, err := src.Events(ctx, id)
		switch {
		case errors.Is(err, stream.ErrNotFound):
			continue // purged or archived since it was listed: nothing to check
		case errors.Is(err, stream.ErrCodec), errors.Is(err, stream.ErrInvalidID), errors.Is(err, stream.ErrUnsupported):
			// Its type and start are unknown, so it is reported whatever
			// the filter: a history no node can read matters to all.
			matched++
			rep.add(Failure{SagaID: id, Kind: readFailureKind(err), Error: err.Error()})
			continue
		case err != nil:
			return rep, fmt.Errorf("read saga %s: %w", id, err)
		}
		// Only the latest run is replayed, as a node replays it: the runs
		// before it ended, and no node replays them again.
		events = stream.LatestRun(events)
		start, err := startOf(events)
		if err != nil {
			matched++
			rep.add(Failure{SagaID: id, Kind: KindCorrupt, Error: err.Error()})
			continue
		}
		wfType, version, startedAt := start.WorkflowType, start.Version, events[0].Time
		if !opts.Filter.Matches(wfType, startedAt) {
			continue
		}
		matched++
		wf, ok := reg.Workflow(wfType)
		if !ok {
			rep.Skipped++
			rep.SkippedTypes[wfType]++
			continue
		}
		rep.Types[wfType]++
		if version > wf.Version {
			rep.add(Failure{SagaID: id, Type: wfType, Version: version, Kind: KindNewerCode,
				Error: fmt.Sprintf("the saga runs version %d of workflow %s, this code is version %d", version, wfType, wf.Version)})
			continue
		}
		err = replayHistory(ctx, id, wf, events, opts)
		if err == nil {
			rep.Checked++
			rep.OK++
			continue
		}
		if errors.Is(err, replay.ErrInterrupted) {
			return rep, fmt.Errorf("replay saga %s: %w", id, err)
		}
		rep.add(replayFailure(id, wfType, version, err))
	}
	return rep, nil
}

// add records a saga that would not replay.
func (r *Report) add(f Failure) {
	r.Checked++
	if f.Kind == KindNewerCode {
		r.NewerCode++
	} else {
		r.Failed++
	}
	r.Failures = append(r.Failures, f)
}

// replayHistory feeds the whole history to a new machine at once, as a
// node rebuilding a saga does (worker/view.go): code replaying an early
// input must see the values recorded later, such as side effects.
func replayHistory(ctx context.Context, id string, wf *saga.RegisteredWorkflow, events []stream.Event, opts Options) error {
	m := replay.New(replay.Config{
		SagaID:          id,
		WorkflowType:    wf.Name,
		Workflow:        wf.Func,
		Logger:          opts.Logger,
		DeadlockTimeout: opts.DeadlockTimeout,
		// Values are only bounded when they are written; what was recorded
		// fit then, and the check writes nothing.
		MaxPayloadSize: 0,
		Codec:          opts.Codec,
	})
	defer m.Close()
	return m.Feed(ctx, events...)
}

// startOf returns the start event's attributes: every run begins with
// one (stream.State.Apply refuses any other).
func startOf(events []stream.Event) (*stream.WorkflowExecutionStartedAttrs, error) {
	if len(events) == 0 {
		return nil, fmt.Errorf("%w: the history has no events", replay.ErrCorruptHistory)
	}
	a, ok := events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs)
	if !ok || events[0].Type != stream.WorkflowExecutionStarted {
		return nil, fmt.Errorf("%w: the history starts with %s, not %s", replay.ErrCorruptHistory, events[0].Type, stream.WorkflowExecutionStarted)
	}
	return a, nil
}

func readFailureKind(err error) Kind {
	if errors.Is(err, stream.ErrUnsupported) {
		return KindNewerCode // a newer engine wrote it; that engine reads it
	}
	return KindCorrupt
}

// replayFailure classifies a replay error the way a node chooses between
// blocking a saga and leaving it to newer code (worker/advance.go).
func replayFailure(id, wfType string, version int, err error) Failure {
	f := Failure{SagaID: id, Type: wfType, Version: version, Error: err.Error()}
	var nde *replay.NonDeterminismError
	var pe *replay.PanicError
	switch {
	case errors.Is(err, replay.ErrNewerHistory):
		f.Kind = KindNewerCode
	case errors.As(err, &nde):
		f.Kind = KindNondeterminism
	case errors.As(err, &pe):
		f.Kind, f.Detail = KindPanic, pe.Stack
	case errors.Is(err, replay.ErrDeadlock):
		f.Kind = KindDeadlock
	case errors.Is(err, replay.ErrCorruptHistory):
		f.Kind = KindCorrupt
	default:
		f.Kind = KindOther
	}
	if errors.As(err, &nde) {
		at := nde.EventID
		f.EventID = &at
	}
	return f
}
