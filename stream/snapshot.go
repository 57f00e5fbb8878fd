package stream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A snapshot is a saga's State as a node folded it at one commit, kept in
// the snapshots bucket under the saga's id, so that a reader folds only
// the commits after it instead of the whole history (docs/snapshots.md).
// Nodes write them (package worker); LoadState reads them, and never
// yields a state a full fold would not: a snapshot that does not decode,
// fails its checksum, is not the saga's, or does not continue the history
// as the stream holds it is passed over for the whole history.

// SnapshotVersion is the format of the snapshots this engine writes, and
// the only one it reads. It names the shape of State and of every type a
// State holds: raise it whenever one of them changes, so that a snapshot
// written before the change is never read as one written after it (it
// would lack the new field). TestSnapshotVersionFollowsTheStateShape fails
// until it is raised.
const SnapshotVersion = 2

// Snapshot defaults.
const (
	DefaultSnapshotInterval = 100
	DefaultMaxSnapshots     = 5
)

// SnapshotConfig configures snapshots (the reference manual's
// SnapshotConfig).
type SnapshotConfig struct {
	// Interval is how many events apart a node writes a saga's snapshots:
	// one each time a commit it dispatches reaches a multiple of Interval.
	// It decides what this node writes, nothing else. 0: this node writes
	// none (it still reads those other nodes write).
	Interval int
	// MaxSnapshots is how many snapshots of a saga the bucket keeps (its
	// per-key history), so that a reader can fall back on an older one
	// when the latest is damaged. It applies when this node creates the
	// bucket: an existing bucket keeps its own, which every node follows.
	// 1 to 64; 0: 5.
	MaxSnapshots int
	// SkipChecksum turns off the check of a snapshot's SHA-256 checksum on
	// load. A snapshot that fails the check is passed over for the whole
	// history; without it, damage that still decodes could be taken for a
	// state.
	SkipChecksum bool
}

// DefaultSnapshotConfig is the configuration of a node given none: a
// snapshot every 100 events, 5 kept per saga, checksums verified.
func DefaultSnapshotConfig() SnapshotConfig {
	return SnapshotConfig{Interval: DefaultSnapshotInterval, MaxSnapshots: DefaultMaxSnapshots}
}

// WithDefaults returns c with MaxSnapshots set to its default if it is 0.
// Interval 0 stays 0: it turns writing off.
func (c SnapshotConfig) WithDefaults() SnapshotConfig {
	if c.MaxSnapshots == 0 {
		c.MaxSnapshots = DefaultMaxSnapshots
	}
	return c
}

// Validate reports the first invalid field.
func (c SnapshotConfig) Validate() error {
	switch {
	case c.Interval < 0:
		return fmt.Errorf("snapshot config: Interval must be 0 (no snapshots) or positive, got %d", c.Interval)
	case c.MaxSnapshots < 1 || c.MaxSnapshots > jetstream.KeyValueMaxHistory:
		return fmt.Errorf("snapshot config: MaxSnapshots must be 1..%d, got %d", jetstream.KeyValueMaxHistory, c.MaxSnapshots)
	}
	return nil
}

// Errors of snapshots. Match them with errors.Is; a snapshot of another
// format version is ErrUnsupported.
var (
	// ErrSnapshotCorrupt means a stored snapshot that does not decode,
	// fails its checksum, or is not the saga's own.
	ErrSnapshotCorrupt = errors.New("snapshot corrupt")
	// ErrSnapshotMismatch means a snapshot that decodes but does not
	// continue the saga's history as the stream holds it: the commit it
	// was taken at is not there (the stream was recreated, or the history
	// purged), or is another.
	ErrSnapshotMismatch = errors.New("snapshot does not match the history")
)

// snapshotEnvelope is a stored snapshot. Its layout never changes, so that
// any version can tell which saga and commit a snapshot is of and check
// its checksum; Version names the encoding of State.
type snapshotEnvelope struct {
	Version int    `msgpack:"version"`
	SagaID  string `msgpack:"saga_id"`
	LastSeq uint64 `msgpack:"last_seq"`
	// State is the msgpack of snapshotState, Checksum its SHA-256.
	State    []byte `msgpack:"state"`
	Checksum []byte `msgpack:"sha256"`
}

