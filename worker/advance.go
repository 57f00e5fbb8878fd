package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// inputsFunc returns the input events a writer wants to add to a saga,
// given its current state; nil when there is nothing (any more) to add.
// It is called again after every concurrency conflict, with fresh state.
type inputsFunc func(st *stream.State) []stream.Event

// advanceRequest says what advance should do for one saga.
type advanceRequest struct {
	sagaID string
	// delivered is the commit a consumer just delivered, if any: applied
	// directly when it is the next one the view expects.
	delivered *stream.StoredCommit
	// inputs adds events from outside the workflow (activity results).
	inputs inputsFunc
	// fresh says whether to check for commits the view has not seen before
	// appending, or to let a conflict tell.
	fresh freshness
	// minSeq, when set, is a stream sequence the state must reach: the
	// commit a workflow task is about, when the task does not carry it.
	minSeq uint64
	// needEvent, when set, is an event id the state must include: the
	// scheduled event an activity result refers to.
	needEvent *uint64
	// decide runs the workflow code to make the next decision. When false
	// (the node only records a result), the code runs only if the
	// workflow is registered here, and a saga this node cannot replay is
	// not blocked by it.
	decide bool
	// wake is an operator's request to re-evaluate the saga: a failure
	// that might pass (a deadlock) blocks at once.
	wake bool
}

// maxConflicts bounds the retries of one advance after concurrency
// conflicts; each one means another writer made progress.
const maxConflicts = 20

// conflictPolicy spaces the retries after a lost append race, with jitter
// so that writers racing on one saga do not race again in step.
var conflictPolicy = backoff.Policy{Initial: 2 * time.Millisecond, Max: 200 * time.Millisecond}

// contendedFor is how long a saga counts as contended after a lost race.
const contendedFor = time.Second

// patientDeadlocks is how many deadlock verdicts a node reaches on one saga
// before it blocks it: a deadlock may be a CPU starved for a moment, so
// the first ones are retried. It counts verdicts, not deliveries: a
// delivery that failed for another reason (NATS away) is no evidence.
const patientDeadlocks = 5

// errBehind means the history read lags behind what the node knows exists
// (a stream replica serving a read before it has caught up): retry later
// rather than decide on a state that misses events.
var errBehind = errors.New("history read is behind the commit being processed")

// errNewerCode means the history was written by newer workflow code than
// this node runs (a rolling deploy): a node with that code decides.
var errNewerCode = errors.New("saga history is newer than this node's workflow code")

// isNewerCode reports a history this node must leave to other nodes:
// newer workflow code than this node's wrote it (a higher workflow
// version, or a change id the code does not know), or its values are
// sealed with a key this node lacks.
func isNewerCode(err error) bool {
	return errors.Is(err, errNewerCode) || errors.Is(err, replay.ErrNewerHistory) || errors.Is(err, errCannotOpen)
}

// errCannotOpen is a saga whose values are sealed with a key this node
// does not hold (a node started before the fleet turned sealing on, or
// during a key rotation). Failing the saga for it would be a verdict on
// the saga taken from one node's configuration: the node leaves it to
// the nodes that hold the key, and says so loudly.
var errCannotOpen = errors.New("the saga's values are sealed with a payload key this node does not hold (give it the fleet's --payload-key)")

// checkCanOpen returns errCannotOpen when an event carries a value the
// workflow code would open and this node's codec cannot.
func (n *Node) checkCanOpen(sagaID string, events []stream.Event) error {
	for _, e := range events {
		for _, p := range stream.WorkflowPayloads(e) {
			if !stream.CanOpen(n.opts.Codec, p) {
				return fmt.Errorf("%w: saga %s, event %d %s", errCannotOpen, sagaID, e.ID, e.Type)
			}
		}
	}
	return nil
}

