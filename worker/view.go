package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// sagaView is what a node knows of one saga: its history folded into a
// state, the events themselves, and the workflow code replayed over them.
// The three move together, through its methods only, so that they cannot
// drift apart:
//
//   - len(events) == state.RunEvents(): the view holds the latest run's
//     whole history, from its start (event 0 for a saga that never
//     continued as new), so a machine can be rebuilt without a read;
//     earlier runs are never replayed again, and not kept;
//   - a machine, when there is one, has been fed exactly those events, plus,
//     while a decision is being made, the inputs of that decision
//     (speculative) until the append says whether they landed.
//
// The machine is optional: the view may drop it at any time between two
// holds of its entry (a saga parked for a while, see releaseMachine) and
// rebuild it from the events when the saga is next decided on.
//
// check verifies the invariant; the tests call it after every step.
type sagaView struct {
	id string

	state   *stream.State // nil: nothing known
	events  []stream.Event
	machine *replay.Machine
	// speculative counts the events fed to the machine beyond the state:
	// the inputs of a decision whose append is not settled.
	speculative int
	// machineUsed is when the machine last decided or answered a query:
	// a machine unused for Options.IdleMachineTimeout is released.
	machineUsed time.Time
	// noMachine is set when the code could not be replayed here: building
	// again would fail the same way until the saga is woken, or another
	// node decides.
	noMachine bool
	// eventsBytes estimates the memory the events hold (eventBytes of
	// each); size adds the machine's share.
	eventsBytes int64
}

// What a cached saga costs beyond its values, estimated from what
// BenchmarkViewMemory measures (see docs/benchmarks.md): the view, a fixed
// part (the folded state) and a part per event (the decoded event and its
// attributes); the machine, while the view has one, a fixed part (its root
// coroutine's goroutine and stack, its maps and scopes) and a part per
// event (its own copy of the history, its commands and futures). Per
// event, each measured 290-460 bytes (the most for sagas of about 100
// events, the least for the longest).
const (
	viewOverhead         = 3 << 10
	eventOverhead        = 350
	machineOverhead      = 6 << 10
	machineEventOverhead = 350
)

// eventBytes estimates the memory an event costs in a cached view.
func eventBytes(e stream.Event) int64 {
	n := int64(eventOverhead)
	for _, p := range stream.WorkflowPayloads(e) {
		n += int64(len(p))
	}
	switch a := e.Attrs.(type) {
	case *stream.ActivityTaskScheduledAttrs:
		n += int64(len(a.Input))
	case *stream.CompensationStepScheduledAttrs:
		n += int64(len(a.Input))
	case *stream.CompensationStepCompletedAttrs:
		n += int64(len(a.Result))
	case *stream.WorkflowExecutionCompletedAttrs:
		n += int64(len(a.Output))
	case *stream.ActivityTaskFailedAttrs:
		n += failureBytes(a.Failure)
	case *stream.CompensationStepFailedAttrs:
		n += failureBytes(a.Failure)
	case *stream.WorkflowExecutionFailedAttrs:
		n += failureBytes(a.Failure)
	}
	return n
}

// failureBytes estimates a recorded failure: its text and details, which
// may hold a stack.
func failureBytes(f *stream.Failure) int64 {
	if f == nil {
		return 0
	}
	n := int64(len(f.Message))
	for k, v := range f.Context {
		n += int64(len(k) + len(v))
	}
	return n + failureBytes(f.Cause)
}

// addEvents appends events to the view and counts their bytes.
func (v *sagaView) addEvents(events []stream.Event) {
	v.events = append(v.events, events...)
	for _, e := range events {
		v.eventsBytes += eventBytes(e)
	}
}

// fold applies one commit to the state and keeps its events. A commit
// that starts a new run (continue-as-new) replaces the events, and the
// machine, with the new run's: newRun says so.
func (v *sagaView) fold(sc stream.StoredCommit) (newRun bool, err error) {
	runStart := v.state.RunStartEventID
	if err := v.state.Apply(sc); err != nil {
		return false, err
	}
	events := sc.Commit.Events
	if v.state.RunStartEventID != runStart {
		v.dropMachine()
		v.events, v.eventsBytes = nil, 0
		events = events[v.state.RunStartEventID-events[0].ID:]
		newRun = true
	}
	v.addEvents(events)
	return newRun, nil
}

// size estimates the memory the view holds: its state and events, and its
// machine while it has one.
func (v *sagaView) size() int64 {
	n := v.eventsBytes
	if v.state != nil {
		n += viewOverhead
	}
	if v.machine != nil {
		n += machineOverhead + machineEventOverhead*int64(len(v.events))
	}
	return n
}