// snapshotState is State as version 2 encodes it (version 1 had no run). Maps are sorted slices,
// so that one state always encodes to the same bytes.
type snapshotState struct {
	SagaID                 string                                 `msgpack:"saga_id"`
	WorkflowType           string                                 `msgpack:"workflow_type"`
	Version                int                                    `msgpack:"version"`
	RequestID              string                                 `msgpack:"request_id"`
	Status                 Status                                 `msgpack:"status"`
	Input                  Payload                                `msgpack:"input"`
	Output                 Payload                                `msgpack:"output"`
	Failure                *Failure                               `msgpack:"failure"`
	Blocked                *WorkflowExecutionBlockedAttrs         `msgpack:"blocked"`
	StartedAt              time.Time                              `msgpack:"started_at"`
	UpdatedAt              time.Time                              `msgpack:"updated_at"`
	ClosedAt               time.Time                              `msgpack:"closed_at"`
	NextEventID            uint64                                 `msgpack:"next_event_id"`
	LastSeq                uint64                                 `msgpack:"last_seq"`
	OpenActivities         []snapshotActivity                     `msgpack:"open_activities"`
	RunTimeout             time.Duration                          `msgpack:"run_timeout"`
	CancelRequested        *WorkflowExecutionCancelRequestedAttrs `msgpack:"cancel_requested"`
	CancelRequestedEventID uint64                                 `msgpack:"cancel_requested_event_id"`
	RunTimedOut            bool                                   `msgpack:"run_timed_out"`
	CompensationSteps      []snapshotStep                         `msgpack:"compensation_steps"`
	Compensation           *CompensationOutcome                   `msgpack:"compensation"`
	Timers                 []snapshotTimer                        `msgpack:"timers"`
	LastInboxSeq           uint64                                 `msgpack:"last_inbox_seq"`
	LastInboxEpoch         int64                                  `msgpack:"last_inbox_epoch"`
	Signals                int                                    `msgpack:"signals"`
	Run                    uint32                                 `msgpack:"run"`
	RunStartEventID        uint64                                 `msgpack:"run_start_event_id"`
	RunStartSeq            uint64                                 `msgpack:"run_start_seq"`
	ContinuedFrom          *RunContinuation                       `msgpack:"continued_from"`
	RunBytes               int64                                  `msgpack:"run_bytes"`
}

type snapshotActivity struct {
	ScheduledEventID uint64                      `msgpack:"scheduled_event_id"`
	Scheduled        *ActivityTaskScheduledAttrs `msgpack:"scheduled"`
	ScheduledAt      time.Time                   `msgpack:"scheduled_at"`
	ScheduledSeq     uint64                      `msgpack:"scheduled_seq"`
	Step             string                      `msgpack:"step"`
}

type snapshotStep struct {
	Step             string   `msgpack:"step"`
	ActivityType     string   `msgpack:"activity_type"`
	ScheduledEventID uint64   `msgpack:"scheduled_event_id"`
	Status           string   `msgpack:"status"`
	Failure          *Failure `msgpack:"failure"`
}

type snapshotTimer struct {
	CreatedEventID uint64    `msgpack:"created_event_id"`
	FireAt         time.Time `msgpack:"fire_at"`
	Open           bool      `msgpack:"open"`
}