// advance brings the saga's view up to date, adds the requested inputs,
// lets the workflow code decide, and appends inputs and decision as one
// commit, expecting the saga's last sequence: the optimistic-concurrency
// loop, and nothing else.
func (n *Node) advance(ctx context.Context, req advanceRequest) (err error) {
	step := n.beginStep(ctx, req.sagaID)
	defer func() { step.end(err) }()
	e := n.cache.acquire(req.sagaID)
	done := false
	defer func() { n.cache.release(e, done) }()
	v := &e.view

	delivered := req.delivered
	// inputsAlone: append the inputs without a decision and leave the
	// decision to the dispatcher: while the saga is contended (a race was
	// lost on it lately: a fan-out's results arriving together), or when
	// inputs and decision do not fit one message together. A machine is
	// then never fed inputs that may not land, so it is not rebuilt once per
	// lost race.
	inputsAlone := n.clock.Now().Before(e.contendedUntil)
	var forceBlock error // set when the decision itself cannot be stored
	for attempt := 0; ; attempt++ {
		fresh := req.fresh
		if attempt > 0 || req.needEvent != nil && (!v.known() || v.state.NextEventID <= *req.needEvent) {
			fresh = readLatest // a conflict said the view is behind, or it lacks the event
		}
		if err := n.catchUp(ctx, v, delivered, fresh); err != nil {
			v.reset()
			return err
		}
		st := v.state
		if delivered != nil && st.LastSeq < delivered.Seq || st.LastSeq < req.minSeq ||
			req.needEvent != nil && st.NextEventID <= *req.needEvent {
			v.reset()
			return errBehind
		}
		n.noteHistoryLength(st)
		delivered = nil
		if !st.Exists() || st.Status.Terminal() {
			done = st.Status.Terminal()
			return nil
		}
		var inputs []stream.Event
		if req.inputs != nil {
			inputs = stampEvents(req.inputs(st), st.NextEventID, req.sagaID, n.clock.Now())
		}
		if len(inputs) == 0 && !req.decide {
			return nil
		}
		var d decision
		if inputsAlone && len(inputs) > 0 {
			d = decision{commit: st.NewCommit(inputs, false)}
		} else {
			var err error
			step.decide(st)
			d, err = n.decideCommit(ctx, e, req, inputs, forceBlock)
			if errors.Is(err, replay.ErrStale) && attempt < maxConflicts {
				v.reset() // the view was behind a value recorded elsewhere
				continue
			}
			if err != nil {
				v.abandon()
				return err
			}
		}
		if d.commit == nil {
			return nil
		}
		if err := n.hooks.beforeAppend(ctx, req.sagaID, d.commit); err != nil {
			v.reset()
			return err
		}
		seq, err := n.store.Append(ctx, d.commit, st.LastSeq)
		if err == nil {
			n.hooks.afterAppend(ctx, req.sagaID, d.commit)
			step.appended(st, d.commit, seq)
			if err := v.committed(ctx, d.commit, seq, d.fed); err != nil {
				v.reset()
				return nil // appended; the next use reads the history again
			}
			n.stats.commits.Add(1)
			done = v.state.Status.Terminal()
			if d.blocked != nil {
				n.reportBlocked(req.sagaID, st.WorkflowType, d)
			}
			n.noteHistoryLength(v.state)
			return nil
		}
		v.abandon()
		step.appendFailed(st, err)
		if errors.Is(err, stream.ErrTooLarge) && len(d.commit.Events) > len(inputs) {
			switch {
			case len(inputs) > 0 && !inputsAlone:
				// Inputs and decision do not fit together: the inputs
				// go first, the decision in a commit of its own.
				inputsAlone = true
				continue
			case len(inputs) == 0 && forceBlock == nil:
				// The decision alone does not fit in a message: block the
				// saga with the reason.
				forceBlock = &commitTooLargeError{err: err}
				continue
			}
		}
		if !errors.Is(err, stream.ErrConcurrency) || attempt >= maxConflicts {
			v.reset()
			return err
		}
		// Lost a race: record the inputs alone from now on, and for a while
		// on this saga.
		inputsAlone = true
		e.contendedUntil = n.clock.Now().Add(contendedFor)
		n.stats.conflicts.Add(1)
		n.log.Debug("append conflict, catching up", "saga_id", req.sagaID, "attempt", attempt+1)
		if err := n.clock.Sleep(ctx, conflictPolicy.Delay(attempt+1)); err != nil {
			return err
		}
	}
}

// decision is the commit one advance appends.
type decision struct {
	commit *stream.Commit
	// fed is how many of the commit's first events the machine has seen.
	fed int
	// blocked is why the commit blocks the saga, if it does.
	blocked error
}

