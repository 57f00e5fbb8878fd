package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/internal/clock"
)

// Store is the history log of one engine (one prefix) on one NATS
// connection. It is safe for concurrent use.
type Store struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	reader *directReader

	inForceMu sync.Mutex
	inForce   map[string]jetstream.StreamConfig // by stream name
	replicas  int                               // see Replicas

	// Until snapshotsPausedUntil, LoadState asks for no snapshot (see
	// pauseSnapshots).
	snapshotsMu          sync.Mutex
	snapshotsPausedUntil time.Time
}

// Open returns a Store over nc. It does not create streams: nodes do that
// with EnsureStreams; clients only need them to exist.
func Open(nc *nats.Conn, cfg Config) (*Store, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// No value may be larger than a message the server accepts: a limit
	// above that would let a value through that no append can store.
	if mp := nc.MaxPayload(); mp > 0 {
		cfg.MaxPayloadSize = min(cfg.MaxPayloadSize, int(min(int64(cfg.MaxMsgSize), mp)-headerRoom))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	r, err := newDirectReader(nc)
	if err != nil {
		return nil, err
	}
	return &Store{cfg: cfg, nc: nc, js: js, reader: r}, nil
}

// Close releases the store's subscription. The connection stays open.
func (s *Store) Close() { s.reader.close() }

// Config returns the store's configuration with defaults applied, and
// MaxPayloadSize lowered to what the server and the streams in force
// accept.
func (s *Store) Config() Config {
	s.inForceMu.Lock()
	defer s.inForceMu.Unlock()
	return s.cfg
}

// JetStream returns the JetStream handle the store uses.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

// EnsureStreams creates the history streams of every shard, the task
// stream and the dead-letter stream where they are missing, and checks the
// existing ones without changing them (see EnsureStream); log hears what
// it kept of an existing stream. JetStream may not be ready right after a
// server starts (in a cluster, seconds after), so it retries until ctx is
// done. The configurations in force are then given by StreamConfigInForce.
func (s *Store) EnsureStreams(ctx context.Context, log *slog.Logger) error {
	if err := s.checkShards(ctx); err != nil {
		return err
	}
	cfgs := []jetstream.StreamConfig{s.cfg.taskStreamConfig(), s.cfg.inboxStreamConfig(), s.cfg.DeadLetterStreamConfig()}
	for shard := range s.cfg.HistoryShards {
		cfgs = append(cfgs, s.cfg.historyStreamConfig(shard))
	}
	// What is missing (a stream new in this version, a new shard) is
	// created with as many replicas as the engine's existing streams have,
	// if more than this store's setting: a node started without the
	// setting does not create single copies in a replicated engine.
	replicas := s.cfg.Replicas
	for _, sc := range cfgs {
		var have int
		if err := retryUntil(ctx, func() error {
			// Each lookup is bounded: one request lost while a cluster forms
			// (another node creating this stream) must not use up the
			// whole start-up.
			attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
			defer cancel()
			st, err := s.js.Stream(attemptCtx, sc.Name)
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound):
				return nil
			case err != nil:
				return err
			}
			have = st.CachedInfo().Config.Replicas
			return nil
		}); err != nil {
			return fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		replicas = max(replicas, have)
	}
	s.inForceMu.Lock()
	s.replicas = replicas
	s.inForceMu.Unlock()
	for _, sc := range cfgs {
		sc.Replicas = replicas
		inForce, err := EnsureStream(ctx, s.js, sc, log)
		if err != nil {
			return err
		}
		s.inForceMu.Lock()
		if s.inForce == nil {
			s.inForce = map[string]jetstream.StreamConfig{}
		}
		s.inForce[sc.Name] = inForce
		s.inForceMu.Unlock()
	}
	// A stream an operator created with a lower message limit lowers what
	// a value may take.
	limit := s.maxMsgSize()
	s.inForceMu.Lock()
	s.cfg.MaxPayloadSize = min(s.cfg.MaxPayloadSize, limit)
	s.inForceMu.Unlock()
	return nil
}

// Replicas is how many replicas what the engine creates gets: the store's
// setting, or more if the engine's existing streams have more (known once
// EnsureStreams ran).
func (s *Store) Replicas() int {
	s.inForceMu.Lock()
	defer s.inForceMu.Unlock()
	return max(s.cfg.Replicas, s.replicas)
}

// StreamConfigInForce returns the configuration of the named stream as
// EnsureStreams found or created it: the stream's, which may differ from
// the store's Config (replicas above all). false if EnsureStreams has not
// set it up.
func (s *Store) StreamConfigInForce(name string) (jetstream.StreamConfig, bool) {
	s.inForceMu.Lock()
	defer s.inForceMu.Unlock()
	sc, ok := s.inForce[name]
	return sc, ok
}

