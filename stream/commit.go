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

// commitFormat is the envelope version written in every commit.
const commitFormat = 1

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

// Encode validates the commit and encodes it.
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
	w := wireCommit{Format: commitFormat, SagaID: c.SagaID, WorkflowType: c.WorkflowType, Decided: c.Decided, Events: make([]wireEvent, len(c.Events))}
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
		return nil, fmt.Errorf("%w: commit format %d (this node reads format %d)", ErrUnsupported, w.Format, commitFormat)
	case w.Format != commitFormat:
		return nil, fmt.Errorf("%w: commit format %d is not valid", ErrCodec, w.Format)
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
	c := &Commit{SagaID: w.SagaID, WorkflowType: w.WorkflowType, Decided: w.Decided, Events: make([]Event, len(w.Events))}
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
	return c, nil
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
