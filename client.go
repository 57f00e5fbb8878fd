package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/jetsaga/saga/internal/backoff"
	"github.com/jetsaga/saga/stream"
)

// ClientOptions configures a Client.
type ClientOptions struct {
	// Stream names the engine's streams; it must match the nodes'.
	// Defaults to prefix "saga" with one history shard.
	Stream stream.Config
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Codec seals the inputs and signal values the client writes and
	// opens the outputs it reads; it must hold the nodes' keys. A client
	// without one refuses to write plain values once the fleet seals them
	// (ErrCodecMismatch, of kind Configuration).
	Codec PayloadCodec
	// AppendStart, when set, appends the commit that starts a saga in the
	// client's stead, with the same contract as the plain append
	// (expected sequence 0, stream errors). A node sets it on the client
	// it owns, to decide the saga's first step in the start's own commit.
	AppendStart func(ctx context.Context, start *stream.Commit) (seq uint64, err error)
	// SkipSnapshotChecksum turns off the check of a snapshot's checksum
	// when Describe, Wait and Cancel fold a saga from its latest snapshot
	// (see stream.SnapshotConfig.SkipChecksum).
	SkipSnapshotChecksum bool
}

// Client starts sagas, waits for them and reads their state and history.
// It needs only NATS: no node has to be running to start a saga, which
// waits in its history until one is. It is safe for concurrent use.
type Client struct {
	nc     *nats.Conn
	store  *stream.Store
	logger *slog.Logger
	codec  PayloadCodec
	// appendStart appends start commits (ClientOptions.AppendStart).
	appendStart func(ctx context.Context, start *stream.Commit) (uint64, error)
	// load is how the client folds a saga's state: from its latest
	// snapshot when there is a valid one.
	load stream.LoadOptions

	// The fleet's settings as last read (fleet).
	fleetMu       sync.Mutex
	fleetSettings stream.FleetSettings
	fleetRead     bool // the last read answered
	fleetChecked  time.Time
}

