package invariant

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jetsaga/saga/stream"
)

// History is one saga's recorded commits, in stream order, as the
// streams (stream.Store.ReadLatest) or the archive
// (pgarchive.Store.Commits) hold them.
type History struct {
	SagaID  string
	Commits []stream.StoredCommit
}

// CheckHistories checks histories the caller has read, against
// opts.Acked, RequireEnded, Compensation and AllowAbandonedActivities;
// Histories, IDs, Projection and Concurrency are Check's and are not
// used. hists must hold every saga Acked names: an acknowledged start
// without a history is a violation.
func CheckHistories(hists []History, opts Options) (Report, error) {
	if err := opts.validate(false); err != nil {
		return Report{}, err
	}
	seen := map[string]bool{}
	for _, h := range hists {
		if seen[h.SagaID] {
			return Report{}, fmt.Errorf("%w: two histories of saga %q", ErrInvalidOptions, h.SagaID)
		}
		seen[h.SagaID] = true
	}
	return evaluate(hists, nil, opts), nil
}

// evaluate checks hists; unchecked are sagas known to have a history
// that was not checked (archived, or not decodable), which
// acknowledgements may name.
func evaluate(hists []History, unchecked []string, opts Options) Report {
	hists = slices.Clone(hists)
	slices.SortStableFunc(hists, func(a, b History) int { return cmp.Compare(a.SagaID, b.SagaID) })
	r := Report{ByStatus: map[string]int{}}
	byID := map[string]*sagaCheck{}
	inbox := map[inboxKey]inboxRecord{} // who recorded each inbox message first
	for _, h := range hists {
		c := checkSaga(h, opts)
		byID[h.SagaID] = c
		r.Sagas++
		r.Runs += c.runs
		if c.ended {
			r.Ended++
			r.ByStatus[string(c.terminal)]++
		} else {
			r.ByStatus[StatusRunning]++
		}
		if c.blocked {
			r.Blocked = append(r.Blocked, h.SagaID)
		}
		r.ExtraAttempts += c.extraAttempts
		r.Outcomes += c.outcomes
		r.TimersFired += c.timersFired
		r.Signals += len(c.signals)
		// One inbox message is moved into one history, once.
		for _, s := range c.signals {
			if s.InboxSeq == 0 {
				continue
			}
			k := inboxKey{s.InboxEpoch, s.InboxSeq}
			first, ok := inbox[k]
			switch {
			case !ok:
				inbox[k] = inboxRecord{h.SagaID, s.eventID}
			case first.sagaID == h.SagaID:
				c.add(RuleSignalOnce, "event %d records inbox message %d (inbox epoch %d), which event %d recorded already", s.eventID, s.InboxSeq, s.InboxEpoch, first.eventID)
			default:
				c.add(RuleSignalOnce, "event %d records inbox message %d (inbox epoch %d), which saga %s recorded already", s.eventID, s.InboxSeq, s.InboxEpoch, first.sagaID)
			}
		}
	}
	checkAcked(opts.Acked, opts.SetAside, &r.SignalsSetAside, byID, unchecked)
	// byID now holds the sagas acknowledgements name without a history too.
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		r.Violations = append(r.Violations, byID[id].violations...)
	}
	return r
}

type inboxKey struct {
	epoch int64
	seq   uint64
}

type inboxRecord struct {
	sagaID  string
	eventID uint64
}

