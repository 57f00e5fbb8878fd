package stream

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MaxIDLength bounds saga ids and type names.
const MaxIDLength = 128

// ValidateID checks that s can be used as one subject token: 1 to 128
// letters, digits, '-' or '_'. what names the thing for the error message.
// A '.', '*', '>' or whitespace would change the meaning of a subject and is
// refused here, before anything reaches NATS.
func ValidateID(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidID, what)
	}
	if len(s) > MaxIDLength {
		return fmt.Errorf("%w: %s is %d bytes long, the limit is %d", ErrInvalidID, what, len(s), MaxIDLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' {
			continue
		}
		return fmt.Errorf("%w: %s %q has %q at byte %d; use letters, digits, '-' and '_'", ErrInvalidID, what, s, c, i)
	}
	return nil
}

// Config names and sizes the engine's streams. Every node and client of
// one engine must use the same Prefix and HistoryShards.
type Config struct {
	// Prefix is the first token of every subject and, upper-cased, of every
	// stream name, so that several engines can share one NATS account.
	// Defaults to "saga".
	Prefix string
	// HistoryShards is the number of history streams. A saga is placed by
	// a stable hash of its id and never moves, so this cannot change once
	// sagas exist. Defaults to 1.
	HistoryShards int
	// Replicas of every stream: 1 for a single server, 3 in a cluster.
	// Defaults to 1.
	Replicas int
	// MaxMsgSize bounds one commit or task message. Defaults to 1 MiB, the
	// server's default max_payload.
	MaxMsgSize int32
	// MaxPayloadSize bounds one user value (a workflow input or output, an
	// activity input or result), so that a commit holding a few of them
	// still fits in MaxMsgSize. Defaults to 256 KiB.
	MaxPayloadSize int
	// DuplicateWindow is how long the streams remember Nats-Msg-Id values
	// for de-duplication. Defaults to 2 minutes.
	DuplicateWindow time.Duration
	// Storage of the streams. Defaults to file storage.
	Storage jetstream.StorageType
	// HistoryLimits are recorded on the first history stream when a node
	// creates it (or finds it without them); from then on every node
	// follows the recorded ones, not this field (see HistoryLimits).
	// Zero fields take the defaults.
	HistoryLimits HistoryLimits
}

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config {
	if c.Prefix == "" {
		c.Prefix = "saga"
	}
	if c.HistoryShards == 0 {
		c.HistoryShards = 1
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.MaxMsgSize == 0 {
		c.MaxMsgSize = 1 << 20
	}
	if c.MaxPayloadSize == 0 {
		c.MaxPayloadSize = 256 << 10
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = 2 * time.Minute
	}
	c.HistoryLimits = c.HistoryLimits.Defaults()
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if err := ValidateID("prefix", c.Prefix); err != nil {
		return fmt.Errorf("stream config: Prefix: %w", err)
	}
	if c.HistoryShards < 1 || c.HistoryShards > maxHistoryShards {
		return fmt.Errorf("stream config: HistoryShards must be 1..%d, got %d", maxHistoryShards, c.HistoryShards)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("stream config: Replicas must be 1..5, got %d", c.Replicas)
	}
	if c.MaxMsgSize < 4096 {
		return fmt.Errorf("stream config: MaxMsgSize must be at least 4096, got %d", c.MaxMsgSize)
	}
	if c.MaxPayloadSize < 1 || c.MaxPayloadSize > int(c.MaxMsgSize)/2 {
		return fmt.Errorf("stream config: MaxPayloadSize must be 1..MaxMsgSize/2 (%d), got %d", c.MaxMsgSize/2, c.MaxPayloadSize)
	}
	if err := c.HistoryLimits.Validate(); err != nil {
		return fmt.Errorf("stream config: HistoryLimits: %w", err)
	}
	return nil
}

// CheckPayload refuses a user value that a reader could not take back:
// larger than MaxPayloadSize, nested deeper than MaxPayloadDepth, or not
// msgpack; what names it in the error.
func (c Config) CheckPayload(what string, p Payload) error {
	return CheckValue(what, p, c.MaxPayloadSize)
}

// Shard returns the history shard of a saga: FNV-1a of its id modulo the
// shard count. Stable across versions: changing it would orphan histories.
func (c Config) Shard(sagaID string) int {
	if c.HistoryShards <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(sagaID))
	return int(h.Sum32() % uint32(c.HistoryShards))
}

