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
// calls only keep the latest details; a goroutine, started by the first of
// them and stopped with the attempt, writes them to the activity's attempt
// record every interval and then reads the saga: when its cancellation
// reaches the activity, or the activity closed, it cancels the attempt's
// context.
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
	running bool
	stopped bool
	cause   error // why a beat canceled the attempt
	created bool  // a beat created the attempt record
	quit    chan struct{}
	done    chan struct{}
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

// RecordHeartbeat keeps details; the first call starts the writer. Calls
// after the attempt ended (from an abandoned activity) are dropped.
func (h *heartbeats) RecordHeartbeat(details stream.Payload) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	h.latest, h.pending = details, true
	if !h.running {
		h.running = true
		h.quit, h.done = make(chan struct{}), make(chan struct{})
		go h.loop()
	}
}

// stop ends the writer and waits for it; safe to call more than once.
func (h *heartbeats) stop() {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		return
	}
	h.stopped = true
	running := h.running
	h.mu.Unlock()
	if running {
		close(h.quit)
		<-h.done
	}
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

func (h *heartbeats) loop() {
	defer close(h.done)
	tick := time.NewTicker(h.interval)
	defer tick.Stop()
	for {
		select {
		case <-h.quit: // the attempt ended meanwhile: no more beats
			return
		default:
		}
		h.beat() // the first at once: a heartbeat timeout counts from it
		if h.stoppedBy() != nil {
			return // the attempt is stopped: nothing more to tell
		}
		select {
		case <-h.quit:
			return
		case <-tick.C:
		}
	}
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
