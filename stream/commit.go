package stream

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Envelope versions. A commit of a saga's first run is written in
// format 1, which every engine reads; a commit of a later run (after
// continue-as-new) in format 2, which carries the run's position. An
// engine that reads only format 1 refuses such a commit as
// ErrUnsupported, and so leaves a continued saga to newer nodes instead
// of misreading it.
const (
	commitFormatFirstRun = 1
	commitFormatRuns     = 2
	// commitFormat is the highest format this engine reads.
	commitFormat = commitFormatRuns
)

// Commit is one history message: the events of one decision (and the inputs
// that led to it), appended atomically.
type Commit struct {
	SagaID string
	// WorkflowType is the saga's workflow type, repeated in every commit so
	// that a commit can be routed to the nodes that run that type without
	// reading the history.
	WorkflowType string
	// Decided is set when the writer ran the workflow code on every input
	// of the history up to and including this commit's: whatever the code
	// decided is in the commit. A commit with inputs and no decision (a
	// start, a result recorded by a node without the workflow) needs a
	// workflow task.
	Decided bool
	Events  []Event
	// Run says where the run the commit belongs to begins, so that a
	// reader of the last commit alone knows where to read the latest run
	// from. Zero for the first run.
	Run RunPosition

	// size is the commit's encoded size, once it was encoded or decoded.
	size int
}

// RunPosition locates the run a commit belongs to: its number and its
// start.
type RunPosition struct {
	// Run is the run's number; 0 and 1 both mean the first run.
	Run uint32
	// StartEventID is the id of the run's WorkflowExecutionStarted.
	StartEventID uint64
	// StartSeq is the stream sequence of the commit that holds the run's
	// start; 0 in that commit itself, whose sequence its writer cannot
	// know.
	StartSeq uint64
}

// FirstRun reports whether the position is the saga's first run's.
func (p RunPosition) FirstRun() bool { return p.Run <= 1 }

// EncodedSize is the commit's size in bytes as stored, once it was
// encoded or decoded; 0 before.
func (c *Commit) EncodedSize() int { return c.size }

// StartsRun returns the index of the event that starts a new run in the
// commit (a run after the first), or -1.
func (c *Commit) StartsRun() int {
	if c.Run.FirstRun() || c.Run.StartSeq != 0 {
		return -1
	}
	for i, e := range c.Events {
		if e.ID == c.Run.StartEventID {
			return i
		}
	}
	return -1
}

// NeedsDecision reports whether the commit holds inputs the workflow code
// has not decided on.
func (c *Commit) NeedsDecision() bool {
	if c.Decided || IsTerminal(c.Events[len(c.Events)-1].Type) {
		return false
	}
	for _, e := range c.Events {
		if RoleOf(e.Type) == RoleInput {
			return true
		}
	}
	return false
}

type wireCommit struct {
	Format       int         `msgpack:"v"`
	SagaID       string      `msgpack:"saga_id"`
	WorkflowType string      `msgpack:"workflow_type"`
	Decided      bool        `msgpack:"decided,omitempty"`
	Events       []wireEvent `msgpack:"events"`
	// Format 2 only: the run's position (RunPosition).
	Run         uint32 `msgpack:"run,omitempty"`
	RunStartID  uint64 `msgpack:"run_start_event_id,omitempty"`
	RunStartSeq uint64 `msgpack:"run_start_seq,omitempty"`
}

type wireEvent struct {
	ID       uint64             `msgpack:"id"`
	Type     EventType          `msgpack:"type"`
	Category Category           `msgpack:"category"`
	Time     time.Time          `msgpack:"time"`
	Attrs    msgpack.RawMessage `msgpack:"attrs"`
}

// FirstEventID is the id of the commit's first event.
func (c *Commit) FirstEventID() uint64 { return c.Events[0].ID }

// NextEventID is the id the event after this commit gets.
func (c *Commit) NextEventID() uint64 { return c.Events[len(c.Events)-1].ID + 1 }