// HistoryStream names the history stream of a shard, e.g. SAGA_HISTORY_0.
func (c Config) HistoryStream(shard int) string {
	return strings.ToUpper(c.Prefix) + "_HISTORY_" + strconv.Itoa(shard)
}

// HistorySubject is the subject of one saga's history.
func (c Config) HistorySubject(sagaID string) string {
	return c.Prefix + ".h." + strconv.Itoa(c.Shard(sagaID)) + "." + sagaID
}

// HistoryFilter matches every saga subject of a shard.
func (c Config) HistoryFilter(shard int) string {
	return c.Prefix + ".h." + strconv.Itoa(shard) + ".*"
}

// SagaIDFromSubject extracts the saga id from a history subject.
func (c Config) SagaIDFromSubject(subject string) (string, error) {
	rest, ok := strings.CutPrefix(subject, c.Prefix+".h.")
	if !ok {
		return "", fmt.Errorf("%w: %q is not a history subject", ErrInvalidID, subject)
	}
	_, id, ok := strings.Cut(rest, ".")
	if !ok {
		return "", fmt.Errorf("%w: %q is not a history subject", ErrInvalidID, subject)
	}
	if err := ValidateID("saga id", id); err != nil {
		return "", err
	}
	return id, nil
}

// TaskStream names the work queue of activity and workflow tasks.
func (c Config) TaskStream() string { return strings.ToUpper(c.Prefix) + "_TASKS" }

// TaskSubject is the subject of one scheduled activity's task:
// <prefix>.task.activity.<type>.<sagaID>.<scheduled event id>. One subject
// per task lets a publication require that no task of that activity is
// queued (expected last subject sequence 0), which makes it idempotent for
// as long as the task exists, not only for the duplicate window.
func (c Config) TaskSubject(activityType, sagaID string, scheduledEventID uint64) string {
	return c.Prefix + ".task.activity." + activityType + "." + sagaID + "." + strconv.FormatUint(scheduledEventID, 10)
}

// ActivityTaskFilter matches the tasks of one activity type.
func (c Config) ActivityTaskFilter(activityType string) string {
	return c.Prefix + ".task.activity." + activityType + ".*.*"
}

// TimersBucket names the key-value bucket of the engine's durable timers.
func (c Config) TimersBucket() string { return strings.ToUpper(c.Prefix) + "_TIMERS" }

// ActivitiesBucket names the key-value bucket of activity attempt records.
func (c Config) ActivitiesBucket() string { return strings.ToUpper(c.Prefix) + "_ACTIVITIES" }

// SnapshotsBucket names the key-value bucket of the snapshots of sagas'
// folded state, one key per saga (see snapshot.go).
func (c Config) SnapshotsBucket() string { return strings.ToUpper(c.Prefix) + "_SNAPSHOTS" }

// WorkflowTaskConsumer names the durable consumer of a workflow type's
// tasks, shared by the nodes that register the type. The reference
// manual's single workflow_task_queue, "saga-workflows", becomes one such
// queue per workflow type, so that nodes may run different workflows.
func WorkflowTaskConsumer(workflowType string) string { return "saga-workflows-" + workflowType }

// ActivityTaskConsumer names the durable consumer of an activity type's
// tasks.
func ActivityTaskConsumer(activityType string) string { return "saga-activities-" + activityType }

// WorkflowTaskSubject is the subject the workflow tasks ("saga X has new
// events to decide on") of one workflow type are published on.
func (c Config) WorkflowTaskSubject(workflowType string) string {
	return c.Prefix + ".task.workflow." + workflowType
}

// APISubject is the request subject of an API verb, e.g. saga.api.describe.
func (c Config) APISubject(verb string) string { return c.Prefix + ".api." + verb }

// StartSubject is the request subject that starts sagas of a workflow
// type, served by the nodes that register the type.
func (c Config) StartSubject(workflowType string) string {
	return c.Prefix + ".api.start." + workflowType
}

// historyStreamConfig is the history stream of one shard.
//
//   - Limits retention with no limits: histories stay until archived.
//   - DenyDelete: events are immutable; whole sagas can still be purged by
//     subject once archived.
//   - AllowDirect: reads of one saga go straight to the stream's store.
//   - Duplicates: the window in which a retried publish is recognised.
//
// maxHistoryShards bounds an engine's history streams.
const maxHistoryShards = 1024

