package worker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
)

// heartbeatInterval spaces the recorded heartbeats of an activity without
// a heartbeat timeout; with one, they come at a third of it.
const heartbeatInterval = time.Second

// beatTimeout bounds one beat's writes and reads, so that an attempt's
// end never waits long for its heartbeats to stop.
const beatTimeout = 5 * time.Second

// errActivityClosed cancels an attempt whose activity closed meanwhile
// (another attempt recorded its outcome, or the saga ended).
var errActivityClosed = errors.New("the activity closed while this attempt ran")

// heartbeats records the heartbeats of one activity attempt. Heartbeat
// calls only keep the latest details; beats, started by the first of them
// and stopped with the attempt, write them to the activity's attempt
// record every interval and then read the saga: when its cancellation
// reaches the activity, or the activity closed, they cancel the attempt's
// context. A beat runs on a timer of its own (time.AfterFunc), so that an
// attempt holds no goroutine between beats: an activity that runs for
// hours, heartbeating, costs its own goroutine and its handler's only.
type heartbeats struct {
	n       *Node
	task    stream.ActivityTask
	attempt int
	taskSeq uint64
	// commitSeq: the attempt runs eagerly on the commit at this sequence.
	commitSeq uint64
	interval  time.Duration
	cancel    context.CancelCauseFunc

	mu      sync.Mutex
	latest  stream.Payload
	pending bool // a heartbeat came since the last write
	stopped bool
	cause   error // why a beat canceled the attempt
	created bool  // a beat created the attempt record
	// timer runs the next beat; nil until the first heartbeat.
	timer *time.Timer
	// beating counts the beat in progress, which stop waits for; a beat
	// is counted under mu while stopped is unset, so never after stop
	// began waiting.
	beating sync.WaitGroup
}

// newHeartbeats returns the heartbeats of an attempt; runActivity sets
// cancel before the activity runs.
func newHeartbeats(n *Node, task stream.ActivityTask, attempt int, taskSeq uint64) *heartbeats {
	interval := heartbeatInterval
	if t := task.Options.HeartbeatTimeout; t > 0 {
		// Recorded timeouts are whole seconds (see saga.WithHeartbeatTimeout);
		// the floor guards against a history written otherwise.
		interval = max(t/3, 100*time.Millisecond)
	}
	return &heartbeats{n: n, task: task, attempt: attempt, taskSeq: taskSeq, interval: interval}
}

var _ saga.HeartbeatRecorder = (*heartbeats)(nil)

// RecordHeartbeat keeps details; the first call starts the beats, the
// first at once: a heartbeat timeout counts from it. Calls after the
// attempt ended (from an abandoned activity) are dropped.
func (h *heartbeats) RecordHeartbeat(details stream.Payload) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	h.latest, h.pending = details, true
	if h.timer == nil {
		h.timer = time.AfterFunc(0, h.fire)
	}
}

// fire runs one beat, on the timer's goroutine, then arms the next one an
// interval after this one began (at once if the beat took longer), as a
// ticker would. Once the attempt is stopped, nothing more is told.
func (h *heartbeats) fire() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.beating.Add(1)
	h.mu.Unlock()
	defer h.beating.Done()
	began := time.Now()
	h.beat()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped || h.cause != nil {
		return
	}
	h.timer.Reset(max(h.interval-time.Since(began), 0))
}

// stop ends the beats and waits for the one in progress; safe to call
// more than once.
func (h *heartbeats) stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	timer := h.timer
	h.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	h.beating.Wait()
}

// stoppedBy says why a beat canceled the attempt's context; nil if none
// did.
func (h *heartbeats) stoppedBy() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cause
}

// wroteRecord reports whether a beat created the attempt's record.
func (h *heartbeats) wroteRecord() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.created
}

// stopAttempt cancels the attempt's context for cause.
func (h *heartbeats) stopAttempt(cause error) {
	h.mu.Lock()
	if h.cause == nil {
		h.cause = cause
	}
	h.mu.Unlock()
	h.cancel(cause)
}

// beat writes the latest details, if a heartbeat came since the last
// write, and checks the saga. Failures are logged: the next beat tries
// again, and a heartbeat timeout, if any, tells a node that stays silent.
func (h *heartbeats) beat() {
	h.mu.Lock()
	details, pending := h.latest, h.pending
	h.pending = false
	h.mu.Unlock()
	if !pending {
		return
	}
	ctx, cancel := context.WithTimeout(h.n.runCtx, beatTimeout)
	defer cancel()
	now := h.n.clock.Now()
	created := false
	err := h.n.attempts.update(ctx, h.task.SagaID, h.task.ScheduledEventID, func(rec *attemptRecord, found bool) (bool, error) {
		created = false // a retry of the update reads the record afresh
		switch {
		case !found:
			// An attempt started without a record (see attemptStore): it
			// is this one.
			*rec = attemptRecord{Started: h.attempt, TaskSeq: h.taskSeq, CommitSeq: h.commitSeq, Node: h.n.opts.NodeName, At: now}
			created = true
		case rec.Started != h.attempt || rec.Ended >= h.attempt || rec.GivenUp >= h.attempt || rec.TimedOut:
			return false, errAttemptGone
		}
		rec.Details, rec.HeartbeatAt = details, now
		return true, nil
	})
	if err == nil && created {
		h.mu.Lock()
		h.created = true
		h.mu.Unlock()
	}
	switch {
	case errors.Is(err, errAttemptGone):
		// A heartbeat timeout gave this attempt up, and a later one runs.
		h.logger().Warn("heartbeat of an attempt given up (its heartbeat timeout passed); stopping it")
		h.stopAttempt(errAttemptGone)
		return
	case err != nil:
		h.logger().Warn("heartbeat not recorded", "err", err)
	}
	_, state, err := h.n.lookupActivity(ctx, h.task.SagaID, h.task.ScheduledEventID)
	switch {
	case err != nil:
		h.logger().Warn("heartbeat could not read the saga", "err", err)
	case state == activityCancelRequested:
		h.stopAttempt(saga.ErrCanceled)
	case state == activityClosed:
		h.stopAttempt(errActivityClosed)
	}
}

// logger is the attempt's logger. Built when a beat has something to
// report, not for every attempt: most activities never heartbeat.
func (h *heartbeats) logger() *slog.Logger {
	return h.n.log.With("saga_id", h.task.SagaID, "activity_type", h.task.ActivityType,
		"scheduled_event_id", h.task.ScheduledEventID, "attempt", h.attempt)
}