// checkAcked adds to the sagas' checks what the acknowledgements break; a
// saga without a history gets a check of its own.
func checkAcked(acked Acked, setAsideSignals []SignalAck, setAsideCount *int, byID map[string]*sagaCheck, unchecked []string) {
	skip := map[string]bool{}
	for _, id := range unchecked {
		skip[id] = true
	}
	// checkOf returns the check to add to, nil for a saga not checked.
	checkOf := func(id string) *sagaCheck {
		if skip[id] {
			return nil
		}
		c := byID[id]
		if c == nil {
			c = &sagaCheck{id: id, absent: true}
			byID[id] = c
		}
		return c
	}
	seen := map[string]bool{}
	for _, id := range acked.Starts {
		if seen[id] {
			continue
		}
		seen[id] = true
		if c := checkOf(id); c != nil && c.absent {
			c.add(RuleAckedStart, "its start was acknowledged, but the streams hold no history of it")
		}
	}
	type sig struct{ saga, msgID string }
	aside := map[sig]bool{}
	for _, s := range setAsideSignals {
		aside[sig{s.SagaID, s.MsgID}] = true
	}
	seenSig := map[sig]bool{}
	for _, s := range acked.Signals {
		if seenSig[sig{s.SagaID, s.MsgID}] {
			continue
		}
		seenSig[sig{s.SagaID, s.MsgID}] = true
		c := checkOf(s.SagaID)
		setAside := aside[sig{s.SagaID, s.MsgID}]
		switch {
		case c == nil:
		case c.absent && setAside:
			*setAsideCount++
		case c.absent:
			c.add(RuleAckedSignal, "signal %s (msg id %q) was acknowledged, but the saga has no history", s.Name, s.MsgID)
		default:
			var names []string
			for _, r := range c.signals {
				if r.MsgID == s.MsgID {
					names = append(names, r.Name)
				}
			}
			switch {
			case len(names) == 0 && setAside:
				*setAsideCount++
			case len(names) == 0:
				c.add(RuleAckedSignal, "signal %s (msg id %q) was acknowledged, but no SignalReceived records it, and the dead letters do not hold it", s.Name, s.MsgID)
			case setAside:
				c.add(RuleAckedSignal, "signal %s (msg id %q) is recorded, and also set aside in the dead letters", s.Name, s.MsgID)
			case names[0] != s.Name:
				c.add(RuleAckedSignal, "signal %s (msg id %q) was acknowledged, but the history records msg id %q as signal %s", s.Name, s.MsgID, s.MsgID, names[0])
			}
		}
	}
}

// sagaCheck is one saga's check: what it found, and the violations.
type sagaCheck struct {
	id   string
	opts Options
	// absent is set for a saga acknowledgements name that has no history.
	absent bool

	events   []located
	ended    bool
	terminal stream.EventType
	// end is the (first) terminal event, when the saga ended.
	end     located
	blocked bool

	extraAttempts int
	outcomes      int
	timersFired   int
	signals       []recordedSignal
	runs          int

	violations []Violation
}

// located is an event with the stream sequence of its commit.
type located struct {
	stream.Event
	seq uint64
}

type recordedSignal struct {
	*stream.SignalReceivedAttrs
	eventID uint64
}

func (c *sagaCheck) add(rule Rule, format string, args ...any) {
	c.violations = append(c.violations, Violation{SagaID: c.id, Rule: rule, Detail: fmt.Sprintf(format, args...)})
}

// checkSaga checks one history on its own.
func checkSaga(h History, opts Options) *sagaCheck {
	c := &sagaCheck{id: h.SagaID, opts: opts}
	if len(h.Commits) == 0 {
		c.add(RuleHistory, "no history")
		return c
	}
	c.structure(h.Commits)
	if len(c.events) == 0 {
		return c
	}
	// Activities, compensations and timers belong to their run: each run
	// is checked as a saga of its own, ended by its continue-as-new.
	runs := c.splitRuns()
	for i, events := range runs {
		r := &sagaCheck{id: c.id, opts: c.opts, events: events}
		r.startAndEnd(i == len(runs)-1)
		r.activities()
		r.compensation()
		r.timers()
		c.violations = append(c.violations, r.violations...)
		c.extraAttempts += r.extraAttempts
		c.outcomes += r.outcomes
		c.timersFired += r.timersFired
		if i == len(runs)-1 {
			c.ended, c.terminal, c.end, c.blocked = r.ended, r.terminal, r.end, r.blocked
		}
	}
	c.runs = len(runs)
	c.signalsOf()
	if opts.RequireEnded && !c.ended {
		last := c.events[len(c.events)-1]
		state := "running"
		if c.blocked {
			state = "blocked"
		}
		c.add(RuleEnded, "has not ended: %s, its last event is %d %s", state, last.ID, last.Type)
	}
	return c
}