// HasWorkflowConsumer reports whether any node ever registered the
// workflow type (its task consumer exists): a saga of a type nobody runs
// waits until a node registers it.
func (s *Store) HasWorkflowConsumer(ctx context.Context, workflowType string) (bool, error) {
	_, err := s.js.Consumer(ctx, s.cfg.TaskStream(), WorkflowTaskConsumer(workflowType))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return false, nil
	}
	return false, mapError(err)
}

// StoredCommit is a commit as read from the log, with its stream sequence.
type StoredCommit struct {
	Seq    uint64
	MsgID  string
	Commit *Commit
	// Data is the message as stored, when the reader had it: an archive
	// keeps these bytes, not a new encoding of Commit.
	Data []byte
}

// CodecError says which stored message failed to decode.
type CodecError struct {
	Subject string
	Seq     uint64
	Err     error
}

func (e *CodecError) Error() string {
	return fmt.Sprintf("history message %s at stream sequence %d: %v", e.Subject, e.Seq, e.Err)
}

func (e *CodecError) Unwrap() error { return e.Err }

// Append writes a commit to its saga's history if the saga's last commit is
// still at expectedSeq (0: the saga must not exist yet), and returns the
// new commit's stream sequence.
//
// It fails with ErrConcurrency when another writer got there first. A
// retried publish whose first attempt did land (the reply was lost) is
// recognised by its Nats-Msg-Id and reported as success, whether the server
// answers "duplicate" or "wrong last sequence".
func (s *Store) Append(ctx context.Context, c *Commit, expectedSeq uint64) (uint64, error) {
	data, err := c.Encode()
	if err != nil {
		return 0, err
	}
	if limit := s.maxMsgSize(); len(data) > limit {
		return 0, fmt.Errorf("%w: commit of %d events is %d bytes, the limit is %d", ErrTooLarge, len(c.Events), len(data), limit)
	}
	msgID := commitMsgID(c.SagaID, c.FirstEventID(), data)
	subject := s.cfg.HistorySubject(c.SagaID)
	streamName := s.cfg.HistoryStream(s.cfg.Shard(c.SagaID))
	var ack *jetstream.PubAck
	began := time.Now()
	checkedStream := false
	for attempt := 1; ; attempt++ {
		// Each attempt has its own deadline, so that a request the server
		// never answers is sent again within the caller's deadline.
		attemptCtx, cancel := context.WithTimeout(ctx, appendAttemptTimeout)
		var sendErr error
		ack, sendErr = s.js.PublishMsg(attemptCtx, &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}},
			jetstream.WithMsgID(msgID),
			jetstream.WithExpectLastSequencePerSubject(expectedSeq),
			jetstream.WithExpectStream(streamName))
		cancel()
		if sendErr == nil {
			err = nil
			break
		}
		if ctx.Err() != nil {
			// A resend the caller's deadline stopped says nothing new:
			// keep what the previous attempt learned.
			if attempt == 1 {
				err = sendErr
			}
			break
		}
		err = sendErr
		// A publish whose reply was lost may have landed: the very same
		// bytes are sent again, which the checks below recognise as ours.
		lostReply := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)
		// No answer at all: the stream's leader is being elected, or its
		// server is restarting; or the stream does not exist, which
		// retrying cannot mend.
		noAnswer := errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
		// A resend met the first send still being stored: wait for it.
		code := apiErrorCode(err)
		inProcess := attempt > 1 && (code == codeDuplicateInProcess || code == codeWrongLastSequenceInFlight)
		if !lostReply && !noAnswer && !inProcess {
			break
		}
		if time.Since(began) > appendRetryWindow {
			if lostReply || noAnswer {
				// Unanswered for the whole window: the outcome is unknown,
				// and the caller may resend within the duplicate window.
				err = fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			break
		}
		if noAnswer && !checkedStream {
			checkedStream = true // once: the answer is the same on every resend
			if s.streamMissing(ctx, streamName) {
				return 0, fmt.Errorf("append to %s: %w: %w", subject, ErrNoStream, err)
			}
		}
		_ = clock.Real.Sleep(ctx, appendResendPolicy.Delay(attempt))
	}
	if err != nil {
		err = mapError(err)
		if errors.Is(err, ErrConcurrency) {
			if seq, ok := s.landedAfter(ctx, c.SagaID, expectedSeq, msgID); ok {
				return seq, nil
			}
		}
		return 0, fmt.Errorf("append to %s: %w", subject, err)
	}
	// A duplicate ack carries the sequence of the message that has our id;
	// ids are derived from content, so that message is ours.
	return ack.Sequence, nil
}