// EncodeSnapshot encodes the state of a saga that has started as a
// snapshot, with its checksum. The snapshot shares nothing with st.
func EncodeSnapshot(st *State) ([]byte, error) {
	if st == nil || !st.Exists() || st.NextEventID == 0 || st.OpenActivities == nil || st.Timers == nil {
		return nil, fmt.Errorf("%w: a snapshot is of a saga that started", ErrCodec)
	}
	if err := ValidateID("saga id", st.SagaID); err != nil {
		return nil, err
	}
	w := snapshotState{
		SagaID: st.SagaID, WorkflowType: st.WorkflowType, Version: st.Version, RequestID: st.RequestID,
		Status: st.Status, Input: st.Input, Output: st.Output, Failure: st.Failure, Blocked: st.Blocked,
		StartedAt: st.StartedAt, UpdatedAt: st.UpdatedAt, ClosedAt: st.ClosedAt,
		NextEventID: st.NextEventID, LastSeq: st.LastSeq, RunTimeout: st.RunTimeout,
		CancelRequested: st.CancelRequested, CancelRequestedEventID: st.CancelRequestedEventID, RunTimedOut: st.RunTimedOut,
		Compensation: st.Compensation, LastInboxSeq: st.LastInboxSeq, LastInboxEpoch: st.LastInboxEpoch, Signals: st.Signals,
		Run: st.Run, RunStartEventID: st.RunStartEventID, RunStartSeq: st.RunStartSeq, ContinuedFrom: st.ContinuedFrom, RunBytes: st.RunBytes,
	}
	for _, id := range slices.Sorted(maps.Keys(st.OpenActivities)) {
		a := st.OpenActivities[id]
		w.OpenActivities = append(w.OpenActivities, snapshotActivity{ScheduledEventID: id, Scheduled: a.ActivityTaskScheduledAttrs, ScheduledAt: a.ScheduledAt, ScheduledSeq: a.ScheduledSeq, Step: a.Step})
	}
	for _, c := range st.CompensationSteps {
		w.CompensationSteps = append(w.CompensationSteps, snapshotStep(c))
	}
	for _, id := range slices.Sorted(maps.Keys(st.Timers)) {
		t := st.Timers[id]
		w.Timers = append(w.Timers, snapshotTimer{CreatedEventID: id, FireAt: t.FireAt, Open: t.Open})
	}
	state, err := Marshal(w)
	if err != nil {
		return nil, err
	}
	// The writer applies the reader's checks: a snapshot no reader could
	// decode is never stored.
	if err := CheckMsgpack(state); errors.Is(err, errTooDeep) {
		return nil, fmt.Errorf("%w: the state of saga %s nests deeper than a reader accepts", ErrTooLarge, st.SagaID)
	} else if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(state)
	return Marshal(snapshotEnvelope{Version: SnapshotVersion, SagaID: st.SagaID, LastSeq: st.LastSeq, State: state, Checksum: sum[:]})
}

// decodeEnvelope decodes a stored snapshot's envelope and checks that it
// is sagaID's, and its checksum when verify is set.
func decodeEnvelope(sagaID string, data []byte, verify bool) (snapshotEnvelope, error) {
	var env snapshotEnvelope
	if err := Unmarshal(data, &env); err != nil {
		return env, fmt.Errorf("%w: %w", ErrSnapshotCorrupt, err)
	}
	if env.SagaID != sagaID {
		return env, fmt.Errorf("%w: it is of saga %q", ErrSnapshotCorrupt, env.SagaID)
	}
	if verify {
		sum := sha256.Sum256(env.State)
		if !bytes.Equal(sum[:], env.Checksum) {
			return env, fmt.Errorf("%w: the checksum of its state does not match", ErrSnapshotCorrupt)
		}
	}
	return env, nil
}

// DecodeSnapshot decodes a snapshot stored under sagaID, checking its
// checksum when verify is set. A snapshot of another format version is
// ErrUnsupported; one that does not decode, fails its checksum, or is not
// sagaID's is ErrSnapshotCorrupt.
func DecodeSnapshot(sagaID string, data []byte, verify bool) (*State, error) {
	env, err := decodeEnvelope(sagaID, data, verify)
	if err != nil {
		return nil, err
	}
	if env.Version != SnapshotVersion {
		return nil, fmt.Errorf("%w: snapshot format %d, this engine reads %d", ErrUnsupported, env.Version, SnapshotVersion)
	}
	var w snapshotState
	if err := Unmarshal(env.State, &w); err != nil {
		return nil, fmt.Errorf("%w: state: %w", ErrSnapshotCorrupt, err)
	}
	switch {
	case w.SagaID != sagaID:
		return nil, fmt.Errorf("%w: its state is of saga %q", ErrSnapshotCorrupt, w.SagaID)
	case w.LastSeq != env.LastSeq || w.LastSeq == 0 || w.NextEventID == 0:
		return nil, fmt.Errorf("%w: taken at stream sequence %d, its state at %d (event %d)", ErrSnapshotCorrupt, env.LastSeq, w.LastSeq, w.NextEventID)
	}
	st := &State{
		SagaID: w.SagaID, WorkflowType: w.WorkflowType, Version: w.Version, RequestID: w.RequestID,
		Status: w.Status, Input: w.Input, Output: w.Output, Failure: w.Failure, Blocked: w.Blocked,
		StartedAt: w.StartedAt, UpdatedAt: w.UpdatedAt, ClosedAt: w.ClosedAt,
		NextEventID: w.NextEventID, LastSeq: w.LastSeq, RunTimeout: w.RunTimeout,
		CancelRequested: w.CancelRequested, CancelRequestedEventID: w.CancelRequestedEventID, RunTimedOut: w.RunTimedOut,
		Compensation: w.Compensation, LastInboxSeq: w.LastInboxSeq, LastInboxEpoch: w.LastInboxEpoch, Signals: w.Signals,
		Run: w.Run, RunStartEventID: w.RunStartEventID, RunStartSeq: w.RunStartSeq, ContinuedFrom: w.ContinuedFrom, RunBytes: w.RunBytes,
		OpenActivities: make(map[uint64]OpenActivity, len(w.OpenActivities)),
		Timers:         make(map[uint64]TimerState, len(w.Timers)),
	}
	for _, a := range w.OpenActivities {
		if a.Scheduled == nil {
			return nil, fmt.Errorf("%w: open activity %d without its attributes", ErrSnapshotCorrupt, a.ScheduledEventID)
		}
		st.OpenActivities[a.ScheduledEventID] = OpenActivity{ActivityTaskScheduledAttrs: a.Scheduled, ScheduledAt: a.ScheduledAt, ScheduledSeq: a.ScheduledSeq, Step: a.Step}
	}
	for _, c := range w.CompensationSteps {
		st.CompensationSteps = append(st.CompensationSteps, CompensationStep(c))
	}
	for _, t := range w.Timers {
		st.Timers[t.CreatedEventID] = TimerState{FireAt: t.FireAt, Open: t.Open}
	}
	return st, nil
}