// NewClient returns a client using nc, which stays owned by the caller.
func NewClient(nc *nats.Conn, opts ClientOptions) (*Client, error) {
	st, err := stream.Open(nc, opts.Stream)
	if err != nil {
		return nil, &Error{Kind: KindConfiguration, Message: "client", Cause: err}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	return &Client{nc: nc, store: st, logger: logger, codec: opts.Codec, appendStart: opts.AppendStart,
		load: stream.LoadOptions{SkipChecksum: opts.SkipSnapshotChecksum, Logger: logger}}, nil
}

// Close releases the client's subscription; the connection stays open.
func (c *Client) Close() { c.store.Close() }

// IfExists says what Start does when the saga id is taken.
type IfExists int

const (
	// IfExistsFail returns an error matching ErrAlreadyStarted. The default.
	IfExistsFail IfExists = iota
	// IfExistsUseExisting returns the existing saga's id without error.
	IfExistsUseExisting
)

// StartOptions configures Start.
type StartOptions struct {
	// ID is the saga id; letters, digits, '-' and '_', at most 128 bytes.
	// Defaults to a random 22-character id. Choosing the id (an order
	// number, say) makes a start idempotent.
	ID string
	// IfExists says what to do when the id is taken. Defaults to
	// IfExistsFail.
	IfExists IfExists
	// RequestID identifies this start request. A client that retries a
	// start (after a timeout, say) with the same ID and RequestID gets
	// success rather than ErrAlreadyStarted if its first attempt created
	// the saga. Defaults to a random id, new for every call.
	RequestID string
	// RunTimeout bounds the saga's run: past it, the saga is canceled, its
	// compensations run, and it ends timed_out. It runs on a durable timer,
	// so it is rounded up to whole seconds. 0: no bound.
	RunTimeout time.Duration
}

// StartResult says which saga a start refers to.
type StartResult struct {
	ID string
	// Existing is true when the saga already existed (IfExistsUseExisting).
	Existing bool
}

// StartWorkflow starts a saga of a typed workflow and returns a handle to
// its result.
func StartWorkflow[In, Out any](ctx context.Context, c *Client, wf *Workflow[In, Out], in In, opts StartOptions) (*Run[Out], error) {
	input, err := stream.Marshal(in)
	if err != nil {
		return nil, Errorf(KindCodec, "start %s: encode input: %w", wf.name, err)
	}
	res, err := c.StartPayload(ctx, wf.name, wf.version, input, opts)
	if err != nil {
		return nil, err
	}
	return &Run[Out]{ID: res.ID, Existing: res.Existing, c: c}, nil
}

// Start starts a saga of the named workflow type with an input encoded
// from in. The version recorded is 0 (unknown to the client); prefer
// StartWorkflow when the definition is at hand.
func (c *Client) Start(ctx context.Context, workflowType string, in any, opts StartOptions) (StartResult, error) {
	input, err := stream.Marshal(in)
	if err != nil {
		return StartResult{}, Errorf(KindCodec, "start %s: encode input: %w", workflowType, err)
	}
	return c.StartPayload(ctx, workflowType, 0, input, opts)
}

// StartPayload starts a saga with an already encoded input. The start is
// one append that requires the saga not to exist, so of two starts of one
// id exactly one creates the history.
func (c *Client) StartPayload(ctx context.Context, workflowType string, version int, input stream.Payload, opts StartOptions) (StartResult, error) {
	input, err := c.seal(ctx, "start", input)
	if err != nil {
		return StartResult{}, err
	}
	if err := c.store.Config().CheckPayload("workflow input", input); err != nil {
		return StartResult{}, wrapStreamError("start", err)
	}
	commit, err := newStartCommit(workflowType, version, input, opts)
	if err != nil {
		return StartResult{}, err
	}
	id := commit.SagaID
	if c.appendStart != nil {
		_, err = c.appendStart(ctx, commit)
	} else {
		_, err = c.store.Append(ctx, commit, 0)
	}
	if errors.Is(err, stream.ErrConcurrency) && opts.RequestID != "" && c.startedBy(ctx, id, opts.RequestID) {
		return StartResult{ID: id}, nil // our own earlier attempt
	}
	if err != nil {
		return alreadyStartedResult(id, opts, err)
	}
	return StartResult{ID: id}, nil
}

// startedBy reports whether the saga's start event carries requestID.
func (c *Client) startedBy(ctx context.Context, id, requestID string) bool {
	commits, err := c.store.ReadLatest(ctx, id)
	if err != nil || len(commits) == 0 {
		return false
	}
	a, ok := commits[0].Commit.Events[0].Attrs.(*stream.WorkflowExecutionStartedAttrs)
	return ok && a.RequestID == requestID
}

// newStartCommit builds the commit that starts a saga, after validating the
// id and type.
func newStartCommit(workflowType string, version int, input stream.Payload, opts StartOptions) (*stream.Commit, error) {
	if opts.ID == "" {
		opts.ID = nuid.Next()
	}
	if err := stream.ValidateID("saga id", opts.ID); err != nil {
		return nil, wrapStreamError("start", err)
	}
	if err := stream.ValidateID("workflow type", workflowType); err != nil {
		return nil, wrapStreamError("start", err)
	}
	if opts.RequestID == "" {
		opts.RequestID = nuid.Next()
	}
	if opts.RunTimeout < 0 {
		return nil, NewError(KindValidation, fmt.Sprintf("start: run timeout must not be negative, got %s", opts.RunTimeout))
	}
	return &stream.Commit{SagaID: opts.ID, WorkflowType: workflowType, Events: []stream.Event{{
		ID:     0,
		SagaID: opts.ID,
		Type:   stream.WorkflowExecutionStarted,
		Time:   time.Now(),
		Attrs: &stream.WorkflowExecutionStartedAttrs{
			WorkflowType: workflowType,
			Version:      version,
			Input:        input,
			RequestID:    opts.RequestID,
			RunTimeout:   opts.RunTimeout,
		},
	}}}, nil
}

// alreadyStartedResult turns the concurrency error of a start into
// ErrAlreadyStarted, or into the existing saga under IfExistsUseExisting.
func alreadyStartedResult(id string, opts StartOptions, err error) (StartResult, error) {
	if !errors.Is(err, stream.ErrConcurrency) {
		return StartResult{}, wrapStreamError("start "+id, err)
	}
	if opts.IfExists == IfExistsUseExisting {
		return StartResult{ID: id, Existing: true}, nil
	}
	return StartResult{}, (&Error{Kind: KindValidation, Message: fmt.Sprintf("start %s", id), Cause: ErrAlreadyStarted}).WithContext("saga_id", id)
}

// Cancel requests the cancellation of a running saga: it records
// WorkflowExecutionCancelRequested, once. The workflow's context is done
// from then on; activities that heartbeat learn of it at their next
// heartbeat; the saga compensates and ends canceled. A saga that has ended
// gives an error matching ErrAlreadyEnded, and a second request one
// matching ErrCancelRequested; both are of kind Validation.
func (c *Client) Cancel(ctx context.Context, id, reason string) error {
	return c.RequestCancel(ctx, id, reason, "client")
}

// RequestCancel is Cancel with the identity recorded as the requester.
func (c *Client) RequestCancel(ctx context.Context, id, reason, identity string) error {
	if len(reason) > maxCancelReason || len(identity) > maxCancelIdentity {
		return NewError(KindValidation, fmt.Sprintf("cancel %s: reason of %d bytes and identity of %d bytes, at most %d and %d",
			id, len(reason), len(identity), maxCancelReason, maxCancelIdentity))
	}
	if err := stream.ValidateID("saga id", id); err != nil {
		return wrapStreamError("cancel", err)
	}
	for attempt := 0; ; attempt++ {
		st, _, err := c.store.LoadState(ctx, id, c.load)
		if err != nil {
			return wrapStreamError("cancel "+id, err)
		}
		if !st.Exists() {
			return notFound(id)
		}
		switch {
		case st.Status.Terminal():
			return (&Error{Kind: KindValidation, Message: fmt.Sprintf("cancel %s: the saga already ended %s", id, st.Status), Cause: ErrAlreadyEnded}).
				WithContext("saga_id", id).WithContext("status", string(st.Status))
		case st.CancelRequested != nil:
			return (&Error{Kind: KindValidation, Message: fmt.Sprintf("cancel %s: cancellation already requested at event %d", id, st.CancelRequestedEventID), Cause: ErrCancelRequested}).
				WithContext("saga_id", id).WithContext("cause", st.CancelRequested.Cause)
		}
		commit := st.NewCommit([]stream.Event{{
			ID: st.NextEventID, SagaID: id, Type: stream.WorkflowExecutionCancelRequested, Category: stream.CategoryWorkflow, Time: time.Now(),
			Attrs: &stream.WorkflowExecutionCancelRequestedAttrs{Cause: stream.CancelByRequest, Reason: reason, Identity: identity},
		}}, false)
		_, err = c.store.Append(ctx, commit, st.LastSeq)
		if errors.Is(err, stream.ErrConcurrency) && attempt < maxCancelConflicts {
			// The saga moved on meanwhile: look again, after a pause that
			// keeps racing writers out of step.
			select {
			case <-time.After(cancelConflictPolicy.Delay(attempt + 1)):
			case <-ctx.Done():
				return &Error{Kind: KindTimeout, Message: "cancel " + id, Cause: ctx.Err()}
			}
			continue
		}
		if err != nil {
			return wrapStreamError("cancel "+id, err)
		}
		return nil
	}
}

// Bounds of what a cancellation records.
const (
	maxCancelReason   = 4 << 10
	maxCancelIdentity = 256
)

// cancelConflictPolicy spaces the re-reads of a saga that moved on while
// its cancellation was being recorded.
var cancelConflictPolicy = backoff.Policy{Initial: 5 * time.Millisecond, Max: 200 * time.Millisecond}

// maxCancelConflicts bounds the re-reads of a saga that keeps moving
// while a cancellation is requested.
const maxCancelConflicts = 20

// Signal sends a signal to a saga: it publishes value (encoded in msgpack)
// to the inbox stream, from which a node records it in the saga's history
// as SignalReceived, in inbox order. It returns once the inbox stored the
// signal; a signal to a saga that does not exist or has ended is then set
// aside in the dead-letter stream with that reason (the API's signal
// checks first and answers with an error).
func (c *Client) Signal(ctx context.Context, id, name string, value any) error {
	p, err := stream.Marshal(value)
	if err != nil {
		return Errorf(KindCodec, "signal %s: encode value: %w", name, err)
	}
	_, err = c.SignalPayload(ctx, id, name, p, "")
	return err
}

// SignalPayload is Signal with an encoded value and, optionally, a message
// id: the inbox drops a second signal with the same id within its
// duplicate window, so a sender may retry safely. It returns the signal's
// inbox sequence.
func (c *Client) SignalPayload(ctx context.Context, id, name string, value stream.Payload, msgID string) (uint64, error) {
	for what, v := range map[string]string{"saga id": id, "signal name": name} {
		if err := stream.ValidateID(what, v); err != nil {
			return 0, wrapStreamError("signal", err)
		}
	}
	value, err := c.seal(ctx, "signal", value)
	if err != nil {
		return 0, err
	}
	if err := c.store.Config().CheckPayload("signal "+name, value); err != nil {
		return 0, wrapStreamError("signal", err)
	}
	if len(msgID) > MaxSignalMsgID {
		return 0, NewError(KindValidation, fmt.Sprintf("signal %s: message id of %d bytes, at most %d", id, len(msgID), MaxSignalMsgID))
	}
	msg := &nats.Msg{Subject: c.store.Config().InboxSignalSubject(id, name), Data: value,
		Header: nats.Header{"Content-Type": {"application/msgpack"}}}
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(c.store.Config().InboxStream())}
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	ack, err := c.store.JetStream().PublishMsg(ctx, msg, opts...)
	if err != nil {
		return 0, wrapStreamError("signal "+id, stream.MapError(err))
	}
	return ack.Sequence, nil
}