// appendResendPolicy spaces the resends of an unanswered append.
var appendResendPolicy = backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second}

// appendAttemptTimeout bounds one publish of an append; appendRetryWindow
// bounds the resends of an append that gets no answer, which covers a
// leader election (a few seconds) and lets the caller's own retries take
// over after that.
const (
	appendAttemptTimeout = 5 * time.Second
	appendRetryWindow    = 10 * time.Second
)

// streamMissing reports whether the server says the stream does not
// exist; an error getting that answer is not proof of it.
func (s *Store) streamMissing(ctx context.Context, name string) bool {
	ctx, cancel := context.WithTimeout(ctx, appendAttemptTimeout)
	defer cancel()
	_, err := s.js.Stream(ctx, name)
	return errors.Is(err, jetstream.ErrStreamNotFound)
}

// headerRoom is what a message's headers may take of the server's
// max_payload.
const headerRoom = 4096

// maxMsgSize is the largest message body the store sends: the configured
// maximum (or the server's, if lower), less room for the headers, which
// both limits count.
func (s *Store) maxMsgSize() int {
	limit := min(int(s.cfg.MaxMsgSize), int(s.nc.MaxPayload()))
	// An existing stream keeps its own limit (see EnsureStream).
	s.inForceMu.Lock()
	for _, sc := range s.inForce {
		if sc.MaxMsgSize > 0 {
			limit = min(limit, int(sc.MaxMsgSize))
		}
	}
	s.inForceMu.Unlock()
	return limit - headerRoom
}

// landedAfter reports whether the commit right after expectedSeq on the
// saga's subject carries msgID.
func (s *Store) landedAfter(ctx context.Context, sagaID string, expectedSeq uint64, msgID string) (uint64, bool) {
	msgs, _, err := s.directGet(ctx, s.cfg.HistoryStream(s.cfg.Shard(sagaID)), directGetRequest{
		Seq:        expectedSeq + 1,
		NextBySubj: s.cfg.HistorySubject(sagaID),
	})
	if err != nil || len(msgs) == 0 {
		return 0, false
	}
	if msgs[0].Header.Get(jetstream.MsgIDHeader) != msgID {
		return 0, false
	}
	return msgs[0].Seq, true
}

// directGet reads from a stream's store; a read no server answered is
// ErrNoStream when the stream is missing, ErrUnavailable (worth a retry)
// while its servers start or elect.
func (s *Store) directGet(ctx context.Context, stream string, req directGetRequest) ([]storedMsg, uint64, error) {
	msgs, pending, err := s.reader.get(ctx, stream, req)
	if errors.Is(err, errNoDirectResponders) && s.streamMissing(ctx, stream) {
		return nil, 0, fmt.Errorf("%w: %s", ErrNoStream, stream)
	}
	return msgs, pending, err
}

// readBatch is how many commits one direct-get request asks for.
const readBatch = 256

// Read returns the saga's commits with a stream sequence above afterSeq, in
// order (afterSeq 0: the whole history). A saga without commits there gives
// an empty slice; a message that does not decode gives a *CodecError.
func (s *Store) Read(ctx context.Context, sagaID string, afterSeq uint64) ([]StoredCommit, error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return nil, err
	}
	stream := s.cfg.HistoryStream(s.cfg.Shard(sagaID))
	subject := s.cfg.HistorySubject(sagaID)
	var out []StoredCommit
	next := afterSeq + 1
	for {
		msgs, pending, err := s.directGet(ctx, stream, directGetRequest{Seq: next, NextBySubj: subject, Batch: readBatch})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", subject, err)
		}
		for _, m := range msgs {
			sc, err := decodeStored(m, sagaID)
			if err != nil {
				return out, err
			}
			out = append(out, sc)
		}
		if len(msgs) == 0 || pending == 0 {
			return out, nil
		}
		next = msgs[len(msgs)-1].Seq + 1
	}
}

// ReadRun returns the commits of the saga's latest run: from the commit
// that starts it (which, for a run after the first, also ends the run
// before) to the last. The last commit says where its run starts (see
// RunPosition), so a saga that continued as new is read from its latest
// run on, however long its earlier runs were. A saga without commits
// gives an empty slice; a message that does not decode, a *CodecError.
func (s *Store) ReadRun(ctx context.Context, sagaID string) ([]StoredCommit, error) {
	after, err := s.runStart(ctx, sagaID)
	if err != nil {
		return nil, err
	}
	return s.Read(ctx, sagaID, after)
}