// SnapshotSeq returns the stream sequence a snapshot stored under sagaID
// was taken at, whatever its format version, if it is sagaID's and its
// checksum holds: what a writer compares its own with, so that the latest
// snapshot never goes back.
func SnapshotSeq(sagaID string, data []byte) (uint64, bool) {
	env, err := decodeEnvelope(sagaID, data, true)
	return env.LastSeq, err == nil
}

// LoadOptions says how LoadState reads.
type LoadOptions struct {
	// SkipChecksum: see SnapshotConfig.SkipChecksum.
	SkipChecksum bool
	// Logger hears about snapshots passed over; nil: nothing is logged.
	Logger *slog.Logger
}

// StateLoad says how LoadState came by a state.
type StateLoad struct {
	// SnapshotSeq is the stream sequence of the commit the snapshot the
	// state continues was taken at; 0 when the state was folded from the
	// whole history.
	SnapshotSeq uint64
	// Rejected is why a stored snapshot was passed over: ErrSnapshotCorrupt,
	// ErrSnapshotMismatch, or ErrUnsupported for another format version.
	// Nil when none was.
	Rejected error
	// CommitsRead counts the history commits read.
	CommitsRead int
}

// LoadState returns the saga's latest state: its latest valid snapshot
// with the commits after it folded on, or, without one that continues the
// history, the whole history folded (a saga without commits gives a State
// that does not Exist). It reads as ReadLatest does. A history holding a
// message the engine did not write gives the state folded up to it with
// the error (a *CodecError, or ErrCodec), as Fold does; other failures
// give a nil state. An archived saga is ErrArchived, even if a snapshot of
// it was left behind.
func (s *Store) LoadState(ctx context.Context, sagaID string, opts LoadOptions) (*State, StateLoad, error) {
	var load StateLoad
	if err := ValidateID("saga id", sagaID); err != nil {
		return nil, load, err
	}
	snap, rejected, err := s.LatestSnapshot(ctx, sagaID, opts)
	load.Rejected = rejected
	if err == nil && snap != nil {
		taken := snap.LastSeq
		read, err := s.ContinueSnapshot(ctx, snap)
		load.CommitsRead = read
		switch {
		case err == nil:
			load.SnapshotSeq = taken
			LogRejectedSnapshot(opts.Logger, sagaID, load.Rejected)
			return snap, load, nil
		case errors.Is(err, ErrArchived):
			return nil, load, err
		case errors.Is(err, ErrSnapshotMismatch):
			load.Rejected = err
		case errors.Is(err, ErrCodec):
			// The history after the snapshot holds a message the engine
			// did not write: the whole history says the same, and where.
		default:
			return nil, load, err
		}
	}
	// Without a usable snapshot (or the bucket's answer), the whole
	// latest run: slower, never wrong.
	LogRejectedSnapshot(opts.Logger, sagaID, load.Rejected)
	commits, err := s.ReadLatestRun(ctx, sagaID)
	load.CommitsRead += len(commits)
	if err != nil && !errors.As(err, new(*CodecError)) {
		return nil, load, err
	}
	st, foldErr := Fold(commits)
	if err == nil {
		err = foldErr
	}
	return st, load, err
}