// known reports whether the view holds the saga's history.
func (v *sagaView) known() bool { return v.state != nil }

// reset forgets the history; the next use reads it again.
func (v *sagaView) reset() {
	v.dropMachine()
	v.state, v.events, v.noMachine, v.eventsBytes = nil, nil, false, 0
}

func (v *sagaView) dropMachine() {
	if v.machine != nil {
		v.machine.Close()
	}
	v.machine, v.speculative, v.machineUsed = nil, 0, time.Time{}
}

// releaseMachine drops the machine of a view whose machine has not been
// used since cutoff, and reports whether it did. The state and the events
// stay: the next decision rebuilds the machine from them, without a read.
// Called with the entry locked and no decision under way (the entry's
// holder has released it), so the machine is never fed speculatively.
func (v *sagaView) releaseMachine(cutoff time.Time) bool {
	if v.machine == nil || v.speculative > 0 || !v.machineUsed.Before(cutoff) {
		return false
	}
	v.dropMachine()
	return true
}

// load replaces what the view holds by a history read from its start.
func (v *sagaView) load(ctx context.Context, commits []stream.StoredCommit) error {
	v.reset()
	v.state = &stream.State{}
	return v.apply(ctx, commits)
}

// apply folds commits that continue the history into the state and feeds
// them to the machine. A commit that does not continue it is an error
// wrapping stream.ErrCodec (only a writer outside the engine makes one),
// after which the view knows nothing.
func (v *sagaView) apply(ctx context.Context, commits []stream.StoredCommit) error {
	if v.speculative > 0 {
		// The machine saw inputs that are not in this history.
		v.dropMachine()
	}
	start := len(v.events)
	for _, sc := range commits {
		newRun, err := v.fold(sc)
		if err != nil {
			v.reset()
			return &stream.CodecError{Subject: v.id, Seq: sc.Seq, Err: err}
		}
		if newRun {
			start = 0
		}
	}
	if v.machine != nil && len(v.events) > start {
		if err := v.machine.Feed(ctx, v.events[start:]...); err != nil {
			// The next decision rebuilds the machine and meets the error
			// again if it was not a stale cache.
			v.dropMachine()
		}
	}
	return nil
}

// buildMachine replays the view's history into a new machine.
func (v *sagaView) buildMachine(ctx context.Context, cfg replay.Config) error {
	v.dropMachine()
	m := replay.New(cfg)
	if err := m.Feed(ctx, v.events...); err != nil {
		m.Close()
		return err
	}
	v.machine = m
	return nil
}

// feedSpeculative feeds the inputs of a decision to the machine before the
// append that records them.
func (v *sagaView) feedSpeculative(ctx context.Context, inputs []stream.Event) error {
	v.speculative += len(inputs)
	return v.machine.Feed(ctx, inputs...)
}

// committed folds the commit the node just appended at seq. The machine
// already saw its first fed events (the decision's inputs); it is fed the
// rest (what the code proposed, as the history now records it).
func (v *sagaView) committed(ctx context.Context, c *stream.Commit, seq uint64, fed int) error {
	newRun, err := v.fold(stream.StoredCommit{Seq: seq, Commit: c})
	if err != nil {
		return err
	}
	v.speculative = 0
	if v.machine != nil && !newRun {
		if err := v.machine.Feed(ctx, c.Events[fed:]...); err != nil {
			v.dropMachine()
		}
	}
	return nil
}

// abandon undoes the speculation of a decision whose append failed: a
// machine that saw inputs that did not land saw events in an order the
// history may never have; it is dropped (and rebuilt from the events in
// memory when needed). A machine that only proposed commands stays: it
// catches up with whatever the other writer appended.
func (v *sagaView) abandon() {
	if v.speculative > 0 {
		v.dropMachine()
	}
}

// check reports a broken invariant.
func (v *sagaView) check() error {
	if v.state == nil {
		if len(v.events) > 0 || v.machine != nil {
			return errors.New("view without state holds events or a machine")
		}
		return nil
	}
	if uint64(len(v.events)) != v.state.RunEvents() {
		return fmt.Errorf("view holds %d events, state is at event %d of a run from event %d", len(v.events), v.state.NextEventID, v.state.RunStartEventID)
	}
	for i, e := range v.events {
		if e.ID != v.state.RunStartEventID+uint64(i) {
			return fmt.Errorf("view event %d has id %d, the run starts at event %d", i, e.ID, v.state.RunStartEventID)
		}
	}
	if v.machine != nil && v.machine.Err() == nil && v.machine.NextEventID() != v.state.NextEventID+uint64(v.speculative) {
		return fmt.Errorf("machine fed %d events, state at %d with %d speculative", v.machine.NextEventID(), v.state.NextEventID, v.speculative)
	}
	return nil
}