// ReadLatestRun is ReadRun with ReadLatest's guarantee: it reaches the
// last commit the stream's leader holds. The leader's last commit, which
// that guarantee asks for anyway, says where the run starts: no request
// more than ReadLatest's.
func (s *Store) ReadLatestRun(ctx context.Context, sagaID string) ([]StoredCommit, error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return nil, err
	}
	last, data, leaderErr := s.lastOnLeader(ctx, sagaID, true)
	var after uint64
	switch {
	case leaderErr != nil:
		// No leader (an election): the run's start as a replica has it.
		var err error
		if after, err = s.runStart(ctx, sagaID); err != nil {
			return nil, err
		}
	case len(data) > 0:
		// A last message that is not a commit (an archive marker, a
		// foreign write) is read from the start, which reports it.
		if c, err := decodeFor(sagaID, data); err == nil {
			after = RunStartAfter(StoredCommit{Seq: last, Commit: c})
		}
	}
	return s.readUpTo(ctx, sagaID, after, last, leaderErr)
}

// runStart returns the sequence to read the saga's latest run after, from
// its last commit. A last commit that does not decode says nothing of its
// run: the whole history is read, and the read reports it. A replica
// that lags may name an earlier run's start: the read then takes in the
// later runs too, which State.Apply folds to the latest.
func (s *Store) runStart(ctx context.Context, sagaID string) (uint64, error) {
	last, err := s.Last(ctx, sagaID)
	var ce *CodecError
	switch {
	case errors.Is(err, ErrNotFound) && !errors.Is(err, ErrArchived), errors.As(err, &ce):
		return 0, nil
	case err != nil:
		return 0, err
	}
	return RunStartAfter(last), nil
}

// RunStartAfter is the stream sequence after which the run of the stored
// commit sc begins: 0 for the first run.
func RunStartAfter(sc StoredCommit) uint64 {
	p := sc.Commit.Run
	switch {
	case p.FirstRun():
		return 0
	case p.StartSeq == 0:
		return sc.Seq - 1 // this commit starts the run
	}
	return p.StartSeq - 1
}

// Last returns the saga's last commit, or ErrNotFound.
func (s *Store) Last(ctx context.Context, sagaID string) (StoredCommit, error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return StoredCommit{}, err
	}
	msgs, _, err := s.directGet(ctx, s.cfg.HistoryStream(s.cfg.Shard(sagaID)), directGetRequest{
		LastBySubj: s.cfg.HistorySubject(sagaID),
	})
	if err != nil {
		return StoredCommit{}, fmt.Errorf("read last of %s: %w", sagaID, err)
	}
	if len(msgs) == 0 {
		return StoredCommit{}, fmt.Errorf("saga %q: %w", sagaID, ErrNotFound)
	}
	return decodeStored(msgs[0], sagaID)
}

func decodeStored(m storedMsg, sagaID string) (StoredCommit, error) {
	if IsArchiveMarker(m.Header) {
		return StoredCommit{}, ErrArchived
	}
	c, err := decodeFor(sagaID, m.Data)
	if err != nil {
		return StoredCommit{}, &CodecError{Subject: m.Subject, Seq: m.Seq, Err: err}
	}
	return StoredCommit{Seq: m.Seq, MsgID: m.Header.Get(jetstream.MsgIDHeader), Commit: c, Data: m.Data}, nil
}

// DecodeDelivered decodes a commit a consumer delivered from the saga's
// subject, after checking its size against the configured maximum.
func (s *Store) DecodeDelivered(sagaID, subject string, seq uint64, data []byte) (*Commit, error) {
	if len(data) > int(s.cfg.MaxMsgSize) {
		return nil, &CodecError{Subject: subject, Seq: seq, Err: fmt.Errorf("%w: commit of %d bytes, this node's limit is %d", ErrUnsupported, len(data), s.cfg.MaxMsgSize)}
	}
	c, err := decodeFor(sagaID, data)
	if err != nil {
		return nil, &CodecError{Subject: subject, Seq: seq, Err: err}
	}
	return c, nil
}

// decodeFor decodes a commit found on sagaID's subject; a commit that
// names another saga was not written by the engine.
func decodeFor(sagaID string, data []byte) (*Commit, error) {
	c, err := DecodeCommit(data)
	if err != nil {
		return nil, err
	}
	if c.SagaID != sagaID {
		return nil, fmt.Errorf("%w: commit names saga %q on the subject of %q", ErrCodec, c.SagaID, sagaID)
	}
	return c, nil
}