// Encode validates the commit and encodes it, and records the size
// (EncodedSize) for the history limits. Not safe to call concurrently on
// one commit.
func (c *Commit) Encode() ([]byte, error) {
	if err := ValidateID("saga id", c.SagaID); err != nil {
		return nil, err
	}
	if len(c.Events) == 0 {
		return nil, fmt.Errorf("%w: a commit needs at least one event", ErrCodec)
	}
	if err := ValidateID("workflow type", c.WorkflowType); err != nil {
		return nil, err
	}
	w := wireCommit{Format: commitFormatFirstRun, SagaID: c.SagaID, WorkflowType: c.WorkflowType, Decided: c.Decided, Events: make([]wireEvent, len(c.Events))}
	if !c.Run.FirstRun() {
		w.Format, w.Run, w.RunStartID, w.RunStartSeq = commitFormatRuns, c.Run.Run, c.Run.StartEventID, c.Run.StartSeq
	}
	for i, e := range c.Events {
		spec, ok := eventSpecs[e.Type]
		if !ok {
			return nil, fmt.Errorf("%w: event type %q is not supported", ErrCodec, e.Type)
		}
		if i > 0 && e.ID != c.Events[i-1].ID+1 {
			return nil, fmt.Errorf("%w: event ids not contiguous: %d after %d", ErrCodec, e.ID, c.Events[i-1].ID)
		}
		attrs, err := Marshal(e.Attrs)
		if err != nil {
			return nil, err
		}
		w.Events[i] = wireEvent{ID: e.ID, Type: e.Type, Category: spec.category, Time: e.Time.UTC(), Attrs: attrs}
	}
	if err := checkRuns(c); err != nil {
		return nil, err
	}
	data, err := Marshal(&w)
	if err != nil {
		return nil, err
	}
	// The writer applies the reader's checks: a commit that no node could
	// decode is never appended. Values were checked where they were made;
	// this catches whatever else could nest too deep.
	if err := CheckMsgpack(data); errors.Is(err, errTooDeep) {
		return nil, fmt.Errorf("%w: commit of saga %s nests deeper than a reader accepts", ErrTooLarge, c.SagaID)
	} else if err != nil {
		return nil, err
	}
	c.size = len(data)
	return data, nil
}

// DecodeCommit decodes an untrusted history message. Every event must be
// of a known type with well-formed attributes and the ids must be
// contiguous.
func DecodeCommit(data []byte) (*Commit, error) {
	var w wireCommit
	if err := Unmarshal(data, &w); err != nil {
		return nil, err
	}
	switch {
	case w.Format > commitFormat:
		// Written by a newer engine: a node that knows the format can read it.
		return nil, fmt.Errorf("%w: commit format %d (this node reads formats up to %d)", ErrUnsupported, w.Format, commitFormat)
	case w.Format < commitFormatFirstRun:
		return nil, fmt.Errorf("%w: commit format %d is not valid", ErrCodec, w.Format)
	case w.Format == commitFormatFirstRun && (w.Run != 0 || w.RunStartID != 0 || w.RunStartSeq != 0):
		return nil, fmt.Errorf("%w: a format %d commit names a run", ErrCodec, w.Format)
	case w.Format == commitFormatRuns && w.Run < 2:
		return nil, fmt.Errorf("%w: a format %d commit of run %d (runs after the first are numbered from 2)", ErrCodec, w.Format, w.Run)
	}
	if err := ValidateID("saga id", w.SagaID); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	if err := ValidateID("workflow type", w.WorkflowType); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCodec, err)
	}
	if len(w.Events) == 0 {
		return nil, fmt.Errorf("%w: commit without events", ErrCodec)
	}
	c := &Commit{SagaID: w.SagaID, WorkflowType: w.WorkflowType, Decided: w.Decided, Events: make([]Event, len(w.Events)),
		Run: RunPosition{Run: w.Run, StartEventID: w.RunStartID, StartSeq: w.RunStartSeq}, size: len(data)}
	for i, we := range w.Events {
		spec, ok := eventSpecs[we.Type]
		if !ok {
			if ValidateID("event type", string(we.Type)) != nil {
				return nil, fmt.Errorf("%w: event %d has type %q", ErrCodec, we.ID, we.Type)
			}
			// A well-formed name this node does not know: a newer engine's.
			return nil, fmt.Errorf("%w: event %d has type %s, which this node does not know", ErrUnsupported, we.ID, we.Type)
		}
		if i > 0 && we.ID != w.Events[i-1].ID+1 {
			return nil, fmt.Errorf("%w: event ids not contiguous: %d after %d", ErrCodec, we.ID, w.Events[i-1].ID)
		}
		attrs := spec.newAttrs()
		// Part of the commit, which Unmarshal checked as a whole.
		if err := decodeChecked(we.Attrs, attrs); err != nil {
			return nil, fmt.Errorf("event %d %s attributes: %w", we.ID, we.Type, err)
		}
		c.Events[i] = Event{ID: we.ID, SagaID: w.SagaID, Type: we.Type, Category: spec.category, Time: we.Time, Attrs: attrs}
	}
	if err := checkRuns(c); err != nil {
		return nil, err
	}
	return c, nil
}

