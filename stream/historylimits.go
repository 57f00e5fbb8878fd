package stream

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// HistoryLimits bound the length of a saga's run: every cold load reads
// and replays the latest run from its start, so a run that never ends
// (a poller, a monthly charge) must continue as new before it grows too
// long. They are the fleet's, not a node's: recorded once in the first
// history stream's metadata when the streams are created, and followed
// by every node whatever its own settings, so that one node started with
// a careless value cannot weaken them for the others. An operator
// changes them deliberately (SetHistoryLimits, "saga-node history-limits").
type HistoryLimits struct {
	// WarnEvents and WarnBytes: a run this long is reported (describe's
	// warning, a log line per node, a metric).
	WarnEvents uint64
	WarnBytes  int64
	// LimitEvents and LimitBytes: the next decision of workflow code that
	// would take a run past either is not appended; the saga is blocked
	// with reason history_too_long instead, until the limit is raised and
	// the saga woken.
	LimitEvents uint64
	LimitBytes  int64
}

// DefaultHistoryLimits are Temporal's: warn at 10,240 events or 10 MiB,
// stop at 51,200 events or 50 MiB.
var DefaultHistoryLimits = HistoryLimits{WarnEvents: 10_240, WarnBytes: 10 << 20, LimitEvents: 51_200, LimitBytes: 50 << 20}

// Lower bounds of the limits: a run needs room for its start, a decision
// and the blocked event, and its bytes room for one largest commit.
const (
	minLimitEvents = 8
	minLimitBytes  = 1 << 20
)

// Defaults returns l with every zero field set to its default.
func (l HistoryLimits) Defaults() HistoryLimits {
	d := DefaultHistoryLimits
	// A limit given alone brings the warning down with it, a warning
	// given alone the limit up.
	if l.LimitEvents == 0 {
		l.LimitEvents = max(d.LimitEvents, l.WarnEvents)
	}
	if l.WarnEvents == 0 {
		l.WarnEvents = min(d.WarnEvents, l.LimitEvents)
	}
	if l.LimitBytes == 0 {
		l.LimitBytes = max(d.LimitBytes, l.WarnBytes)
	}
	if l.WarnBytes == 0 {
		l.WarnBytes = min(d.WarnBytes, l.LimitBytes)
	}
	return l
}

// ErrInvalidHistoryLimits means history limits that cannot be followed.
var ErrInvalidHistoryLimits = errors.New("invalid history limits")

// Validate reports the first limit out of bounds.
func (l HistoryLimits) Validate() error {
	switch {
	case l.LimitEvents < minLimitEvents:
		return fmt.Errorf("%w: the event limit is %d, at least %d", ErrInvalidHistoryLimits, l.LimitEvents, minLimitEvents)
	case l.WarnEvents < 1 || l.WarnEvents > l.LimitEvents:
		return fmt.Errorf("%w: the event warning is %d, it must be 1..%d (the limit)", ErrInvalidHistoryLimits, l.WarnEvents, l.LimitEvents)
	case l.LimitBytes < minLimitBytes:
		return fmt.Errorf("%w: the byte limit is %d, at least %d", ErrInvalidHistoryLimits, l.LimitBytes, minLimitBytes)
	case l.WarnBytes < 1 || l.WarnBytes > l.LimitBytes:
		return fmt.Errorf("%w: the byte warning is %d, it must be 1..%d (the limit)", ErrInvalidHistoryLimits, l.WarnBytes, l.LimitBytes)
	}
	return nil
}

// Warns reports whether a run of events events and bytes bytes is at or
// past the warning.
func (l HistoryLimits) Warns(events uint64, bytes int64) bool {
	return events >= l.WarnEvents || bytes >= l.WarnBytes
}

// Metadata keys of the first history stream that record the fleet's
// history limits.
const (
	metaWarnEvents  = "saga_history_warn_events"
	metaLimitEvents = "saga_history_limit_events"
	metaWarnBytes   = "saga_history_warn_bytes"
	metaLimitBytes  = "saga_history_limit_bytes"
)

// metadata writes l into a copy of meta.
func (l HistoryLimits) metadata(meta map[string]string) map[string]string {
	out := maps.Clone(meta)
	if out == nil {
		out = map[string]string{}
	}
	out[metaWarnEvents] = strconv.FormatUint(l.WarnEvents, 10)
	out[metaLimitEvents] = strconv.FormatUint(l.LimitEvents, 10)
	out[metaWarnBytes] = strconv.FormatInt(l.WarnBytes, 10)
	out[metaLimitBytes] = strconv.FormatInt(l.LimitBytes, 10)
	return out
}