// decideCommit builds the commit of one advance: the inputs, then the
// decision of the workflow code. When the code cannot be replayed, the
// verdict (see verdictOn) says what happens: the saga is blocked (the
// inputs are still recorded, followed by a WorkflowExecutionBlocked event
// unless the saga is already blocked for the same reason), or the inputs
// are recorded without a decision, or the error is returned for a retry.
func (n *Node) decideCommit(ctx context.Context, e *sagaEntry, req advanceRequest, inputs []stream.Event, forceBlock error) (decision, error) {
	v := &e.view
	st := v.state
	var d decision
	events := inputs
	var m *replay.Machine
	err := n.checkCanOpen(v.id, inputs)
	switch {
	case err != nil && req.decide:
		return decision{}, err
	case err == nil:
		m, err = n.machineFor(ctx, v, req.decide)
	}
	if err == nil && forceBlock != nil {
		err = forceBlock
	}
	continued := false
	if err == nil {
		if err = v.feedSpeculative(ctx, inputs); err == nil {
			d.fed = len(inputs)
			next := st.NextEventID + uint64(len(inputs))
			if st.Status == stream.StatusBlocked {
				// The code replays now (new code, or a woken saga): say so,
				// so that the saga shows as running even if the code has
				// nothing new to decide yet.
				events = append(events, stream.Event{ID: next, SagaID: v.id, Type: stream.WorkflowExecutionUnblocked, Time: n.clock.Now(),
					Attrs: &stream.WorkflowExecutionUnblockedAttrs{Node: n.opts.NodeName}})
				next++
			}
			events = append(events, m.Propose(next, n.clock.Now())...)
			if nextRun := m.NextRun(); nextRun != nil && len(events) > 0 && events[len(events)-1].Type == stream.WorkflowExecutionContinuedAsNew {
				// The run ends; the next one starts in the same commit, so
				// that no reader ever sees the one without the other.
				start, serr := n.nextRunStart(st, events, nextRun)
				if serr != nil {
					return decision{}, serr
				}
				events = append(events, start)
				continued = true
			}
			if forceBlock == nil {
				if tooLong := n.historyTooLong(st, inputs, events); tooLong != nil {
					// The decision is not appended: the code makes it again
					// (the machine still proposes it) once the limit is
					// raised and the saga woken. The inputs are recorded
					// with the block.
					events = events[:len(inputs)]
					d.blocked = tooLong
					if blocked := n.blockedEvent(st, tooLong, st.NextEventID+uint64(len(inputs))); blocked != nil {
						events = append(events, *blocked)
					}
					continued = false
				}
			}
		}
	}
	if err != nil {
		v.dropMachine()
		d.fed = 0
		switch n.verdictOn(err, e, req) {
		case verdictRetry:
			return decision{}, err
		case verdictBlock:
			d.blocked = err
			v.noMachine = true
			if blocked := n.blockedEvent(st, err, st.NextEventID+uint64(len(inputs))); blocked != nil {
				events = append(events, *blocked)
			}
		case verdictInputsOnly:
		}
	}
	if len(events) == 0 {
		return decision{}, nil
	}
	// Decided: the code saw every input, or this commit blocks the saga.
	// Inputs recorded without the code (a saga already blocked, a node
	// without the workflow or with older code) are not decided: the
	// dispatcher then asks a node that can.
	//
	// A commit that starts the next run holds that run's start, an input
	// its code has not seen: not decided, so that the dispatcher asks for
	// the new run's first decision.
	decided := (err == nil || d.blocked != nil) && !continued
	d.commit = st.NewCommit(events, decided)
	return d, nil
}

type verdict int

const (
	verdictRetry      verdict = iota // return the error: the message is retried later
	verdictBlock                     // block the saga
	verdictInputsOnly                // record the inputs, decide nothing
)

// verdictOn decides what a failure to run the workflow code means.
//
//   - A replay that proves the code and the history disagree (non-
//     determinism, a panic, an inconsistent history, a decision too large
//     to store) blocks the saga: retrying cannot help.
//   - A history written by newer code than this node's (a rolling deploy:
//     a higher workflow version, a change id this code does not know) is
//     left to a node with that code: never blocked from here.
//   - A deadlock (maybe a starved CPU) blocks only after patientDeadlocks
//     verdicts on this node, or at once when an operator wakes the saga.
//   - Anything else (NATS unavailable, a canceled context) is retried.
//
// A node that only records a result (decide false) records it without a
// decision instead of retrying, and the dispatcher gets the decision made
// elsewhere.
func (n *Node) verdictOn(err error, e *sagaEntry, req advanceRequest) verdict {
	var nde *replay.NonDeterminismError
	var pe *replay.PanicError
	var tooLarge *commitTooLargeError
	switch {
	case errors.Is(err, replay.ErrStale):
		return verdictRetry
	case errors.Is(err, errAlreadyBlocked), errors.Is(err, errNotRegistered):
		return verdictInputsOnly
	case isNewerCode(err):
		if req.decide {
			return verdictRetry
		}
		return verdictInputsOnly
	case errors.As(err, &nde), errors.As(err, &pe), errors.As(err, &tooLarge), errors.Is(err, replay.ErrCorruptHistory):
		return verdictBlock
	case errors.Is(err, saga.ErrUnknownWorkflowType):
		return verdictRetry
	case errors.Is(err, replay.ErrDeadlock):
		e.deadlocks++
		if req.wake || e.deadlocks >= patientDeadlocks {
			return verdictBlock
		}
	}
	if req.decide {
		return verdictRetry
	}
	return verdictInputsOnly
}