// seal seals a value the client is about to write, after checking (at
// most once a minute) that the client fits the fleet: its history shard
// count, so that it writes and reads where the nodes do, and its codec. A
// client without one would leave personal data in histories the operator
// believes sealed, and one with a key the fleet has not recorded would
// write values no node can open.
func (c *Client) seal(ctx context.Context, what string, p stream.Payload) (stream.Payload, error) {
	fleet, _ := c.fleet(ctx)
	if fleet.HistoryShards != 0 && fleet.HistoryShards != c.store.Config().HistoryShards {
		return nil, &Error{Kind: KindConfiguration, Message: what, Cause: fmt.Errorf("%w: the engine has %d history shard(s), the client is set to %d (ClientOptions.Stream.HistoryShards)",
			stream.ErrShardsMismatch, fleet.HistoryShards, c.store.Config().HistoryShards)}
	}
	if len(p) == 0 || stream.IsSealed(p) {
		return p, nil
	}
	if err := c.checkCodec(fleet); err != nil {
		return nil, &Error{Kind: KindConfiguration, Message: what, Cause: err}
	}
	if c.codec == nil {
		return p, nil
	}
	sealed, err := stream.SealPayload(c.codec, p)
	if err != nil {
		return nil, &Error{Kind: KindCodec, Message: what, Cause: err}
	}
	return sealed, nil
}