func (c Config) historyStreamConfig(shard int) jetstream.StreamConfig {
	var meta map[string]string
	if shard == 0 {
		// The engine's shard count (see checkShards), and its history
		// limits: recorded with the stream, so that of nodes creating it
		// at once one's win, for all (see HistoryLimits).
		meta = c.HistoryLimits.metadata(map[string]string{metaHistoryShards: strconv.Itoa(c.HistoryShards)})
	}
	return jetstream.StreamConfig{
		Metadata:    meta,
		Name:        c.HistoryStream(shard),
		Description: "saga histories, one subject per saga",
		Subjects:    []string{c.HistoryFilter(shard)},
		Retention:   jetstream.LimitsPolicy,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		MaxMsgSize:  c.MaxMsgSize,
		Duplicates:  c.DuplicateWindow,
		DenyDelete:  true,
		AllowDirect: true,
		Discard:     jetstream.DiscardNew,
	}
}

// InboxStream names the stream that captures what any NATS client
// publishes to the engine: starts, signals and cancellations.
func (c Config) InboxStream() string { return strings.ToUpper(c.Prefix) + "_INBOX" }

// InboxStartSubject is where a publish starts a saga of the workflow type.
func (c Config) InboxStartSubject(workflowType string) string {
	return c.Prefix + ".start." + workflowType
}

// InboxSignalSubject is where a publish signals a saga.
func (c Config) InboxSignalSubject(sagaID, name string) string {
	return c.Prefix + ".signal." + sagaID + "." + name
}

// InboxSignalFilter matches every signal subject.
func (c Config) InboxSignalFilter() string { return c.Prefix + ".signal.*.*" }

// InboxCancelSubject is where a publish requests a saga's cancellation.
func (c Config) InboxCancelSubject(sagaID string) string { return c.Prefix + ".cancel." + sagaID }

// InboxCancelFilter matches every cancellation subject.
func (c Config) InboxCancelFilter() string { return c.Prefix + ".cancel.*" }

// ParseInboxSubject splits an inbox subject into its kind ("start",
// "signal" or "cancel") and tokens: the workflow type, the saga id and
// signal name, or the saga id. Each token is checked as an id.
func (c Config) ParseInboxSubject(subject string) (kind string, tokens []string, err error) {
	rest, ok := strings.CutPrefix(subject, c.Prefix+".")
	if !ok {
		return "", nil, fmt.Errorf("%w: subject %q is not under prefix %q", ErrInvalidID, subject, c.Prefix)
	}
	parts := strings.Split(rest, ".")
	want := map[string]int{"start": 2, "signal": 3, "cancel": 2}[parts[0]]
	if want == 0 || len(parts) != want {
		return "", nil, fmt.Errorf("%w: subject %q is not an inbox subject", ErrInvalidID, subject)
	}
	for _, t := range parts[1:] {
		if err := ValidateID("subject token", t); err != nil {
			return "", nil, err
		}
	}
	return parts[0], parts[1:], nil
}

// DispatcherConsumer is the durable consumer of every history stream that
// carries out each commit's effects.
const DispatcherConsumer = "saga-dispatch"

// InboxStartConsumer names the durable consumer of published starts of a
// workflow type; only nodes that register the type create it.
func InboxStartConsumer(workflowType string) string { return "saga-starts-" + workflowType }

// Durable consumers of published signals and cancellations.
const (
	InboxSignalConsumer = "saga-signals"
	InboxCancelConsumer = "saga-cancels"
)

// inboxStreamConfig captures starts, signals and cancellations published
// by any client, so that a fire-and-forget publish is durable. Work-queue
// retention: a message goes once a node moved it into a history. The
// duplicate window drops a sender's retry with the same Nats-Msg-Id.
func (c Config) inboxStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.InboxStream(),
		Description: "starts, signals and cancellations published by any NATS client",
		Subjects:    []string{c.Prefix + ".start.*", c.InboxSignalFilter(), c.InboxCancelFilter()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		MaxMsgSize:  c.MaxMsgSize,
		Duplicates:  c.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
	}
}

// taskStreamConfig is the work queue of tasks derived from histories, one
// subject per activity type and per workflow type, so that a node consumes
// only the types it registered.
func (c Config) taskStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.TaskStream(),
		Description: "activity and workflow tasks derived from saga histories",
		Subjects:    []string{c.Prefix + ".task.activity.*.*.*", c.Prefix + ".task.workflow.*"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		MaxMsgSize:  c.MaxMsgSize,
		Duplicates:  c.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
	}
}