// How catchUp treats a saga the node already knows.
type freshness int

const (
	// trustCache appends on what the cache knows; a stale cache shows up as
	// a concurrency conflict, after which the saga is read again.
	trustCache freshness = iota
	// readLatest checks the saga's last commit first (one cheap direct get)
	// and reads what the view lacks.
	readLatest
)

// catchUp makes the view current enough to append on.
//
// A delivered commit that continues what the view holds is applied without
// a read; so is the first commit of a saga the node does not know.
// Otherwise a saga the node does not know is read in full.
func (n *Node) catchUp(ctx context.Context, v *sagaView, delivered *stream.StoredCommit, fresh freshness) error {
	if delivered != nil {
		switch {
		case v.known() && delivered.Seq <= v.state.LastSeq:
			return nil // seen already (often: our own append)
		case v.known() && delivered.Commit.FirstEventID() == v.state.NextEventID:
			return v.apply(ctx, []stream.StoredCommit{*delivered})
		case !v.known() && (delivered.Commit.FirstEventID() == 0 || delivered.Commit.StartsRun() >= 0):
			// The commit starts the saga, or its latest run: all there is
			// to know of the run.
			return v.load(ctx, []stream.StoredCommit{*delivered})
		}
	}
	if !v.known() {
		n.stats.historyReads.Add(1)
		n.stats.historyLoads.Add(1)
		var commits []stream.StoredCommit
		var err error
		if delivered != nil {
			// The delivered commit says where its run starts: no read of
			// the last commit to learn it.
			commits, err = n.store.Read(ctx, v.id, stream.RunStartAfter(*delivered))
		} else {
			commits, err = n.store.ReadRun(ctx, v.id)
		}
		if err != nil {
			return err
		}
		return v.load(ctx, commits)
	}
	if delivered == nil && fresh == trustCache {
		return nil
	}
	n.stats.historyReads.Add(1)
	last, err := n.store.Last(ctx, v.id)
	if errors.Is(err, stream.ErrNotFound) {
		return nil // purged under our feet; nothing to catch up on
	}
	if err != nil {
		return err
	}
	switch {
	case last.Seq <= v.state.LastSeq:
		return nil
	case last.Commit.FirstEventID() == v.state.NextEventID:
		return v.apply(ctx, []stream.StoredCommit{last})
	case stream.RunStartAfter(last) > v.state.LastSeq:
		// The saga continued as new since the run the view holds: its
		// latest run alone is read, not the runs in between.
		commits, err := n.store.Read(ctx, v.id, stream.RunStartAfter(last))
		if err != nil {
			return err
		}
		return v.load(ctx, commits)
	}
	commits, err := n.store.Read(ctx, v.id, v.state.LastSeq)
	if err != nil {
		return err
	}
	return v.apply(ctx, commits)
}

// machineFor returns the view's machine, replaying the history it holds
// (no read) when it has none, and notes its use.
func (n *Node) machineFor(ctx context.Context, v *sagaView, decide bool) (*replay.Machine, error) {
	if v.machine != nil {
		v.machineUsed = n.clock.Now()
		return v.machine, nil
	}
	if v.noMachine {
		if v.state.Status == stream.StatusBlocked {
			return nil, errAlreadyBlocked
		}
		// Another node decided since this one blocked the saga: try again.
		v.noMachine = false
	}
	wf, err := n.workflowFor(v.state, decide)
	if err != nil {
		return nil, err
	}
	if v.state.Version > wf.Version {
		return nil, fmt.Errorf("%w: the saga runs version %d of workflow %s, this node's code is version %d",
			errNewerCode, v.state.Version, wf.Name, wf.Version)
	}
	if err := n.checkCanOpen(v.id, v.events); err != nil {
		return nil, err
	}
	if err := v.buildMachine(ctx, n.machineConfig(v.id, wf)); err != nil {
		return nil, err
	}
	n.stats.replays.Add(1)
	n.stats.replayedEvents.Add(int64(len(v.events)))
	v.machineUsed = n.clock.Now()
	return v.machine, nil
}

func (n *Node) machineConfig(sagaID string, wf *saga.RegisteredWorkflow) replay.Config {
	return replay.Config{
		SagaID:           sagaID,
		WorkflowType:     wf.Name,
		Workflow:         wf.Func,
		Logger:           n.log,
		DeadlockTimeout:  n.opts.DeadlockTimeout,
		ActivityDefaults: stream.ActivityOptions{StartToCloseTimeout: n.opts.DefaultActivityTimeout},
		MaxPayloadSize:   n.store.Config().MaxPayloadSize,
		Codec:            n.opts.Codec,
	}
}