// LogRejectedSnapshot logs why a saga's snapshot was passed over (nil
// err: nothing): at Warn when it is damaged or does not match the
// history, which a healthy engine never writes; at Debug when it is of
// another format version, as during a rolling upgrade.
func LogRejectedSnapshot(log *slog.Logger, sagaID string, err error) {
	if log == nil || err == nil {
		return
	}
	if errors.Is(err, ErrUnsupported) {
		log.Debug("snapshot of another format passed over; reading the history", "saga_id", sagaID, "err", err)
		return
	}
	log.Warn("snapshot passed over; reading the history", "saga_id", sagaID, "err", err)
}

// snapshotReadTimeout bounds the read of a saga's snapshot: a reader
// without the right to read the bucket gets no answer at all, and must
// not wait long for one.
const snapshotReadTimeout = 2 * time.Second

// snapshotsUnansweredPause is how long a store reads whole histories
// without asking for snapshots after a snapshot read got no answer.
const snapshotsUnansweredPause = time.Minute

// LatestSnapshot returns the saga's latest stored snapshot that decodes,
// is the saga's and passes its checksum (older ones, from the key's
// history, when the latest does not), or nil when it has none (nor a
// bucket). rejected says why the latest was passed over. It does not
// check the snapshot against the history: ContinueSnapshot does.
func (s *Store) LatestSnapshot(ctx context.Context, sagaID string, opts LoadOptions) (st *State, rejected error, err error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return nil, nil, err
	}
	if s.snapshotsPaused() {
		return nil, nil, nil
	}
	readCtx, cancel := context.WithTimeout(ctx, snapshotReadTimeout)
	defer cancel()
	bucket := s.cfg.SnapshotsBucket()
	streamName, subject := "KV_"+bucket, "$KV."+bucket+"."+sagaID
	latest, _, err := s.reader.get(readCtx, streamName, directGetRequest{LastBySubj: subject})
	switch {
	case errors.Is(err, errNoDirectResponders):
		return nil, nil, nil // no bucket: no node has written snapshots
	case err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		s.pauseSnapshots(opts.Logger, err)
		return nil, nil, err
	case err != nil:
		return nil, nil, err
	case len(latest) == 0 || removedKey(latest[0].Header):
		return nil, nil, nil
	}
	verify := !opts.SkipChecksum
	st, err = DecodeSnapshot(sagaID, latest[0].Data, verify)
	if err == nil {
		return st, nil, nil
	}
	rejected = fmt.Errorf("snapshot of %s at bucket revision %d: %w", sagaID, latest[0].Seq, err)
	// The key's history, oldest first: the newest valid one before the
	// latest, unless the key was deleted since.
	history, _, err := s.reader.get(readCtx, streamName, directGetRequest{Seq: 1, NextBySubj: subject, Batch: jetstream.KeyValueMaxHistory})
	if err != nil {
		return nil, rejected, nil
	}
	for i := len(history) - 1; i >= 0; i-- {
		m := history[i]
		if m.Seq >= latest[0].Seq {
			continue
		}
		if removedKey(m.Header) {
			break
		}
		if st, err := DecodeSnapshot(sagaID, m.Data, verify); err == nil {
			return st, rejected, nil
		}
	}
	return nil, rejected, nil
}

// removedKey reports whether a key-value message is a delete or purge
// marker rather than a value.
func removedKey(h nats.Header) bool {
	return h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != ""
}

func (s *Store) snapshotsPaused() bool {
	s.snapshotsMu.Lock()
	defer s.snapshotsMu.Unlock()
	return time.Now().Before(s.snapshotsPausedUntil)
}

// pauseSnapshots stops asking for snapshots for a while after a read got
// no answer, which is what a reader without the right to read the bucket
// gets: every describe would otherwise wait for it.
func (s *Store) pauseSnapshots(log *slog.Logger, err error) {
	s.snapshotsMu.Lock()
	defer s.snapshotsMu.Unlock()
	s.snapshotsPausedUntil = time.Now().Add(snapshotsUnansweredPause)
	if log != nil {
		log.Warn("snapshot read got no answer (is reading the snapshots bucket allowed?); reading whole histories for a while",
			"bucket", s.cfg.SnapshotsBucket(), "pause", snapshotsUnansweredPause, "err", err)
	}
}

