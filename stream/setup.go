package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/internal/backoff"
)

// The streams, consumers and buckets of an engine are shared by all its
// nodes, and nodes may be started with different settings. So a node
// creates what is missing and never changes what exists: it checks an
// existing one against what it would have created, keeps the existing
// value where the engine works with it, and refuses to start where it
// does not. Changing a shared setting is the operator's decision (nats
// stream edit, nats consumer edit), not the last node's to start.

// ErrIncompatibleSetup means an existing stream, consumer or bucket has a
// setting the engine cannot work with. The message names it.
var ErrIncompatibleSetup = errors.New("incompatible JetStream setup")

// EnsureStream creates the stream from want if it does not exist;
// otherwise it checks the existing one against want and never changes it.
// It returns the configuration in force (the existing one, or the created
// one). Settings kept although they differ from want are logged on log
// (nil: not logged). Transient errors of a server starting up are retried
// until ctx ends.
func EnsureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, log *slog.Logger) (jetstream.StreamConfig, error) {
	log = orDiscard(log)
	var (
		have    jetstream.StreamConfig
		existed bool
	)
	err := retryUntil(ctx, func() error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		// A create of an identical configuration succeeds: nothing to check.
		s, err := js.CreateStream(attemptCtx, want)
		if err == nil {
			have, existed = s.CachedInfo().Config, false
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return err
		}
		s, err = js.Stream(attemptCtx, want.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errSetupRaced // deleted in between: create it again
		}
		if err != nil {
			return err
		}
		have, existed = s.CachedInfo().Config, true
		return nil
	})
	if err != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("stream %s: create: %w", want.Name, mapError(err))
	}
	if !existed {
		log.Debug("stream in place as configured", "stream", want.Name)
		return have, nil
	}
	if err := judge(streamPolicy, &want, &have, "stream "+want.Name, log, "stream", want.Name); err != nil {
		return jetstream.StreamConfig{}, err
	}
	return have, nil
}

// EnsureConsumer creates the durable pull consumer want.Durable on stream
// if it does not exist; otherwise it checks it and never changes it. It
// returns the consumer, whose CachedInfo().Config holds the settings in
// force (AckWait above all). Nodes creating the same consumer at once all
// get it.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, want jetstream.ConsumerConfig, log *slog.Logger) (jetstream.Consumer, error) {
	log = orDiscard(log)
	what := "consumer " + want.Durable + " on stream " + stream
	if want.Durable == "" || want.DeliverSubject != "" {
		return nil, fmt.Errorf("%s: EnsureConsumer sets up durable pull consumers only", what)
	}
	var (
		cons    jetstream.Consumer
		existed bool
	)
	err := retryUntil(ctx, func() error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		c, err := js.CreateConsumer(attemptCtx, stream, want)
		if err == nil {
			cons, existed = c, false
			return nil
		}
		// 10148: exists with another configuration; 10013 and 10105: a
		// create that raced another create of the same name.
		if code := apiErrorCode(err); code != codeConsumerExists && code != codeConsumerNameExists && code != codeConsumerExistingActive {
			return err
		}
		c, err = js.Consumer(attemptCtx, stream, want.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return errSetupRaced // not yet visible, or deleted: try again
		}
		if err != nil {
			return err
		}
		cons, existed = c, true
		return nil
	})
	if errors.Is(err, jetstream.ErrNotPullConsumer) {
		return nil, fmt.Errorf("%s: deliver_subject is set (a push consumer), the engine needs a pull consumer: %w", what, ErrIncompatibleSetup)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: create: %w", what, mapError(err))
	}
	if !existed {
		log.Debug("consumer in place as configured", "consumer", want.Durable, "stream", stream)
		return cons, nil
	}
	have := cons.CachedInfo().Config
	if err := judge(consumerPolicy, &want, &have, what, log, "consumer", want.Durable, "stream", stream); err != nil {
		return nil, err
	}
	return cons, nil
}

// EnsureKeyValue creates the bucket if missing, otherwise checks it
// (through its stream's configuration) and never changes it. Buckets that
// mirror or source others are not supported.
func EnsureKeyValue(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig, log *slog.Logger) (jetstream.KeyValue, error) {
	return ensureKeyValue(ctx, js, want, keyValuePolicy, log)
}