// structure checks commits and event ids, and flattens the events.
func (c *sagaCheck) structure(commits []stream.StoredCommit) {
	var next uint64
	for i, sc := range commits {
		if sc.Commit == nil || len(sc.Commit.Events) == 0 {
			c.add(RuleHistory, "the commit at stream sequence %d holds no events", sc.Seq)
			continue
		}
		if sc.Commit.SagaID != c.id {
			c.add(RuleHistory, "the commit at stream sequence %d names saga %q", sc.Seq, sc.Commit.SagaID)
		}
		if i > 0 && sc.Seq <= commits[i-1].Seq {
			c.add(RuleContiguousIDs, "the commit at stream sequence %d follows the one at %d: sequences must rise", sc.Seq, commits[i-1].Seq)
		}
		for _, e := range sc.Commit.Events {
			if e.ID != next {
				c.add(RuleContiguousIDs, "event %d %s (commit at stream sequence %d) where event %d was due", e.ID, e.Type, sc.Seq, next)
			}
			// Counting on from what is there reports a gap once, not at
			// every event after it.
			next = e.ID + 1
			c.events = append(c.events, located{Event: e, seq: sc.Seq})
		}
	}
}

// splitRuns splits the saga's events into its runs, each from its start,
// and checks how one run leads to the next (RuleStartFirst, RuleRuns).
func (c *sagaCheck) splitRuns() [][]located {
	if first := c.events[0]; first.Type != stream.WorkflowExecutionStarted {
		c.add(RuleStartFirst, "the first event is %d %s", first.ID, first.Type)
	}
	var runs [][]located
	from := 0
	var inboxSeq uint64
	var inboxEpoch int64
	signals := map[uint64]string{} // SignalReceived event id: its name
	for i, e := range c.events {
		switch a := e.Attrs.(type) {
		case *stream.SignalReceivedAttrs:
			st := stream.State{LastInboxSeq: inboxSeq, LastInboxEpoch: inboxEpoch}
			inboxSeq, inboxEpoch = st.InboxAfter([]stream.Event{e.Event})
			signals[e.ID] = a.Name
		case *stream.WorkflowExecutionContinuedAsNewAttrs:
			if i+1 == len(c.events) || c.events[i+1].Type != stream.WorkflowExecutionStarted {
				c.add(RuleRuns, "event %d %s is not followed by the next run's %s", e.ID, e.Type, stream.WorkflowExecutionStarted)
			}
		case *stream.WorkflowExecutionStartedAttrs:
			if i == 0 {
				continue
			}
			prev := c.events[i-1]
			if prev.Type != stream.WorkflowExecutionContinuedAsNew {
				c.add(RuleStartFirst, "a second %s at event %d, which follows %d %s, not a %s", e.Type, e.ID, prev.ID, prev.Type, stream.WorkflowExecutionContinuedAsNew)
			} else {
				c.runLink(runs, c.events[from], prev, e, a, inboxSeq, inboxEpoch, signals)
			}
			runs = append(runs, c.events[from:i])
			from = i
		}
	}
	return append(runs, c.events[from:])
}