// ContinueSnapshot folds onto st, a snapshot's state, the commits of the
// saga after it, read as ReadLatestAfter does, and returns how many
// commits it read. The commit the snapshot was taken at is read too, and
// must be the one the state ends with (same stream sequence, same last
// event and time): otherwise it is ErrSnapshotMismatch. An archived saga
// is ErrArchived; a commit that does not continue the history is ErrCodec.
// On error st is left part-way and must be dropped.
func (s *Store) ContinueSnapshot(ctx context.Context, st *State) (int, error) {
	commits, err := s.ReadLatestAfter(ctx, st.SagaID, st.LastSeq-1)
	if err != nil {
		return len(commits), err
	}
	if len(commits) == 0 {
		return 0, fmt.Errorf("%w: taken at stream sequence %d, the saga's history ends before it", ErrSnapshotMismatch, st.LastSeq)
	}
	at := commits[0]
	last := at.Commit.Events[len(at.Commit.Events)-1]
	if at.Seq != st.LastSeq || at.Commit.NextEventID() != st.NextEventID || !last.Time.Equal(st.UpdatedAt) {
		return len(commits), fmt.Errorf("%w: taken at stream sequence %d (event %d, %s), the history has sequence %d there (event %d, %s)",
			ErrSnapshotMismatch, st.LastSeq, st.NextEventID-1, st.UpdatedAt.UTC().Format(time.RFC3339Nano),
			at.Seq, last.ID, last.Time.UTC().Format(time.RFC3339Nano))
	}
	for _, sc := range commits[1:] {
		if err := st.Apply(sc); err != nil {
			return len(commits), err
		}
	}
	return len(commits), nil
}

// purgeSnapshots removes every snapshot of a saga: its history left the
// streams, and its state must not stay behind in the bucket.
func (s *Store) purgeSnapshots(ctx context.Context, sagaID string) error {
	bucket := s.cfg.SnapshotsBucket()
	st, err := s.js.Stream(ctx, "KV_"+bucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return mapError(err)
	}
	return mapError(st.Purge(ctx, jetstream.WithPurgeSubject("$KV."+bucket+"."+sagaID)))
}

// EnsureSnapshotBucket creates the snapshots bucket if it is missing,
// keeping maxSnapshots snapshots per saga, with replicas replicas; an
// existing bucket is checked and never changed. Its history is its own to
// keep: a node asking for another keeps it (logged); a bucket whose
// history a key-value bucket cannot have (unlimited, or above 64) is
// refused with ErrIncompatibleSetup.
func EnsureSnapshotBucket(ctx context.Context, js jetstream.JetStream, cfg Config, maxSnapshots, replicas int, log *slog.Logger) (jetstream.KeyValue, error) {
	if maxSnapshots < 1 || maxSnapshots > jetstream.KeyValueMaxHistory {
		return nil, fmt.Errorf("snapshots bucket: history must be 1..%d, got %d", jetstream.KeyValueMaxHistory, maxSnapshots)
	}
	return ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      cfg.SnapshotsBucket(),
		Description: "snapshots of sagas' folded state, by saga id",
		History:     uint8(maxSnapshots),
		Replicas:    replicas,
		Storage:     cfg.Storage,
	}, snapshotBucketPolicy, log)
}

// snapshotBucketPolicy is keyValuePolicy for the snapshots bucket, whose
// history (max_snapshots) is the bucket's own: fixed when it is created,
// followed by every node, changed only by an operator.
var snapshotBucketPolicy = replaceRule(streamPolicy, rule[streamConfig]{"history (max_msgs_per_subject)", snapshotHistory}, "max_msgs_per_subject")

func snapshotHistory(want, have *streamConfig) finding {
	w, h := want.MaxMsgsPerSubject, have.MaxMsgsPerSubject
	switch {
	case h < 1 || h > jetstream.KeyValueMaxHistory:
		return finding{refuse, showLimit(h), fmt.Sprintf("1 to %d", jetstream.KeyValueMaxHistory)}
	case h != w:
		return finding{adopt, showLimit(h), showLimit(w)}
	}
	return finding{}
}
