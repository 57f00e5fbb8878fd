package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jetsaga/saga"
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
	// directly when it is the next one the cache expects.
	delivered *stream.StoredCommit
	// inputs adds events from outside the workflow (activity results).
	inputs inputsFunc
	// fresh says whether to check for commits the cache has not seen
	// before appending, or to let a conflict tell.
	fresh freshness
	// minSeq, when set, is a stream sequence the state must reach: the
	// commit a workflow task is about, when the task does not carry it.
	minSeq uint64
	// needEvent, when set, is an event id the state must include: the
	// scheduled event an activity result refers to. A cache that does not
	// have it yet is behind, whatever fresh says.
	needEvent *uint64
	// decide runs the workflow code to make the next decision. When false
	// (the node only records a result), the code runs only if the
	// workflow is registered here, and a saga this node cannot replay is
	// not blocked by it.
	decide bool
	// lastChance blocks the saga on failures that might pass (a deadlock,
	// a workflow type this node lacks): set after repeated deliveries, or
	// when an operator wakes the saga.
	lastChance bool
}

// maxConflicts bounds the retries of one advance after concurrency
// conflicts; each one means another writer made progress.
const maxConflicts = 20

// errBehind means the history read lags behind what the node knows exists
// (a stream replica serving a read before it has caught up): retry later
// rather than decide on a state that misses events.
var errBehind = errors.New("history read is behind the commit being processed")

// advance brings the saga's cached state up to date, adds the requested
// inputs, lets the workflow code decide, and appends inputs and decision
// as one commit with the saga's last sequence as the expected one.
func (n *Node) advance(ctx context.Context, req advanceRequest) error {
	e := n.cache.acquire(req.sagaID)
	done := false
	defer func() { n.cache.release(e, done) }()

	delivered := req.delivered
	var forceBlock error // set when the decision itself cannot be stored
	for attempt := 0; ; attempt++ {
		fresh := req.fresh
		if attempt > 0 || req.needEvent != nil && (e.state == nil || e.state.NextEventID <= *req.needEvent) {
			fresh = readLatest // a conflict said the cache is behind, or it lacks the event
		}
		if err := n.catchUp(ctx, e, delivered, fresh); err != nil {
			var ce *stream.CodecError
			if errors.As(err, &ce) {
				// A message no engine wrote sits in the history. Nothing
				// can be decided on it; describe shows the saga as blocked.
				n.log.Error("saga history is unreadable", "saga_id", req.sagaID, "err", err)
				e.reset()
				return nil
			}
			e.reset()
			return err
		}
		st := e.state
		if delivered != nil && st.LastSeq < delivered.Seq || st.LastSeq < req.minSeq ||
			req.needEvent != nil && st.NextEventID <= *req.needEvent {
			e.reset()
			return errBehind
		}
		delivered = nil
		if !st.Exists() || st.Status.Terminal() {
			done = st.Status.Terminal()
			return nil
		}
		var inputs []stream.Event
		if req.inputs != nil {
			inputs = stampEvents(req.inputs(st), st.NextEventID, req.sagaID)
		}
		if len(inputs) == 0 && !req.decide {
			return nil
		}
		d, err := n.decideCommit(ctx, e, req, inputs, forceBlock)
		if errors.Is(err, replay.ErrStale) && attempt < maxConflicts {
			e.reset() // the cache was behind a value recorded elsewhere
			continue
		}
		if err != nil {
			e.reset()
			return err
		}
		if d.commit == nil {
			return nil
		}
		if err := n.hooks.beforeAppend(ctx, req.sagaID, d.commit); err != nil {
			e.reset()
			return err
		}
		seq, err := n.store.Append(ctx, d.commit, st.LastSeq)
		if err == nil {
			n.hooks.afterAppend(ctx, req.sagaID, d.commit)
			done = n.committed(e, d.commit, seq, len(inputs))
			if d.blocked != nil {
				n.log.Warn("saga blocked", "saga_id", req.sagaID, "reason", blockReason(d.blocked), "err", d.blocked)
			}
			return nil
		}
		if errors.Is(err, stream.ErrTooLarge) && forceBlock == nil && len(d.commit.Events) > len(inputs) {
			// The inputs fit (each is within the payload limit) but not with
			// the decision: record them and block the saga with the reason.
			forceBlock = &commitTooLargeError{err: err}
			e.reset()
			continue
		}
		if !errors.Is(err, stream.ErrConcurrency) || attempt >= maxConflicts {
			e.reset()
			return err
		}
		// Someone else appended first. A machine fed inputs that did not
		// land has seen events in the wrong order: rebuild it. One that
		// only proposed commands is still right and just catches up.
		if d.fedInputs || d.blocked != nil {
			e.reset()
		}
		n.stats.conflicts.Add(1)
		n.log.Debug("append conflict, catching up", "saga_id", req.sagaID, "attempt", attempt+1)
		if err := sleepCtx(ctx, time.Duration(attempt)*5*time.Millisecond); err != nil {
			return err
		}
	}
}