// runLink checks the start e (attributes a) of the run that follows the
// one from start to end (its WorkflowExecutionContinuedAsNew), given the
// inbox position and signals the history reached by then.
func (c *sagaCheck) runLink(runs [][]located, start, end, e located, a *stream.WorkflowExecutionStartedAttrs, inboxSeq uint64, inboxEpoch int64, signals map[uint64]string) {
	k := a.Continued
	if k == nil {
		c.add(RuleRuns, "event %d starts a run after event %d %s, and names no run it continues", e.ID, end.ID, end.Type)
		return
	}
	run := uint32(len(runs) + 2)
	var next uint32
	if ca, ok := end.Attrs.(*stream.WorkflowExecutionContinuedAsNewAttrs); ok {
		next = ca.NextRun
	}
	if k.Run != run || next != run {
		c.add(RuleRuns, "event %d starts run %d, event %d named run %d to follow, and it is run %d of the history", e.ID, k.Run, end.ID, next, run)
	}
	if e.seq != end.seq {
		c.add(RuleRuns, "event %d starts run %d in the commit at stream sequence %d, not in the one that ended the run before (%d)", e.ID, k.Run, e.seq, end.seq)
	}
	if k.PreviousEventID != end.ID || k.PreviousStartEventID != start.ID || k.PreviousStartSeq != start.seq {
		c.add(RuleRuns, "event %d links run %d to a run that started at event %d (sequence %d) and ended at event %d; the history's started at event %d (sequence %d) and ended at event %d",
			e.ID, k.Run, k.PreviousStartEventID, k.PreviousStartSeq, k.PreviousEventID, start.ID, start.seq, end.ID)
	}
	if k.LastInboxSeq != inboxSeq || k.LastInboxEpoch != inboxEpoch {
		c.add(RuleRuns, "event %d starts run %d at inbox position %d (epoch %d), the history had reached %d (epoch %d)",
			e.ID, k.Run, k.LastInboxSeq, k.LastInboxEpoch, inboxSeq, inboxEpoch)
	}
	for _, s := range k.Signals {
		if name, ok := signals[s.EventID]; !ok || name != s.Name {
			c.add(RuleRuns, "event %d passes on signal %s of event %d, which recorded no such signal", e.ID, s.Name, s.EventID)
		}
	}
}

// startAndEnd checks the terminal events of a run (splitRuns checked its
// start) and works out where it stands. A run that is not the saga's last (last false)
// ends with its WorkflowExecutionContinuedAsNew.
func (c *sagaCheck) startAndEnd(last bool) {
	var terminals []located
	for _, e := range c.events {
		if stream.IsTerminal(e.Type) || !last && e.Type == stream.WorkflowExecutionContinuedAsNew {
			terminals = append(terminals, e)
		}
		// As stream.State folds it: a decision after a block means the
		// engine drives the saga again.
		switch {
		case e.Type == stream.WorkflowExecutionBlocked && len(terminals) == 0:
			c.blocked = true
		case e.Type == stream.WorkflowExecutionUnblocked, stream.RoleOf(e.Type) == stream.RoleCommand:
			c.blocked = false
		}
	}
	if len(terminals) == 0 {
		return
	}
	c.ended, c.terminal, c.end = true, terminals[0].Type, terminals[0]
	for _, t := range terminals[1:] {
		c.add(RuleTerminalLast, "a second terminal event: %d %s after %d %s", t.ID, t.Type, terminals[0].ID, terminals[0].Type)
	}
	if last := c.events[len(c.events)-1]; last.ID != terminals[0].ID {
		var after []string
		for _, e := range c.events {
			if e.ID > terminals[0].ID {
				after = append(after, fmt.Sprintf("%d %s", e.ID, e.Type))
			}
		}
		c.add(RuleTerminalLast, "events after the terminal event %d %s: %s", terminals[0].ID, terminals[0].Type, strings.Join(after, ", "))
	}
}

// scheduled is an activity or compensation step and what became of it.
type scheduled struct {
	event        located
	compensation bool
	step         string
	detached     bool
	// canceled: canceled in the decision that scheduled it, never run.
	canceled bool
	// outcome is the id of its outcome event; hasOutcome says it has one.
	outcome    uint64
	hasOutcome bool
	// attempts is the highest attempt count the history records for it.
	attempts int
	starts   int
}