var errNotRegistered = errors.New("workflow type not registered on this node")

// errAlreadyBlocked stops a node from replaying, again, a saga it blocked.
var errAlreadyBlocked = errors.New("saga is blocked")

// commitTooLargeError blocks a saga whose next decision does not fit in
// one message.
type commitTooLargeError struct{ err error }

func (e *commitTooLargeError) Error() string {
	return "the workflow's next decision does not fit in one message: " + e.err.Error()
}

func (e *commitTooLargeError) Unwrap() error { return e.err }

// workflowFor finds the saga's workflow definition.
func (n *Node) workflowFor(st *stream.State, decide bool) (*saga.RegisteredWorkflow, error) {
	wf, ok := n.reg.Workflow(st.WorkflowType)
	switch {
	case ok:
		return wf, nil
	case !decide:
		return nil, errNotRegistered
	}
	return nil, fmt.Errorf("%w: %q (this node registers: %s)", saga.ErrUnknownWorkflowType,
		st.WorkflowType, strings.Join(n.reg.WorkflowNames(), ", "))
}

// blockedEvent returns the WorkflowExecutionBlocked event for a replay
// failure, or nil when the saga is already blocked with that message.
func (n *Node) blockedEvent(st *stream.State, cause error, id uint64) *stream.Event {
	if errors.Is(cause, errAlreadyBlocked) {
		return nil
	}
	attrs := &stream.WorkflowExecutionBlockedAttrs{Reason: blockReason(cause), Message: cause.Error(), Node: n.opts.NodeName}
	var nde *replay.NonDeterminismError
	if errors.As(cause, &nde) {
		attrs.AtEventID = nde.EventID
	}
	var pe *replay.PanicError
	if errors.As(cause, &pe) {
		attrs.Message = pe.Error() + "\n" + pe.Stack
	}
	// The same failure again adds nothing (a panic's stack differs from
	// goroutine to goroutine, so compare the first line only; a run too
	// long says how long, which inputs change).
	if st.Blocked != nil && st.Blocked.Reason == attrs.Reason &&
		(attrs.Reason == stream.BlockedHistoryTooLong || firstLine(st.Blocked.Message) == firstLine(attrs.Message)) {
		return nil
	}
	return &stream.Event{ID: id, SagaID: st.SagaID, Type: stream.WorkflowExecutionBlocked, Time: n.clock.Now(), Attrs: attrs}
}

func blockReason(err error) string {
	var nde *replay.NonDeterminismError
	var pe *replay.PanicError
	var tooLong *historyTooLongError
	switch {
	case errors.As(err, &tooLong):
		return stream.BlockedHistoryTooLong
	case errors.As(err, &nde):
		return stream.BlockedNonDeterminism
	case errors.As(err, &pe):
		return stream.BlockedPanic
	case errors.Is(err, replay.ErrDeadlock):
		return stream.BlockedDeadlock
	case errors.Is(err, stream.ErrTooLarge):
		return stream.BlockedCommitTooLarge
	}
	return stream.BlockedHistoryUnreadable // replay.ErrCorruptHistory
}

// stampEvents numbers input events from next and sets their saga and time.
func stampEvents(events []stream.Event, next uint64, sagaID string, now time.Time) []stream.Event {
	for i := range events {
		events[i].ID = next + uint64(i)
		events[i].SagaID = sagaID
		events[i].Category = stream.CategoryOf(events[i].Type)
		if events[i].Time.IsZero() {
			events[i].Time = now
		}
	}
	return events
}

func (h *Hooks) beforeAppend(ctx context.Context, sagaID string, c *stream.Commit) error {
	if h == nil || h.BeforeAppend == nil {
		return nil
	}
	return h.BeforeAppend(ctx, sagaID, c)
}

func (h *Hooks) afterAppend(ctx context.Context, sagaID string, c *stream.Commit) {
	if h != nil && h.AfterAppend != nil {
		h.AfterAppend(ctx, sagaID, c)
	}
}