// fleet returns the fleet's settings, read at most once a minute and for
// at most fleetCheckTimeout: a client not allowed to read stream settings
// (the least-privilege client role) gets no answer, and then writes as it
// is configured; the nodes open what they can and leave the rest.
func (c *Client) fleet(ctx context.Context) (f stream.FleetSettings, read bool) {
	c.fleetMu.Lock()
	defer c.fleetMu.Unlock()
	if time.Since(c.fleetChecked) > fleetCheckEvery {
		readCtx, cancel := context.WithTimeout(ctx, fleetCheckTimeout)
		f, err := stream.Fleet(readCtx, c.store.JetStream(), c.store.Config())
		cancel()
		c.fleetChecked = time.Now()
		if err != nil {
			c.logger.Debug("could not read the fleet's settings; writing as configured, and describing with no length warning", "err", err)
			f = stream.FleetSettings{}
		}
		c.fleetSettings, c.fleetRead = f, err == nil
	}
	return c.fleetSettings, c.fleetRead
}

// checkCodec compares the client's codec with the fleet's.
func (c *Client) checkCodec(fleet stream.FleetSettings) error {
	switch {
	case fleet.Codec == "":
		return nil
	case c.codec == nil:
		return fmt.Errorf("%w: the fleet seals payloads with %s; give the client a codec (ClientOptions.Codec)", stream.ErrCodecMismatch, fleet.Codec)
	case c.codec.Name() != fleet.Codec:
		return fmt.Errorf("%w: the fleet seals payloads with %s, the client with %s", stream.ErrCodecMismatch, fleet.Codec, c.codec.Name())
	case !slices.Contains(fleet.KeyIDs, c.codec.KeyID()):
		return fmt.Errorf("%w: the client seals with key %s, which no node has recorded: nodes could not open what it writes", stream.ErrCodecMismatch, c.codec.KeyID())
	}
	return nil
}