func (c *sagaCheck) kind(s *scheduled) string {
	if s.compensation {
		return "compensation step " + s.step
	}
	return "activity " + s.event.Attrs.(*stream.ActivityTaskScheduledAttrs).ActivityType
}

// activities checks that every outcome belongs to something scheduled
// and that nothing gets two (RuleOneOutcome).
func (c *sagaCheck) activities() {
	acts := map[uint64]*scheduled{}
	var cancelAt uint64 // the first cancellation request, 0: none
	for i, e := range c.events {
		switch a := e.Attrs.(type) {
		case *stream.WorkflowExecutionCancelRequestedAttrs:
			if cancelAt == 0 {
				cancelAt = e.ID
			}
		case *stream.ActivityTaskScheduledAttrs:
			acts[e.ID] = &scheduled{event: e, detached: a.Detached, canceled: a.Canceled}
		case *stream.CompensationStepScheduledAttrs:
			acts[e.ID] = &scheduled{event: e, compensation: true, step: a.Step}
		case *stream.ActivityTaskStartedAttrs:
			s := acts[a.ScheduledEventID]
			switch {
			case s == nil:
				c.add(RuleOneOutcome, "event %d %s names event %d, which scheduled nothing before it", e.ID, e.Type, a.ScheduledEventID)
				continue
			case s.hasOutcome:
				c.add(RuleOneOutcome, "event %d %s of %s (event %d) comes after its outcome at event %d", e.ID, e.Type, c.kind(s), s.event.ID, s.outcome)
			}
			s.starts++
			s.attempts = max(s.attempts, a.Attempt)
			// The attempt is recorded with the outcome it produced, in one
			// append (stream.ActivityTaskStartedAttrs).
			if i+1 >= len(c.events) || !isOutcomeOf(c.events[i+1].Event, a.ScheduledEventID) {
				c.add(RuleOneOutcome, "event %d %s of %s (event %d) is not followed by its outcome", e.ID, e.Type, c.kind(s), s.event.ID)
			}
		default:
			id, ok := stream.ScheduledEventID(e.Event)
			if !ok {
				continue
			}
			c.outcome(e, id, acts[id])
		}
	}
	for _, id := range slices.Sorted(maps.Keys(acts)) {
		s := acts[id]
		if s.hasOutcome {
			c.outcomes++
			c.extraAttempts += max(s.attempts, s.starts, 1) - 1
			continue
		}
		if !c.ended {
			continue
		}
		switch {
		case s.compensation:
			c.add(RuleOneOutcome, "%s scheduled at event %d has no outcome in the ended saga", c.kind(s), id)
		case c.opts.AllowAbandonedActivities, s.canceled:
		case cancelAt != 0 && id < cancelAt && !s.detached:
			// The saga's cancellation reached it, and a canceled saga ends
			// without waiting for such an activity (docs/compensation.md).
		default:
			c.add(RuleOneOutcome, "%s scheduled at event %d has no outcome in the ended saga", c.kind(s), id)
		}
	}
}

// isOutcomeOf reports whether e closes the activity scheduled at id.
func isOutcomeOf(e stream.Event, id uint64) bool {
	got, ok := stream.ScheduledEventID(e)
	return ok && got == id && e.Type != stream.ActivityTaskStarted
}