// ensureKeyValue is EnsureKeyValue judging an existing bucket by policy.
func ensureKeyValue(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig, policy []rule[streamConfig], log *slog.Logger) (jetstream.KeyValue, error) {
	log = orDiscard(log)
	wantStream := keyValueStreamConfig(want)
	what := "bucket " + want.Bucket + " (stream " + wantStream.Name + ")"
	if want.Mirror != nil || len(want.Sources) > 0 {
		return nil, fmt.Errorf("%s: EnsureKeyValue does not set up mirrored or sourced buckets", what)
	}
	var (
		kv   jetstream.KeyValue
		have *jetstream.StreamConfig
	)
	err := retryUntil(ctx, func() error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		// Look first: CreateKeyValue on an existing bucket may update it
		// (nats.go mends buckets of old servers that way).
		s, err := js.Stream(attemptCtx, wantStream.Name)
		if err == nil {
			cfg := s.CachedInfo().Config
			have = &cfg
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
		kv, err = js.CreateKeyValue(attemptCtx, want)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return errSetupRaced // another node created it: look again
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: create: %w", what, mapError(err))
	}
	if have == nil {
		log.Debug("bucket created", "bucket", want.Bucket)
		return kv, nil
	}
	if err := judge(policy, &wantStream, have, what, log, "bucket", want.Bucket); err != nil {
		return nil, err
	}
	err = retryUntil(ctx, func() error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		kv, err = js.KeyValue(attemptCtx, want.Bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, mapError(err))
	}
	return kv, nil
}

// keyValueStreamConfig is the stream jetstream.CreateKeyValue creates for
// cfg (nats.go v1.55.0, kv.go prepareKeyValueConfig), for a bucket that
// neither mirrors nor sources others.
func keyValueStreamConfig(cfg jetstream.KeyValueConfig) jetstream.StreamConfig {
	history := int64(max(cfg.History, 1))
	maxBytes := cfg.MaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	maxMsgSize := cfg.MaxValueSize
	if maxMsgSize == 0 {
		maxMsgSize = -1
	}
	duplicates := 2 * time.Minute
	if cfg.TTL > 0 && cfg.TTL < duplicates {
		duplicates = cfg.TTL
	}
	var compression jetstream.StoreCompression
	if cfg.Compression {
		compression = jetstream.S2Compression
	}
	return jetstream.StreamConfig{
		Name:                   "KV_" + cfg.Bucket,
		Description:            cfg.Description,
		Subjects:               []string{"$KV." + cfg.Bucket + ".>"},
		MaxMsgsPerSubject:      history,
		MaxBytes:               maxBytes,
		MaxAge:                 cfg.TTL,
		MaxMsgSize:             maxMsgSize,
		Storage:                cfg.Storage,
		Replicas:               max(cfg.Replicas, 1),
		Placement:              cfg.Placement,
		AllowRollup:            true,
		DenyDelete:             true,
		Duplicates:             duplicates,
		MaxMsgs:                -1,
		MaxConsumers:           -1,
		AllowDirect:            true,
		RePublish:              cfg.RePublish,
		Compression:            compression,
		Discard:                jetstream.DiscardNew,
		AllowMsgTTL:            cfg.LimitMarkerTTL != 0,
		SubjectDeleteMarkerTTL: cfg.LimitMarkerTTL,
		Metadata:               cfg.Metadata,
	}
}

type (
	streamConfig   = jetstream.StreamConfig
	consumerConfig = jetstream.ConsumerConfig
)

// streamPolicy says, for every setting of jetstream.StreamConfig (by its
// JSON name, as `nats stream info --json` shows it), what a node does when
// an existing stream's value differs from the one it would create. A test
// checks that no setting is left out.
var streamPolicy = []rule[streamConfig]{
	// Identity and notes.
	{"name", ignored[streamConfig]}, // the stream was found by it
	{"description", kept(func(c *streamConfig) string { return c.Description })},
	{"metadata", kept(func(c *streamConfig) map[string]string { return userMetadata(c.Metadata) })},
	{"first_seq", keptOrDefault(func(c *streamConfig) uint64 { return c.FirstSeq })},
	{"template_owner", ignored[streamConfig]}, // deprecated: servers no longer manage streams from templates

	// What the stream stores and how the engine writes, reads and
	// acknowledges it: these must be as the engine would create them.
	{"subjects", subjectsCovered},
	{"retention", same(func(c *streamConfig) jetstream.RetentionPolicy { return c.Retention })},
	{"discard", same(func(c *streamConfig) jetstream.DiscardPolicy { return c.Discard })},
	{"discard_new_per_subject", same(func(c *streamConfig) bool { return c.DiscardNewPerSubject })},
	{"no_ack", same(func(c *streamConfig) bool { return c.NoAck })},                     // appends wait for acks
	{"sealed", same(func(c *streamConfig) bool { return c.Sealed })},                    // a sealed stream takes no appends
	{"mirror", same(func(c *streamConfig) *jetstream.StreamSource { return c.Mirror })}, // a mirror takes no appends
	{"sources", same(func(c *streamConfig) []*jetstream.StreamSource { return nilIfEmpty(c.Sources) })},
	{"subject_transform", same(func(c *streamConfig) *jetstream.SubjectTransformConfig { return c.SubjectTransform })},
	{"allow_msg_counter", same(func(c *streamConfig) bool { return c.AllowMsgCounter })}, // a counter stream refuses plain messages
	// Archiving purges subjects; a stream the engine would protect stays so.
	{"deny_purge", same(func(c *streamConfig) bool { return c.DenyPurge })},
	// An idle limit would delete the engine's durable consumers.
	{"consumer_limits.inactive_threshold", same(func(c *streamConfig) time.Duration { return c.ConsumerLimits.InactiveThreshold })},
	{"subject_delete_marker_ttl", markerTTL},
	{"persist_mode", persistMode},

	// Features the engine uses must be on; those it does not use may be.
	{"deny_delete", need(func(c *streamConfig) bool { return c.DenyDelete })},
	{"allow_direct", need(func(c *streamConfig) bool { return c.AllowDirect })},
	{"allow_rollup_hdrs", need(func(c *streamConfig) bool { return c.AllowRollup })},
	{"allow_msg_ttl", need(func(c *streamConfig) bool { return c.AllowMsgTTL })},
	{"allow_atomic", need(func(c *streamConfig) bool { return c.AllowAtomicPublish })},
	{"allow_msg_schedules", need(func(c *streamConfig) bool { return c.AllowMsgSchedules })},
	{"allow_batched", need(func(c *streamConfig) bool { return c.AllowBatchPublish })},

	// Limits: the stream must keep at least what the engine asks for
	// (histories are kept until archived).
	{"max_age", limit(func(c *streamConfig) time.Duration { return c.MaxAge })},
	{"max_msgs", limit(func(c *streamConfig) int64 { return c.MaxMsgs })},
	{"max_bytes", limit(func(c *streamConfig) int64 { return c.MaxBytes })},
	{"max_msgs_per_subject", limit(func(c *streamConfig) int64 { return c.MaxMsgsPerSubject })},
	{"max_consumers", limit(func(c *streamConfig) int { return c.MaxConsumers })},

	// The operator's to choose: a node keeps what the stream has. Above
	// all replicas, which a node neither lowers nor raises.
	{"num_replicas", kept(func(c *streamConfig) int { return max(c.Replicas, 1) })},
	{"storage", kept(func(c *streamConfig) jetstream.StorageType { return c.Storage })},
	{"placement", kept(func(c *streamConfig) *jetstream.Placement { return c.Placement })},
	{"duplicate_window", keptOrDefault(func(c *streamConfig) time.Duration { return c.Duplicates })},
	{"max_msg_size", keptLimit(func(c *streamConfig) int32 { return c.MaxMsgSize })},
	{"compression", kept(func(c *streamConfig) jetstream.StoreCompression { return c.Compression })},
	{"republish", kept(func(c *streamConfig) *jetstream.RePublish { return c.RePublish })}, // copies, changes nothing stored
	{"mirror_direct", kept(func(c *streamConfig) bool { return c.MirrorDirect })},          // only for mirrors, refused above
	{"consumer_limits.max_ack_pending", keptOrDefault(func(c *streamConfig) int { return c.ConsumerLimits.MaxAckPending })},
}

// keyValuePolicy is streamPolicy for a bucket's stream, except that its
// history must be exactly the one wanted: timers rely on one revision per
// key (with more, an expiring key left no marker).
var keyValuePolicy = replaceRule(streamPolicy, rule[streamConfig]{"history (max_msgs_per_subject)",
	same(func(c *streamConfig) int64 { return c.MaxMsgsPerSubject })}, "max_msgs_per_subject")

// consumerPolicy is streamPolicy's counterpart for every setting of
// jetstream.ConsumerConfig.
var consumerPolicy = []rule[consumerConfig]{
	// Identity, notes, and where a new consumer starts: an existing one
	// goes on from where it is.
	{"name", ignored[consumerConfig]},
	{"durable_name", ignored[consumerConfig]}, // the consumer was found by it
	{"description", kept(func(c *consumerConfig) string { return c.Description })},
	{"metadata", kept(func(c *consumerConfig) map[string]string { return userMetadata(c.Metadata) })},
	{"deliver_policy", ignored[consumerConfig]},
	{"opt_start_seq", ignored[consumerConfig]},
	{"opt_start_time", ignored[consumerConfig]},

	// Which messages arrive, and how they are acknowledged and delivered
	// again: these must be as the engine would create them.
	{"filter_subject", same(func(c *consumerConfig) []string { return filters(c) })},
	{"filter_subjects", ignored[consumerConfig]}, // compared with filter_subject
	{"ack_policy", same(func(c *consumerConfig) jetstream.AckPolicy { return c.AckPolicy })},
	{"replay_policy", same(func(c *consumerConfig) jetstream.ReplayPolicy { return c.ReplayPolicy })},
	{"headers_only", same(func(c *consumerConfig) bool { return c.HeadersOnly })},
	{"deliver_subject", same(func(c *consumerConfig) string { return c.DeliverSubject })}, // the engine pulls
	{"deliver_group", ignored[consumerConfig]},                                            // push only, refused above
	{"flow_control", ignored[consumerConfig]},                                             // push only
	{"idle_heartbeat", ignored[consumerConfig]},                                           // push only
	{"rate_limit_bps", ignored[consumerConfig]},                                           // push only
	// After max_deliver deliveries the server drops a message silently.
	{"max_deliver", limit(func(c *consumerConfig) int { return c.MaxDeliver })},
	// A backoff overrides the AckWait-based redelivery the engine relies on.
	{"backoff", same(func(c *consumerConfig) []time.Duration { return nilIfEmpty(c.BackOff) })},
	// The server deletes a consumer idle for inactive_threshold.
	{"inactive_threshold", same(func(c *consumerConfig) time.Duration { return c.InactiveThreshold })},
	// A pinned or overflow consumer refuses pulls that name no group.
	{"priority_policy", same(func(c *consumerConfig) jetstream.PriorityPolicy { return c.PriorityPolicy })},
	{"priority_groups", same(func(c *consumerConfig) []string { return nilIfEmpty(c.PriorityGroups) })},

	// The operator's to tune: a node keeps what the consumer has. Above
	// all ack_wait, which all nodes sharing the consumer then agree on.
	{"ack_wait", keptOrDefault(func(c *consumerConfig) time.Duration { return c.AckWait })},
	{"max_ack_pending", keptOrDefault(func(c *consumerConfig) int { return c.MaxAckPending })},
	{"max_waiting", keptOrDefault(func(c *consumerConfig) int { return c.MaxWaiting })},
	{"num_replicas", keptOrDefault(func(c *consumerConfig) int { return c.Replicas })},
	{"mem_storage", kept(func(c *consumerConfig) bool { return c.MemoryStorage })},
	{"sample_freq", keptOrDefault(func(c *consumerConfig) string { return c.SampleFrequency })},
	{"max_batch", keptOrDefault(func(c *consumerConfig) int { return c.MaxRequestBatch })}, // a server limit applies to any consumer
	{"max_expires", keptOrDefault(func(c *consumerConfig) time.Duration { return c.MaxRequestExpires })},
	{"max_bytes", keptOrDefault(func(c *consumerConfig) int { return c.MaxRequestMaxBytes })},
	{"priority_timeout", keptOrDefault(func(c *consumerConfig) time.Duration { return c.PinnedTTL })},
	{"pause_until", pauseUntil}, // an operator's pause: kept, loudly
}

// verdict is what the check of one setting decides.
type verdict int

const (
	accept    verdict = iota // as wanted, or different in a way that does not matter
	adopt                    // different; the existing value is kept, logged at Info
	adoptWarn                // kept, though it weakens a guarantee: logged at Warn
	refuse                   // the engine cannot work with the existing value
)

// finding is the check of one setting: the verdict, and the existing and
// wanted values as the messages show them.
type finding struct {
	verdict    verdict
	have, want string
}

// rule checks one setting of an existing stream or consumer.
type rule[C any] struct {
	setting string
	check   func(want, have *C) finding
}

// judge checks have against want with rules: it logs the settings kept
// although they differ, and returns every refusal in one error naming
// what. attrs name it in the log.
func judge[C any](rules []rule[C], want, have *C, what string, log *slog.Logger, attrs ...any) error {
	var refusals []string
	for _, r := range rules {
		f := r.check(want, have)
		args := append(slices.Clone(attrs), "setting", r.setting, "existing", f.have, "this_node", f.want)
		switch f.verdict {
		case adopt:
			log.Info("keeping the existing setting, which differs from this node's", args...)
		case adoptWarn:
			log.Warn("keeping the existing setting, which weakens a guarantee", args...)
		case refuse:
			refusals = append(refusals, fmt.Sprintf("%s is %s, the engine needs %s", r.setting, f.have, f.want))
		}
	}
	if len(refusals) > 0 {
		return fmt.Errorf("%s: %s: %w", what, strings.Join(refusals, "; "), ErrIncompatibleSetup)
	}
	return nil
}

func ignored[C any](_, _ *C) finding { return finding{} }

// same refuses an existing value that differs from the wanted one.
func same[C, V any](get func(*C) V) func(want, have *C) finding {
	return func(want, have *C) finding {
		w, h := get(want), get(have)
		if reflect.DeepEqual(w, h) {
			return finding{}
		}
		return finding{refuse, show(h), show(w)}
	}
}

// kept keeps whatever value exists.
func kept[C, V any](get func(*C) V) func(want, have *C) finding {
	return func(want, have *C) finding {
		w, h := get(want), get(have)
		if reflect.DeepEqual(w, h) {
			return finding{}
		}
		return finding{adopt, show(h), show(w)}
	}
}

// keptOrDefault keeps whatever value exists; a zero wanted value asks for
// the server's default, so any value is as wanted.
func keptOrDefault[C any, V comparable](get func(*C) V) func(want, have *C) finding {
	return func(want, have *C) finding {
		var zero V
		if get(want) == zero {
			return finding{}
		}
		return kept(get)(want, have)
	}
}

// need refuses a feature that is off when the engine uses it.
func need[C any](get func(*C) bool) func(want, have *C) finding {
	return func(want, have *C) finding {
		if get(want) && !get(have) {
			return finding{refuse, "false", "true"}
		}
		return finding{}
	}
}

type limitValue interface {
	~int | ~int32 | ~int64
}

// limit refuses an existing limit below the wanted one. 0 and -1 both
// mean unlimited: the server echoes -1 for most limits, 0 for max_age.
func limit[C any, V limitValue](get func(*C) V) func(want, have *C) finding {
	return func(want, have *C) finding {
		w, h := get(want), get(have)
		switch {
		case w <= 0 && h <= 0, w == h:
			return finding{}
		case w <= 0, h > 0 && h < w:
			return finding{refuse, showLimit(h), showLimit(w)}
		}
		return finding{adopt, showLimit(h), showLimit(w)}
	}
}

// keptLimit keeps whatever limit exists, unlimited written either way.
func keptLimit[C any, V limitValue](get func(*C) V) func(want, have *C) finding {
	return func(want, have *C) finding {
		w, h := get(want), get(have)
		if w == h || w <= 0 && h <= 0 {
			return finding{}
		}
		return finding{adopt, showLimit(h), showLimit(w)}
	}
}

// markerTTL: delete markers are how expired timers are seen, so a stream
// that should write them must, and one that should not must not (they
// would be messages the engine did not write). A shorter time to keep them
// is kept, with a warning: it shortens the outage timers survive.
func markerTTL(want, have *streamConfig) finding {
	w, h := want.SubjectDeleteMarkerTTL, have.SubjectDeleteMarkerTTL
	show := func(d time.Duration) string {
		if d == 0 {
			return "off"
		}
		return d.String()
	}
	switch {
	case w == h:
		return finding{}
	case w == 0 || h == 0:
		return finding{refuse, show(h), show(w)}
	case h < w:
		return finding{adoptWarn, show(h), show(w)}
	}
	return finding{adopt, show(h), show(w)}
}

// persistMode refuses asynchronous persistence where the engine wants the
// default: an append must be stored when it is acknowledged, for the
// message that led to it is acknowledged next.
func persistMode(want, have *streamConfig) finding {
	if want.PersistMode == have.PersistMode {
		return finding{}
	}
	f := finding{adopt, show(have.PersistMode), show(want.PersistMode)}
	if have.PersistMode == jetstream.AsyncPersistMode {
		f.verdict = refuse
	}
	return f
}

// subjectsCovered refuses a stream that lacks a wanted subject; extra
// subjects are kept.
func subjectsCovered(want, have *streamConfig) finding {
	f := finding{accept, show(have.Subjects), show(want.Subjects)}
	for _, s := range want.Subjects {
		if !slices.Contains(have.Subjects, s) {
			f.verdict = refuse
			return f
		}
	}
	if len(have.Subjects) != len(want.Subjects) {
		f.verdict = adopt
	}
	return f
}

func pauseUntil(want, have *consumerConfig) finding {
	if have.PauseUntil == nil || want.PauseUntil != nil && have.PauseUntil.Equal(*want.PauseUntil) {
		return finding{}
	}
	return finding{adoptWarn, show(have.PauseUntil), show(want.PauseUntil)}
}

// filters is a consumer's filter subjects, however they were given.
func filters(c *consumerConfig) []string {
	fs := slices.Clone(c.FilterSubjects)
	if c.FilterSubject != "" {
		fs = append(fs, c.FilterSubject)
	}
	slices.Sort(fs)
	return nilIfEmpty(fs)
}

func nilIfEmpty[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}

// userMetadata leaves out what the server adds (_nats.ver, _nats.level…).
func userMetadata(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if strings.HasPrefix(k, "_nats.") {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

func replaceRule[C any](rules []rule[C], r rule[C], setting string) []rule[C] {
	out := slices.Clone(rules)
	for i := range out {
		if out[i].setting == setting {
			out[i] = r
		}
	}
	return out
}

// show writes a setting's value as an operator reads it: policies as
// their JSON names ("workqueue"), durations as "1h0m0s".
func show(v any) string {
	switch v := v.(type) {
	case time.Duration:
		return v.String()
	case string:
		return strconv.Quote(v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	s := string(b)
	if s == "null" {
		return "none"
	}
	if _, ok := v.(json.Marshaler); ok {
		s = strings.Trim(s, `"`)
	}
	return s
}

func showLimit[V limitValue](v V) string {
	if v <= 0 {
		return "unlimited"
	}
	if d, ok := any(v).(time.Duration); ok {
		return d.String()
	}
	return strconv.FormatInt(int64(v), 10)
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// JetStream API error codes of a consumer create that found the consumer.
const (
	codeConsumerExists         jetstream.ErrorCode = 10148 // with another configuration
	codeConsumerNameExists     jetstream.ErrorCode = 10013
	codeConsumerExistingActive jetstream.ErrorCode = 10105
)

// errSetupRaced means another node created or deleted what was being set
// up between two requests: trying again settles it.
var errSetupRaced = errors.New("raced another node's setup")

// setupAttemptTimeout bounds one request of a setup: one may go
// unanswered (a server that just joined its cluster), and the next is sent
// well within the caller's ctx.
const setupAttemptTimeout = 3 * time.Second

// retryUntil retries f with a short backoff while it fails with an error
// that a server still starting up gives, until ctx is done.
// ensuredStreamConfig reads the configuration of a stream the node has
// just ensured. In a cluster forming, or right after another node created
// the stream, a server may answer that it does not exist before it has
// applied the creation: that answer is retried too, for
// ensuredStreamPatience.
func ensuredStreamConfig(ctx context.Context, js jetstream.JetStream, name string) (jetstream.StreamConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, ensuredStreamPatience)
	defer cancel()
	var sc jetstream.StreamConfig
	err := backoff.Retry{Policy: setupPolicy, Retryable: func(err error) bool {
		return transientSetupError(err) || errors.Is(err, jetstream.ErrStreamNotFound)
	}}.Do(ctx, func(ctx context.Context) error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		s, err := js.Stream(attemptCtx, name)
		if err != nil {
			return err
		}
		sc = s.CachedInfo().Config
		return nil
	})
	return sc, mapError(err)
}

// ensuredStreamPatience bounds the wait for a stream just ensured to show.
const ensuredStreamPatience = 10 * time.Second

func retryUntil(ctx context.Context, f func() error) error {
	err := backoff.Retry{Policy: setupPolicy, Retryable: transientSetupError}.
		Do(ctx, func(context.Context) error { return f() })
	if err != nil && ctx.Err() != nil && transientSetupError(err) {
		return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
	}
	return err
}

// setupPolicy spaces the retries of set-up requests while JetStream comes
// up.
var setupPolicy = backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second}

func transientSetupError(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10008: JetStream is not ready / cluster has no leader yet;
		// 10023: insufficient resources while peers come up.
		return apiErr.ErrorCode == 10008 || apiErr.ErrorCode == 10023 || apiErr.Code == 503
	}
	return errors.Is(err, errSetupRaced) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders)
}