// fleetCheckTimeout bounds a client's read of the fleet's codec.
const fleetCheckTimeout = 2 * time.Second

// fleetCheckEvery spaces a codec-less client's checks of the fleet's codec.
const fleetCheckEvery = time.Minute

// MaxSignalMsgID bounds a signal's message id, which its history records.
const MaxSignalMsgID = 256

// Run is a handle to a started saga of a typed workflow.
type Run[Out any] struct {
	ID       string
	Existing bool
	c        *Client
}

// Get waits until the saga ends and returns its output, or its error
// (ErrBlocked if the engine blocked it).
func (r *Run[Out]) Get(ctx context.Context) (Out, error) {
	var out Out
	d, err := r.c.Wait(ctx, r.ID)
	if err != nil {
		return out, err
	}
	switch d.Status {
	case stream.StatusCompleted:
		if len(d.Output) > 0 {
			if err := decodeValue(r.c.codec, d.Output, &out); err != nil {
				return out, Errorf(KindCodec, "saga %s: decode output into %T: %w", r.ID, out, err)
			}
		}
		return out, nil
	case stream.StatusBlocked:
		return out, (&Error{Kind: KindReplay, Message: d.Blocked.Message, Cause: ErrBlocked}).WithContext("saga_id", r.ID)
	}
	if d.failure != nil {
		return out, FromFailure(d.failure)
	}
	return out, NewError(KindWorkflowExecution, "saga "+r.ID+" ended "+string(d.Status))
}

// History returns the saga's events in order: the whole history, every
// run of a saga that continued as new included. RunHistory returns the
// latest run alone.
func (c *Client) History(ctx context.Context, id string) ([]stream.Event, error) {
	commits, err := c.read(ctx, id)
	if err != nil {
		return nil, err
	}
	var events []stream.Event
	for _, sc := range commits {
		events = append(events, sc.Commit.Events...)
	}
	return events, nil
}

// RunHistory returns the events of the saga's latest run, from its
// WorkflowExecutionStarted: the whole history for a saga that never
// continued as new. It reads that run alone, however long the runs
// before it were.
func (c *Client) RunHistory(ctx context.Context, id string) ([]stream.Event, error) {
	commits, err := c.readRun(ctx, id)
	if err != nil {
		return nil, err
	}
	return stream.RunEventsOf(commits), nil
}

func (c *Client) read(ctx context.Context, id string) ([]stream.StoredCommit, error) {
	return c.readWith(ctx, id, c.store.ReadLatest)
}

// readRun reads the saga's latest run (see stream.Store.ReadRun).
func (c *Client) readRun(ctx context.Context, id string) ([]stream.StoredCommit, error) {
	return c.readWith(ctx, id, c.store.ReadLatestRun)
}