// decision is the commit one advance appends.
type decision struct {
	commit *stream.Commit
	// fedInputs: the machine has seen the commit's inputs.
	fedInputs bool
	// blocked is why the commit blocks the saga, if it does.
	blocked error
}

// decideCommit builds the commit of one advance: the inputs, then the
// decision of the workflow code. When the code cannot be replayed, what
// happens depends on why (see replayOutcome): the saga is blocked (the
// inputs are still recorded, followed by a WorkflowExecutionBlocked event
// unless the saga is already blocked for the same reason), or the inputs
// are recorded without a decision, or the error is returned for a retry.
func (n *Node) decideCommit(ctx context.Context, e *sagaEntry, req advanceRequest, inputs []stream.Event, forceBlock error) (decision, error) {
	st := e.state
	var d decision
	events := inputs
	m, err := n.machineFor(ctx, e, req.decide)
	if err == nil && forceBlock != nil {
		err = forceBlock
	}
	if err == nil {
		d.fedInputs = len(inputs) > 0
		if err = m.Feed(ctx, inputs...); err == nil {
			next := st.NextEventID + uint64(len(inputs))
			if st.Status == stream.StatusBlocked {
				// The code replays now (new code, or a woken saga): say so,
				// so that the saga shows as running even if the code has
				// nothing new to decide yet.
				events = append(events, stream.Event{ID: next, SagaID: e.id, Type: stream.WorkflowExecutionUnblocked, Time: time.Now(),
					Attrs: &stream.WorkflowExecutionUnblockedAttrs{Node: n.opts.NodeName}})
				next++
			}
			events = append(events, m.Propose(next, time.Now())...)
		}
	}
	if err != nil {
		if e.machine != nil {
			e.machine.Close()
			e.machine = nil
		}
		switch replayOutcome(err, req) {
		case outcomeRetry:
			return decision{}, err
		case outcomeBlock:
			d.blocked = err
			e.noMachine = true
			if blocked := n.blockedEvent(st, err, st.NextEventID+uint64(len(inputs))); blocked != nil {
				events = append(events, *blocked)
			}
		case outcomeInputsOnly:
		}
	}
	if len(events) == 0 {
		return decision{}, nil
	}
	// Decided: the code saw every input, or this commit blocks the saga.
	// Inputs recorded for a saga already blocked are not decided: a node
	// with code that replays gets a workflow task for them.
	decided := err == nil || d.blocked != nil
	d.commit = &stream.Commit{SagaID: e.id, WorkflowType: st.WorkflowType, Decided: decided, Events: events}
	return d, nil
}

type outcome int

const (
	outcomeRetry      outcome = iota // return the error: the message is retried later
	outcomeBlock                     // block the saga
	outcomeInputsOnly                // record the inputs, decide nothing
)