// recordedHistoryLimits reads the limits a stream's metadata records;
// recorded is false when it records none. Limits recorded partly, or
// that do not parse or validate (an edit by hand), are an error: a node
// must not guess the fleet's.
func recordedHistoryLimits(meta map[string]string) (l HistoryLimits, recorded bool, err error) {
	keys := []string{metaWarnEvents, metaLimitEvents, metaWarnBytes, metaLimitBytes}
	present := 0
	for _, k := range keys {
		if _, ok := meta[k]; ok {
			present++
		}
	}
	if present == 0 {
		return HistoryLimits{}, false, nil
	}
	if present != len(keys) {
		return HistoryLimits{}, true, fmt.Errorf("%w: the stream records %d of the %d history limit settings", ErrInvalidHistoryLimits, present, len(keys))
	}
	parseU := func(k string) uint64 {
		v, perr := strconv.ParseUint(meta[k], 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("%w: %s is %q", ErrInvalidHistoryLimits, k, meta[k])
		}
		return v
	}
	parseI := func(k string) int64 {
		v, perr := strconv.ParseInt(meta[k], 10, 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("%w: %s is %q", ErrInvalidHistoryLimits, k, meta[k])
		}
		return v
	}
	l = HistoryLimits{WarnEvents: parseU(metaWarnEvents), LimitEvents: parseU(metaLimitEvents), WarnBytes: parseI(metaWarnBytes), LimitBytes: parseI(metaLimitBytes)}
	if err != nil {
		return HistoryLimits{}, true, err
	}
	if err := l.Validate(); err != nil {
		return HistoryLimits{}, true, err
	}
	return l, true, nil
}

// CheckHistoryLimits returns the history limits the fleet records on the
// first history stream. A stream that records none (created before the
// limits existed) gets want recorded: the first node of this version to
// start sets them, once. A node's own settings never change limits that
// are recorded; the caller logs when they differ.
func CheckHistoryLimits(ctx context.Context, js jetstream.JetStream, cfg Config, want HistoryLimits) (HistoryLimits, error) {
	want = want.Defaults()
	if err := want.Validate(); err != nil {
		return HistoryLimits{}, err
	}
	name := cfg.HistoryStream(0)
	for range 5 {
		sc, err := historyStream0(ctx, js, name, true)
		if err != nil {
			return HistoryLimits{}, err
		}
		l, recorded, err := recordedHistoryLimits(sc.Metadata)
		if err != nil {
			return HistoryLimits{}, fmt.Errorf("history limits recorded on stream %s: %w", name, err)
		}
		if recorded {
			return l, nil
		}
		sc.Metadata = want.metadata(sc.Metadata)
		// Two nodes recording at once may both write: reading back settles
		// which one the fleet follows.
		if err := updateStream(ctx, js, sc); err != nil {
			return HistoryLimits{}, fmt.Errorf("history limits: record them on %s: %w", name, err)
		}
	}
	return HistoryLimits{}, fmt.Errorf("%w: the history limits recorded on %s keep changing", ErrInvalidHistoryLimits, name)
}

// FleetHistoryLimits returns the history limits the fleet records, and
// false when none are recorded (no node of this version started yet).
func FleetHistoryLimits(ctx context.Context, js jetstream.JetStream, cfg Config) (HistoryLimits, bool, error) {
	name := cfg.HistoryStream(0)
	sc, err := historyStream0(ctx, js, name, false)
	if err != nil {
		return HistoryLimits{}, false, err
	}
	l, recorded, err := recordedHistoryLimits(sc.Metadata)
	if err != nil {
		return HistoryLimits{}, recorded, fmt.Errorf("history limits recorded on stream %s: %w", name, err)
	}
	return l, recorded, nil
}

// SetHistoryLimits records new history limits for the fleet: an
// operator's decision, to raise the limit for sagas blocked at it, or to
// lower it. Nodes follow within a minute (and a wake at once).
func SetHistoryLimits(ctx context.Context, js jetstream.JetStream, cfg Config, l HistoryLimits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	name := cfg.HistoryStream(0)
	sc, err := historyStream0(ctx, js, name, false)
	if err != nil {
		return err
	}
	sc.Metadata = l.metadata(sc.Metadata)
	if err := updateStream(ctx, js, sc); err != nil {
		return fmt.Errorf("history limits: record them on %s: %w", name, err)
	}
	return nil
}

// historyStream0 reads the first history stream's configuration;
// justEnsured: the node has just set the streams up, so that a server that
// does not show it yet is waited for (see ensuredStreamConfig).
func historyStream0(ctx context.Context, js jetstream.JetStream, name string, justEnsured bool) (jetstream.StreamConfig, error) {
	if justEnsured {
		sc, err := ensuredStreamConfig(ctx, js, name)
		if err != nil {
			return jetstream.StreamConfig{}, fmt.Errorf("history limits: read %s: %w", name, err)
		}
		return sc, nil
	}
	attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
	defer cancel()
	s, err := js.Stream(attemptCtx, name)
	if err != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("history limits: read %s: %w", name, mapError(err))
	}
	return s.CachedInfo().Config, nil
}

func updateStream(ctx context.Context, js jetstream.JetStream, sc jetstream.StreamConfig) error {
	attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
	defer cancel()
	_, err := js.UpdateStream(attemptCtx, sc)
	return mapError(err)
}