func (c *Client) readWith(ctx context.Context, id string, read func(context.Context, string) ([]stream.StoredCommit, error)) ([]stream.StoredCommit, error) {
	if err := stream.ValidateID("saga id", id); err != nil {
		return nil, wrapStreamError("read", err)
	}
	commits, err := read(ctx, id)
	if err != nil {
		return nil, wrapStreamError("read "+id, err)
	}
	if len(commits) == 0 {
		return nil, (&Error{Kind: KindValidation, Message: "saga " + id, Cause: ErrNotFound}).WithContext("saga_id", id)
	}
	return commits, nil
}

// Describe returns the saga's current state. A history holding a message
// the engine did not write (it does not decode, or does not continue the
// history) describes as blocked, with reason history_unreadable, up to
// that message.
func (c *Client) Describe(ctx context.Context, id string) (*Description, error) {
	d, err := c.describe(ctx, id)
	if err != nil {
		return nil, err
	}
	var warnings []string
	if d.Status == StatusRunning {
		if ok, err := c.store.HasWorkflowConsumer(ctx, d.Type); err == nil && !ok {
			warnings = append(warnings, fmt.Sprintf("no node has registered workflow type %q: the saga waits until one does", d.Type))
		}
	}
	if l, ok := c.historyLimits(ctx); ok && !d.Status.Terminal() && l.Warns(d.RunEvents, d.RunBytes) {
		warnings = append(warnings, fmt.Sprintf("history has %d events (%d bytes) in run %d, past the fleet's warning at %d events or %d bytes (limit %d events, %d bytes); consider continue-as-new",
			d.RunEvents, d.RunBytes, d.Run, l.WarnEvents, l.WarnBytes, l.LimitEvents, l.LimitBytes))
	}
	d.Warning = strings.Join(warnings, "; ")
	return d, nil
}

// historyLimits returns the fleet's history limits (read with its other
// settings, see fleet); false when they cannot be read (a client not
// allowed to read stream settings): describe then warns of nothing.
func (c *Client) historyLimits(ctx context.Context) (stream.HistoryLimits, bool) {
	f, read := c.fleet(ctx)
	return f.HistoryLimits, read && f.HistoryLimitsKnown
}

// describe folds the saga's history (from its latest snapshot, when it
// has a valid one) into its description, without the warning (an API
// call Wait has no use for on every commit).
func (c *Client) describe(ctx context.Context, id string) (*Description, error) {
	st, _, err := c.loadState(ctx, id)
	if err != nil {
		return nil, err
	}
	return describeState(st, id), nil
}

// loadState folds the saga's state as describe shows it; unreadable says
// the state was folded up to a message the engine did not write, and is
// described as blocked there.
func (c *Client) loadState(ctx context.Context, id string) (st *stream.State, unreadable bool, err error) {
	if err := stream.ValidateID("saga id", id); err != nil {
		return nil, false, wrapStreamError("describe", err)
	}
	st, _, readErr := c.store.LoadState(ctx, id, c.load)
	switch {
	case st == nil:
		return nil, false, wrapStreamError("describe "+id, readErr)
	case readErr == nil && !st.Exists():
		return nil, false, notFound(id)
	case readErr != nil && !st.Exists():
		return nil, false, wrapStreamError("describe "+id, readErr)
	case readErr != nil:
		st.Status = stream.StatusBlocked
		st.Blocked = &stream.WorkflowExecutionBlockedAttrs{Reason: stream.BlockedHistoryUnreadable, Message: readErr.Error(), AtEventID: st.NextEventID}
		return st, true, nil
	}
	return st, false, nil
}

// describeState describes a folded saga; id names it when the state does
// not (a history without its start).
func describeState(st *stream.State, id string) *Description {
	d := newDescription(st)
	if d.ID == "" {
		d.ID = id
	}
	return d
}

func notFound(id string) error {
	return (&Error{Kind: KindValidation, Message: "saga " + id, Cause: ErrNotFound}).WithContext("saga_id", id)
}