// ReadLatest reads the saga's whole history as Read does, and makes sure it
// reaches the last commit the stream's leader holds. A direct get may be
// answered by a replica that lags behind (one that just rejoined its
// cluster), and a client that has seen a saga end must not then read an
// older history. Nodes do not need it: they check what they read against
// the commit they were given, and their appends against the leader.
//
// If the leader does not answer (an election), the read is as good as a
// replica's.
func (s *Store) ReadLatest(ctx context.Context, sagaID string) ([]StoredCommit, error) {
	return s.ReadLatestAfter(ctx, sagaID, 0)
}

// ReadLatestAfter is ReadLatest for the commits after afterSeq: a reader
// that holds a history's beginning reads only what is new.
func (s *Store) ReadLatestAfter(ctx context.Context, sagaID string, afterSeq uint64) ([]StoredCommit, error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return nil, err
	}
	last, leaderErr := s.LastSeqOnLeader(ctx, sagaID)
	return s.readUpTo(ctx, sagaID, afterSeq, last, leaderErr)
}

// readUpTo reads the commits after afterSeq until the read reaches last,
// the leader's last sequence (unless the leader did not answer:
// leaderErr).
func (s *Store) readUpTo(ctx context.Context, sagaID string, afterSeq, last uint64, leaderErr error) ([]StoredCommit, error) {
	// Bounded: the saga's subject may also have been purged in between.
	giveUp := time.After(catchUpTimeout)
	for tries := 1; ; tries++ {
		commits, err := s.Read(ctx, sagaID, afterSeq)
		if err != nil || leaderErr != nil || len(commits) > 0 && commits[len(commits)-1].Seq >= last || len(commits) == 0 && last <= afterSeq {
			return commits, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the replica answering reads of %s is behind the leader (sequence %d): %w", ErrUnavailable, sagaID, last, ctx.Err())
		case <-giveUp:
			return nil, fmt.Errorf("%w: the replica answering reads of %s stayed behind the leader (sequence %d) for %s", ErrUnavailable, sagaID, last, catchUpTimeout)
		case <-time.After(catchUpPolicy.Delay(tries)):
		}
	}
}

// catchUpPolicy spaces the reads of a replica that lags behind the leader.
var catchUpPolicy = backoff.Policy{Initial: 5 * time.Millisecond, Max: 250 * time.Millisecond}

// catchUpTimeout bounds how long ReadLatest waits for a lagging replica.
const catchUpTimeout = 5 * time.Second

// LastSeqOnLeader asks the stream's leader (not a direct get, which any
// replica answers) for the sequence of the saga's last commit; 0 if it
// has none. Without a leader (an election) it fails with ErrUnavailable.
func (s *Store) LastSeqOnLeader(ctx context.Context, sagaID string) (uint64, error) {
	if err := ValidateID("saga id", sagaID); err != nil {
		return 0, err
	}
	seq, _, err := s.lastOnLeader(ctx, sagaID, false)
	return seq, err
}

// lastOnLeader asks the stream's leader for the saga's last message: its
// sequence (0 if it has none) and, when withData is set, its body.
func (s *Store) lastOnLeader(ctx context.Context, sagaID string, withData bool) (uint64, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, leaderReadTimeout)
	defer cancel()
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
		NoHeaders     bool   `json:"no_hdr"`
	}{s.cfg.HistorySubject(sagaID), true})
	if err != nil {
		return 0, nil, err
	}
	reply, err := s.nc.RequestWithContext(ctx, jsAPIPrefix+"STREAM.MSG.GET."+s.cfg.HistoryStream(s.cfg.Shard(sagaID)), req)
	if err != nil {
		return 0, nil, mapError(err)
	}
	var resp struct {
		Message *struct {
			Seq  uint64          `json:"seq"`
			Data json.RawMessage `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return 0, nil, fmt.Errorf("%w: stream message get reply: %w", ErrCodec, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == codeNoMessageFound:
		return 0, nil, nil
	case resp.Error != nil:
		return 0, nil, mapError(resp.Error)
	case resp.Message == nil:
		return 0, nil, fmt.Errorf("%w: stream message get reply without a message", ErrCodec)
	}
	var data []byte
	if withData && len(resp.Message.Data) > 0 {
		// Decoded only when asked for: the body is base64 in the reply.
		if err := json.Unmarshal(resp.Message.Data, &data); err != nil {
			return 0, nil, fmt.Errorf("%w: stream message get reply: %w", ErrCodec, err)
		}
	}
	return resp.Message.Seq, data, nil
}

// leaderReadTimeout bounds the leader's answer to LastSeqOnLeader.
const leaderReadTimeout = 2 * time.Second