// outcome checks one outcome event of the activity scheduled at id.
func (c *sagaCheck) outcome(e located, id uint64, s *scheduled) {
	if s == nil {
		c.add(RuleOneOutcome, "event %d %s names event %d, which scheduled nothing before it", e.ID, e.Type, id)
		return
	}
	forCompensation := stream.CategoryOf(e.Type) == stream.CategoryCompensation
	if forCompensation != s.compensation {
		c.add(RuleOneOutcome, "event %d %s names event %d, which scheduled %s", e.ID, e.Type, id, c.kind(s))
		return
	}
	if s.canceled {
		c.add(RuleOneOutcome, "event %d %s is an outcome of %s (event %d), which was canceled as it was scheduled and must never run", e.ID, e.Type, c.kind(s), id)
		return
	}
	if s.hasOutcome {
		c.add(RuleOneOutcome, "event %d %s is a second outcome of %s (event %d): the first is event %d", e.ID, e.Type, c.kind(s), id, s.outcome)
		return
	}
	s.outcome, s.hasOutcome = e.ID, true
	var step string
	switch a := e.Attrs.(type) {
	case *stream.ActivityTaskFailedAttrs:
		s.attempts = max(s.attempts, a.Attempts)
	case *stream.ActivityTaskTimedOutAttrs:
		s.attempts = max(s.attempts, a.Attempts)
	case *stream.ActivityTaskCanceledAttrs:
		s.attempts = max(s.attempts, a.Attempts)
	case *stream.CompensationStepFailedAttrs:
		s.attempts = max(s.attempts, a.Attempts)
		step = a.Step
	case *stream.CompensationStepCompletedAttrs:
		step = a.Step
	}
	if s.compensation && step != s.step {
		c.add(RuleOneOutcome, "event %d %s names step %s, but event %d scheduled step %s", e.ID, e.Type, step, id, s.step)
	}
}

// registration is a compensation marker and whether it was run.
type registration struct {
	eventID uint64
	reg     *stream.CompensationRegistration
	run     uint64 // the CompensationStepScheduled that ran it; 0: none
}

// compensation checks the order compensations ran in against the order
// they were registered (RuleCompensationLIFO), and the outcome the last
// event records (RuleCompensationOutcome).
func (c *sagaCheck) compensation() {
	opts := c.opts.Compensation[c.workflowType()]
	regs := map[uint64]*registration{}
	var stack []*registration // registered, not run yet; last registered last
	open := map[uint64]located{}
	var (
		failedAt    uint64 // the first step that failed for good; 0: none
		completed   int
		failedSteps []string
		steps       int
	)
	for _, e := range c.events {
		switch a := e.Attrs.(type) {
		case *stream.MarkerRecordedAttrs:
			if a.Name != stream.MarkerCompensation {
				continue
			}
			if a.Compensation == nil {
				c.add(RuleCompensationLIFO, "event %d is a compensation marker that registers nothing", e.ID)
				continue
			}
			r := &registration{eventID: e.ID, reg: a.Compensation}
			regs[e.ID] = r
			stack = append(stack, r)
		case *stream.CompensationStepScheduledAttrs:
			steps++
			c.compensationStep(e, a, regs, &stack, open, opts.Parallel, failedAt, opts.ContinueAfterFailure)
			open[e.ID] = e
		case *stream.CompensationStepCompletedAttrs:
			if _, ok := open[a.ScheduledEventID]; ok {
				completed++
			}
			delete(open, a.ScheduledEventID)
		case *stream.CompensationStepFailedAttrs:
			if _, ok := open[a.ScheduledEventID]; ok {
				failedSteps = append(failedSteps, a.Step)
				if failedAt == 0 {
					failedAt = e.ID
				}
			}
			delete(open, a.ScheduledEventID)
		}
	}
	if !c.ended {
		return
	}
	var notRun []string
	for i := len(stack) - 1; i >= 0; i-- {
		notRun = append(notRun, stack[i].reg.Step)
	}
	c.compensationOutcome(steps, completed, failedSteps, notRun)
}