// follower describes a saga again and again, reading only the commits
// after those it has folded: a client waiting for a long saga would
// otherwise read its whole history at every commit, which doubled the
// saga's duration. It starts from the saga's latest snapshot. Whatever is
// not a plain continuation (a history that does not decode or fold, an
// archived saga) is read whole by describe.
type follower struct {
	st      *stream.State
	lastSeq uint64
}

func (f *follower) describe(ctx context.Context, c *Client, id string) (*Description, error) {
	if f.st == nil {
		st, unreadable, err := c.loadState(ctx, id)
		if err != nil {
			return nil, err
		}
		if !unreadable {
			f.st, f.lastSeq = st, st.LastSeq
		}
		return describeState(st, id), nil
	}
	commits, err := c.store.ReadLatestAfter(ctx, id, f.lastSeq)
	if err != nil {
		f.st, f.lastSeq = nil, 0
		if errors.Is(err, stream.ErrArchived) || errors.As(err, new(*stream.CodecError)) {
			return c.describe(ctx, id)
		}
		return nil, wrapStreamError("describe "+id, err)
	}
	for _, sc := range commits {
		if err := f.st.Apply(sc); err != nil {
			f.st, f.lastSeq = nil, 0
			return c.describe(ctx, id)
		}
		f.lastSeq = sc.Seq
	}
	if !f.st.Exists() {
		return nil, notFound(id)
	}
	return describeState(f.st, id), nil
}

// rereadPolicy spaces Wait's reads of a history that is behind what its
// notifications promised, for at most maxRereads reads in a row.
var rereadPolicy = backoff.Policy{Initial: time.Millisecond, Max: 100 * time.Millisecond}

const maxRereads = 8

// Wait blocks until the saga is terminal or blocked and returns its
// description. It listens for the saga's new commits and also re-reads
// every few seconds, so a missed notification only delays it.
func (c *Client) Wait(ctx context.Context, id string) (*Description, error) {
	if err := stream.ValidateID("saga id", id); err != nil {
		return nil, wrapStreamError("wait", err)
	}
	// A commit reaches subscribers as the stream stores it, so a read
	// right after the notification may not see it yet: remember how many
	// events the notifications promise and read again until they are there.
	var mu sync.Mutex
	var promised uint64
	notify := make(chan struct{}, 1)
	sub, err := c.nc.Subscribe(c.store.Config().HistorySubject(id), func(m *nats.Msg) {
		if commit, err := stream.DecodeCommit(m.Data); err == nil {
			mu.Lock()
			promised = max(promised, commit.NextEventID())
			mu.Unlock()
		}
		select {
		case notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, &Error{Kind: KindEventStore, Message: "wait " + id, Cause: err}
	}
	defer func() { _ = sub.Unsubscribe() }()
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	rereads := 0
	var follow follower
	for {
		d, err := follow.describe(ctx, c, id)
		switch {
		case err == nil && (d.Status.Terminal() || d.Status == stream.StatusBlocked):
			return d, nil
		case err != nil && ctx.Err() != nil:
			// The deadline passed during the read: the wait timed out,
			// whatever the read made of it.
			return nil, &Error{Kind: KindTimeout, Message: "wait " + id, Cause: ctx.Err()}
		case err != nil && !errors.Is(err, ErrNotFound):
			return nil, err
		}
		mu.Lock()
		var have uint64
		if d != nil {
			have = d.Events
		}
		// Read again soon while the history is behind what a notification
		// promised, for a while: a commit that lost its concurrency check
		// was also seen by subscribers, and never lands.
		behind := have < promised && rereads < maxRereads
		mu.Unlock()
		wake := notify
		var again <-chan time.Time
		if behind {
			rereads++
			again = time.After(rereadPolicy.Delay(rereads))
		} else {
			rereads = 0
		}
		select {
		case <-ctx.Done():
			return nil, &Error{Kind: KindTimeout, Message: "wait " + id, Cause: ctx.Err()}
		case <-wake:
		case <-again:
		case <-tick.C:
		}
	}
}