// replayOutcome decides what a failure to run the workflow code means.
//
//   - A replay that proves the code and the history disagree (non-
//     determinism, a panic, an inconsistent history, a decision too large
//     to store) blocks the saga: retrying cannot help.
//   - A deadlock (maybe a starved CPU) blocks only on the last chance;
//     before that the workflow task is retried, and a node recording a
//     result records it without a decision.
//   - A workflow type this node does not register (only Wake can meet
//     one: workflow tasks go to the nodes that register their type) is an
//     error for the caller.
//   - Anything else (NATS unavailable, a canceled context) is retried; a
//     result is recorded without a decision, for which the dispatcher then
//     sends a workflow task.
func replayOutcome(err error, req advanceRequest) outcome {
	var nde *replay.NonDeterminismError
	var pe *replay.PanicError
	var tooLarge *commitTooLargeError
	switch {
	case errors.Is(err, replay.ErrStale):
		return outcomeRetry
	case errors.Is(err, errAlreadyBlocked), errors.Is(err, errNotRegistered):
		return outcomeInputsOnly
	case errors.As(err, &nde), errors.As(err, &pe), errors.As(err, &tooLarge), errors.Is(err, replay.ErrCorruptHistory):
		return outcomeBlock
	case errors.Is(err, saga.ErrUnknownWorkflowType):
		return outcomeRetry
	case errors.Is(err, replay.ErrDeadlock):
		if req.lastChance {
			return outcomeBlock
		}
	}
	if req.decide {
		return outcomeRetry
	}
	return outcomeInputsOnly
}

var errNotRegistered = errors.New("workflow type not registered on this node")

// commitTooLargeError blocks a saga whose next decision does not fit in
// one message.
type commitTooLargeError struct{ err error }

func (e *commitTooLargeError) Error() string {
	return "the workflow's next decision does not fit in one message: " + e.err.Error()
}

func (e *commitTooLargeError) Unwrap() error { return e.err }

// machineFor returns the saga's machine, building it by replaying the
// history when the cache has none.
func (n *Node) machineFor(ctx context.Context, e *sagaEntry, decide bool) (*replay.Machine, error) {
	if e.machine != nil {
		return e.machine, nil
	}
	if e.noMachine {
		if e.state.Status == stream.StatusBlocked {
			return nil, errAlreadyBlocked
		}
		// Another node decided since this one blocked the saga: try again.
		e.noMachine = false
	}
	wf, err := n.workflowFor(e.state, decide)
	if err != nil {
		return nil, err
	}
	commits, err := n.store.Read(ctx, e.id, 0)
	if err != nil {
		return nil, err
	}
	if len(commits) == 0 || commits[len(commits)-1].Seq < e.state.LastSeq {
		return nil, errBehind // a lagging replica answered the read
	}
	return n.newMachine(e, wf, commits)
}

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

// errAlreadyBlocked stops a node from replaying, again, a saga it blocked.
var errAlreadyBlocked = errors.New("saga is blocked")

// newMachine replays commits, up to the entry's state, into a new machine.
func (n *Node) newMachine(e *sagaEntry, wf *saga.RegisteredWorkflow, commits []stream.StoredCommit) (*replay.Machine, error) {
	m := replay.New(replay.Config{
		SagaID:           e.id,
		WorkflowType:     wf.Name,
		Workflow:         wf.Func,
		Logger:           n.log,
		DeadlockTimeout:  n.opts.DeadlockTimeout,
		ActivityDefaults: stream.ActivityOptions{StartToCloseTimeout: n.opts.DefaultActivityTimeout},
		MaxPayloadSize:   n.opts.Stream.MaxPayloadSize,
	})
	// One Feed for the whole history, so that code replaying an early input
	// already sees the markers recorded after it.
	if err := m.Feed(context.TODO(), eventsUpTo(commits, e.state.LastSeq)...); err != nil {
		m.Close()
		return nil, err
	}
	e.machine = m
	n.stats.replays.Add(1)
	return m, nil
}

// How catchUp treats a saga the node already knows.
type freshness int

const (
	// trustCache appends on what the cache knows; a stale cache shows up as
	// a concurrency conflict, after which the saga is read again.
	trustCache freshness = iota
	// readLatest checks the saga's last commit first (one cheap direct get)
	// and reads what the cache lacks.
	readLatest
)