// compensationStep checks one CompensationStepScheduled and takes its
// registration off the stack.
func (c *sagaCheck) compensationStep(e located, a *stream.CompensationStepScheduledAttrs, regs map[uint64]*registration,
	stack *[]*registration, open map[uint64]located, parallel bool, failedAt uint64, continueAfterFailure bool) {
	r := regs[a.RegisteredEventID]
	switch {
	case r == nil:
		c.add(RuleCompensationLIFO, "event %d schedules step %s registered at event %d, which registered no compensation", e.ID, a.Step, a.RegisteredEventID)
		return
	case r.run != 0:
		c.add(RuleCompensationLIFO, "event %d runs the compensation registered at event %d a second time (first at event %d)", e.ID, r.eventID, r.run)
		return
	}
	r.run = e.ID
	if a.Step != r.reg.Step || a.ActivityType != r.reg.ActivityType {
		c.add(RuleCompensationLIFO, "event %d schedules step %s via %s, but event %d registered step %s via %s",
			e.ID, a.Step, a.ActivityType, r.eventID, r.reg.Step, r.reg.ActivityType)
	}
	if top := (*stack)[len(*stack)-1]; top != r {
		c.add(RuleCompensationLIFO, "event %d schedules step %s (registered at event %d) before step %s (registered later, at event %d): compensations run last registered first",
			e.ID, a.Step, r.eventID, top.reg.Step, top.eventID)
	}
	*stack = slices.DeleteFunc(*stack, func(x *registration) bool { return x == r })
	if failedAt != 0 && r.eventID < failedAt && !continueAfterFailure {
		c.add(RuleCompensationLIFO, "event %d schedules step %s after a compensation step failed for good at event %d: compensation stops there (unless the workflow continues after failures)",
			e.ID, a.Step, failedAt)
	}
	for _, id := range slices.Sorted(maps.Keys(open)) {
		// Parallel compensation schedules a whole batch in one decision,
		// one commit; sequential compensation waits for each step.
		o := open[id]
		switch {
		case !parallel:
			c.add(RuleCompensationLIFO, "event %d schedules step %s while the step scheduled at event %d is still running: compensation runs one step at a time",
				e.ID, a.Step, o.ID)
		case o.seq != e.seq:
			c.add(RuleCompensationLIFO, "event %d schedules step %s while the step scheduled at event %d, in an earlier commit, is still running: a parallel batch is scheduled in one commit",
				e.ID, a.Step, o.ID)
		default:
			continue
		}
		break
	}
}

// compensationOutcome compares the outcome the last event records with
// the steps the history holds.
func (c *sagaCheck) compensationOutcome(steps, completed int, failedSteps, notRun []string) {
	last := c.end
	var o *stream.CompensationOutcome
	switch a := last.Attrs.(type) {
	case *stream.WorkflowExecutionFailedAttrs:
		o = a.Compensation
	case *stream.WorkflowExecutionCanceledAttrs:
		o = a.Compensation
	case *stream.WorkflowExecutionTimedOutAttrs:
		o = a.Compensation
	default:
		return // a completed saga drops its registrations and records none
	}
	if steps == 0 && len(notRun) == 0 {
		if o != nil {
			c.add(RuleCompensationOutcome, "event %d %s records compensation %s, but nothing was registered", last.ID, last.Type, o.Status)
		}
		return
	}
	if o == nil {
		c.add(RuleCompensationOutcome, "event %d %s records no compensation outcome, but %d steps ran and %d were not run", last.ID, last.Type, steps, len(notRun))
		return
	}
	if o.Completed != completed {
		c.add(RuleCompensationOutcome, "event %d %s records %d compensation steps completed, the history %d", last.ID, last.Type, o.Completed, completed)
	}
	if !slices.Equal(o.FailedSteps, failedSteps) {
		c.add(RuleCompensationOutcome, "event %d %s records failed steps %v, the history %v", last.ID, last.Type, o.FailedSteps, failedSteps)
	}
	// Each discard lists its own steps, last registered first; across
	// several the order is theirs, so only the steps are compared.
	if !slices.Equal(slices.Sorted(slices.Values(o.NotRun)), slices.Sorted(slices.Values(notRun))) {
		c.add(RuleCompensationOutcome, "event %d %s records steps not run %v, the history leaves %v not run", last.ID, last.Type, o.NotRun, notRun)
	}
	want := stream.CompensationCompleted
	switch {
	case len(failedSteps) > 0:
		want = stream.CompensationFailed
	case len(notRun) > 0:
		want = stream.CompensationSkipped
	}
	if o.Status != want {
		c.add(RuleCompensationOutcome, "event %d %s records compensation %s, the history says %s", last.ID, last.Type, o.Status, want)
	}
}