// checkRuns checks a commit's run position against its events, for
// writers and readers alike: a run ends with WorkflowExecutionContinuedAsNew
// followed, in the same commit, by the next run's start and nothing else;
// only the first run starts at event 0; a commit of a later run that does
// not start it names a start before its first event.
func checkRuns(c *Commit) error {
	for i, e := range c.Events {
		switch a := e.Attrs.(type) {
		case *WorkflowExecutionContinuedAsNewAttrs:
			if i != len(c.Events)-2 || c.Events[i+1].Type != WorkflowExecutionStarted {
				return fmt.Errorf("%w: event %d %s is not followed by the next run's %s, last in its commit", ErrCodec, e.ID, e.Type, WorkflowExecutionStarted)
			}
			if c.Run.Run != a.NextRun {
				return fmt.Errorf("%w: event %d %s starts run %d in a commit of run %d", ErrCodec, e.ID, e.Type, a.NextRun, c.Run.Run)
			}
		case *WorkflowExecutionStartedAttrs:
			switch {
			case e.ID == 0 && a.Continued != nil:
				return fmt.Errorf("%w: the saga's first start continues run %d", ErrCodec, a.Continued.Run)
			case e.ID == 0 && !c.Run.FirstRun():
				return fmt.Errorf("%w: the saga's first start in a commit of run %d", ErrCodec, c.Run.Run)
			case e.ID == 0:
				continue
			case a.Continued == nil:
				return fmt.Errorf("%w: event %d is a second %s that continues no run", ErrCodec, e.ID, e.Type)
			case i == 0 || c.Events[i-1].Type != WorkflowExecutionContinuedAsNew:
				return fmt.Errorf("%w: event %d %s of run %d does not follow a %s", ErrCodec, e.ID, e.Type, a.Continued.Run, WorkflowExecutionContinuedAsNew)
			case a.Continued.Run != c.Run.Run || c.Run.StartEventID != e.ID || c.Run.StartSeq != 0 || a.Continued.PreviousEventID != e.ID-1:
				return fmt.Errorf("%w: event %d starts run %d (after event %d), the commit names run %d starting at event %d, sequence %d",
					ErrCodec, e.ID, a.Continued.Run, a.Continued.PreviousEventID, c.Run.Run, c.Run.StartEventID, c.Run.StartSeq)
			}
		}
	}
	switch {
	case c.Run.FirstRun():
		return nil
	case c.Run.StartSeq == 0 && c.StartsRun() < 0:
		return fmt.Errorf("%w: a commit of run %d names its start (event %d) as held, and holds no start", ErrCodec, c.Run.Run, c.Run.StartEventID)
	case c.Run.StartSeq != 0 && c.Run.StartEventID >= c.FirstEventID():
		return fmt.Errorf("%w: a commit of run %d from event %d names the run's start at event %d, not before it", ErrCodec, c.Run.Run, c.FirstEventID(), c.Run.StartEventID)
	}
	return nil
}

// commitMsgID derives the Nats-Msg-Id of an encoded commit from what it
// holds: saga, first event id and a digest of the bytes. A writer retrying
// its own publish sends the same id and is deduplicated; a different writer
// at the same position has a different id and meets the concurrency check
// instead of being mistaken for a duplicate.
func commitMsgID(sagaID string, firstEventID uint64, encoded []byte) string {
	sum := sha256.Sum256(encoded)
	return sagaID + ":" + strconv.FormatUint(firstEventID, 10) + ":" + hex.EncodeToString(sum[:12])
}