// catchUp makes e.state (and e.machine) current enough to append on.
//
// A delivered commit that continues what the cache holds is applied
// without a read; so is the first commit of a saga the node does not know.
// Otherwise a saga the node does not know is read in full and, if its
// workflow is registered here, replayed into a machine at once, so that the
// history is read once.
func (n *Node) catchUp(ctx context.Context, e *sagaEntry, delivered *stream.StoredCommit, fresh freshness) error {
	if delivered != nil {
		switch {
		case e.state != nil && delivered.Seq <= e.state.LastSeq:
			return nil // seen already (often: our own append)
		case e.state != nil && delivered.Commit.FirstEventID() == e.state.NextEventID:
			return n.applyCommits(e, []stream.StoredCommit{*delivered})
		case e.state == nil && delivered.Commit.FirstEventID() == 0:
			return n.load(e, []stream.StoredCommit{*delivered})
		}
	}
	if e.state == nil {
		n.stats.historyReads.Add(1)
		commits, err := n.store.Read(ctx, e.id, 0)
		if err != nil {
			return err
		}
		return n.load(e, commits)
	}
	if delivered == nil && fresh == trustCache {
		return nil
	}
	n.stats.historyReads.Add(1)
	last, err := n.store.Last(ctx, e.id)
	if errors.Is(err, stream.ErrNotFound) {
		return nil // purged under our feet; nothing to catch up on
	}
	if err != nil {
		return err
	}
	switch {
	case last.Seq == e.state.LastSeq:
		return nil
	case last.Commit.FirstEventID() == e.state.NextEventID:
		return n.applyCommits(e, []stream.StoredCommit{last})
	}
	commits, err := n.store.Read(ctx, e.id, e.state.LastSeq)
	if err != nil {
		return err
	}
	return n.applyCommits(e, commits)
}

// load builds the entry of a saga the node did not know from the start of
// its history.
func (n *Node) load(e *sagaEntry, commits []stream.StoredCommit) error {
	e.state = &stream.State{}
	if err := n.applyCommits(e, commits); err != nil {
		return err
	}
	if e.state.Exists() && !e.state.Status.Terminal() && e.state.Status != stream.StatusBlocked {
		if wf, ok := n.reg.Workflow(e.state.WorkflowType); ok {
			// A replay failure here resurfaces when the decision is made.
			_, _ = n.newMachine(e, wf, commits)
		}
	}
	return nil
}

func (n *Node) applyCommits(e *sagaEntry, commits []stream.StoredCommit) error {
	for _, sc := range commits {
		if err := e.state.Apply(sc); err != nil {
			return &stream.CodecError{Subject: e.id, Seq: sc.Seq, Err: err}
		}
	}
	if e.machine != nil {
		if err := e.machine.Feed(context.TODO(), eventsUpTo(commits, e.state.LastSeq)...); err != nil {
			// The next decision rebuilds the machine from the history, and
			// reports the error again if it was not a stale cache.
			n.log.Debug("cached machine rejected history", "saga_id", e.id, "err", err)
			e.machine.Close()
			e.machine = nil
		}
	}
	return nil
}

// eventsUpTo concatenates the events of the commits up to stream sequence
// last.
func eventsUpTo(commits []stream.StoredCommit, last uint64) []stream.Event {
	var events []stream.Event
	for _, sc := range commits {
		if sc.Seq > last {
			break
		}
		events = append(events, sc.Commit.Events...)
	}
	return events
}

// committed updates the cache after a successful append and reports
// whether the saga ended.
func (n *Node) committed(e *sagaEntry, c *stream.Commit, seq uint64, inputs int) bool {
	if err := e.state.Apply(stream.StoredCommit{Seq: seq, Commit: c}); err != nil {
		e.reset()
		return false
	}
	if e.machine != nil {
		if err := e.machine.Feed(context.TODO(), c.Events[inputs:]...); err != nil {
			e.machine.Close()
			e.machine = nil
		}
	}
	n.stats.commits.Add(1)
	return e.state.Status.Terminal()
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
	// goroutine to goroutine, so compare the first line only).
	if st.Blocked != nil && st.Blocked.Reason == attrs.Reason && firstLine(st.Blocked.Message) == firstLine(attrs.Message) {
		return nil
	}
	return &stream.Event{ID: id, SagaID: st.SagaID, Type: stream.WorkflowExecutionBlocked, Time: time.Now(), Attrs: attrs}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func blockReason(err error) string {
	var nde *replay.NonDeterminismError
	var pe *replay.PanicError
	switch {
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
func stampEvents(events []stream.Event, next uint64, sagaID string) []stream.Event {
	now := time.Now()
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

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