func (c *sagaCheck) workflowType() string {
	if a, ok := c.events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs); ok {
		return a.WorkflowType
	}
	return ""
}

// timer is a workflow timer and how it closed.
type timer struct {
	created located
	due     time.Time
	closed  *located
}

// dueUnit is what the engine keeps a due time to: the timer's key in the
// timers bucket holds it in Unix milliseconds, and a node fires the timer
// once its clock passes that (docs/timers.md).
const dueUnit = time.Millisecond

// timers checks that each timer fired or was canceled once, never fired
// early, and that none is open in an ended saga.
func (c *sagaCheck) timers() {
	ts := map[uint64]*timer{}
	var order []uint64
	closeTimer := func(e located, id uint64) *timer {
		t := ts[id]
		switch {
		case t == nil:
			c.add(RuleTimerOnce, "event %d %s names event %d, which created no timer before it", e.ID, e.Type, id)
			return nil
		case t.closed != nil:
			c.add(RuleTimerOnce, "event %d %s closes the timer of event %d again: event %d %s closed it", e.ID, e.Type, id, t.closed.ID, t.closed.Type)
			return nil
		}
		t.closed = &e
		return t
	}
	for _, e := range c.events {
		switch a := e.Attrs.(type) {
		case *stream.TimerCreatedAttrs:
			ts[e.ID] = &timer{created: e, due: a.FireAt(e.Time)}
			order = append(order, e.ID)
		case *stream.TimerFiredAttrs:
			c.timersFired++
			t := closeTimer(e, a.StartedEventID)
			if t == nil {
				continue
			}
			if due := t.due.Truncate(dueUnit); e.Time.Before(due) {
				c.add(RuleTimerNotEarly, "event %d fired the timer of event %d at %s, %s before its due time %s (created %s, duration %s)",
					e.ID, t.created.ID, e.Time.UTC().Format(time.RFC3339Nano), due.Sub(e.Time), t.due.UTC().Format(time.RFC3339Nano),
					t.created.Time.UTC().Format(time.RFC3339Nano), t.created.Attrs.(*stream.TimerCreatedAttrs).Duration)
			}
		case *stream.TimerCanceledAttrs:
			closeTimer(e, a.StartedEventID)
		}
	}
	if !c.ended {
		return
	}
	for _, id := range order {
		if ts[id].closed == nil {
			c.add(RuleTimerOnce, "the timer of event %d is open in the ended saga: the engine cancels open timers as a saga ends", id)
		}
	}
}

// signalsOf checks the signals a saga recorded: no msg id twice, and
// the signals of one inbox in its order.
func (c *sagaCheck) signalsOf() {
	byMsgID := map[string]uint64{}
	var last *recordedSignal
	for _, e := range c.events {
		a, ok := e.Attrs.(*stream.SignalReceivedAttrs)
		if !ok {
			continue
		}
		s := recordedSignal{SignalReceivedAttrs: a, eventID: e.ID}
		c.signals = append(c.signals, s)
		if a.MsgID != "" {
			if first, ok := byMsgID[a.MsgID]; ok {
				c.add(RuleSignalOnce, "event %d records signal %s with msg id %q, which event %d recorded already", e.ID, a.Name, a.MsgID, first)
			} else {
				byMsgID[a.MsgID] = e.ID
			}
		}
		// The same message again is RuleSignalOnce's.
		if last != nil && last.InboxEpoch == a.InboxEpoch && a.InboxSeq < last.InboxSeq {
			c.add(RuleSignalOrder, "event %d records inbox message %d after event %d recorded inbox message %d", e.ID, a.InboxSeq, last.eventID, last.InboxSeq)
		}
		last = &s
	}
}
