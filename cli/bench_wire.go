package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// benchInboxPrefix is the reply-inbox prefix of the bench's own admin
// connection: the wire tap leaves out what carries it, so that polling and
// stream info requests do not count as the engine's writes.
const benchInboxPrefix = "_SAGA_BENCH"

// benchAdminName names that connection, so that the API advisories its
// requests cause are left out too.
const benchAdminName = "saga-node bench (measuring)"

// Kinds of messages the wire tap tells apart.
const (
	wireHistory = "history"
	wireTask    = "task"
	wireAck     = "ack"
	wireKV      = "kv"
	wireInbox   = "inbox"
	wireDeliver = "delivery"
	wireAPI     = "api"
	wireOther   = "other"
)

// wireKindNotes says what each kind is to JetStream: a stored write, a
// change of consumer state, a request, or traffic back to clients.
var wireKindNotes = map[string]string{
	wireHistory: "JetStream write: stored (history appends, OCC-checked, rejected ones included)",
	wireTask:    "JetStream write: stored (activity and workflow tasks; removed again when acked)",
	wireKV:      "JetStream write: stored (timers, attempt records)",
	wireAck:     "consumer state change, not a stored message ($JS.ACK.>)",
	wireAPI:     "JetStream API requests ($JS.API.>: pulls, direct gets, deletes; see api_by_verb)",
	wireDeliver: "server to client: a stored message delivered to a consumer (reply $JS.ACK.>), not a write",
	wireInbox:   "server to client: PubAcks, API replies, pull status (_INBOX.>), not writes",
	wireOther:   "anything else (advisories, inbox-stream publishes)",
}

// apiVerbs are the JetStream API verbs told apart; the longest match wins,
// so the order puts the longer ones first.
var apiVerbs = []string{
	"CONSUMER.MSG.NEXT", "CONSUMER.DURABLE.CREATE", "CONSUMER.CREATE", "CONSUMER.INFO", "CONSUMER.DELETE",
	"CONSUMER.NAMES", "CONSUMER.LIST", "STREAM.MSG.DELETE", "STREAM.MSG.GET", "STREAM.INFO", "STREAM.CREATE",
	"STREAM.UPDATE", "STREAM.DELETE", "STREAM.PURGE", "STREAM.NAMES", "STREAM.LIST", "DIRECT.GET", "INFO",
}

// wireTap counts every message published on a server, by kind, from a
// core subscription to ">": whatever reaches JetStream crosses it first.
type wireTap struct {
	prefix string
	sub    *nats.Subscription
	marker string
	marked chan struct{}

	mu           sync.Mutex
	stopped      bool
	counts       map[string]int64
	verbs        map[string]int64
	historyBytes int64
}

func startWireTap(nc *nats.Conn, prefix string) (*wireTap, error) {
	w := &wireTap{
		prefix: prefix,
		marker: benchInboxPrefix + ".mark." + nuid.Next(),
		marked: make(chan struct{}),
		counts: map[string]int64{},
		verbs:  map[string]int64{},
	}
	sub, err := nc.Subscribe(">", w.count)
	if err != nil {
		return nil, fmt.Errorf("wire tap: %w", err)
	}
	// The tap must see everything; dropping messages would undercount.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("wire tap: %w", err)
	}
	if err := nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("wire tap: %w", err)
	}
	w.sub = sub
	return w, nil
}

func (w *wireTap) count(m *nats.Msg) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if m.Subject == w.marker {
		w.stopped = true
		close(w.marked)
		return
	}
	if strings.HasPrefix(m.Subject, benchInboxPrefix+".") || strings.HasPrefix(m.Reply, benchInboxPrefix+".") {
		return
	}
	if strings.HasPrefix(m.Subject, "$JS.EVENT.ADVISORY.API") && bytes.Contains(m.Data, []byte(benchAdminName)) {
		return
	}
	kind := classify(w.prefix, m.Subject, m.Reply)
	if kind == wireOther && w.counts[kind] < 6 {
	}
	w.counts[kind]++
	switch kind {
	case wireHistory:
		w.historyBytes += int64(len(m.Data))
	case wireAPI:
		w.verbs[apiVerb(m.Subject)]++
	}
}

// classify names the kind of one message on the wire. A JetStream delivery
// travels under the stored message's own subject, told apart by its ack
// reply subject.
func classify(prefix, subject, reply string) string {
	switch {
	case strings.HasPrefix(reply, "$JS.ACK."):
		return wireDeliver
	case strings.HasPrefix(subject, prefix+".h."):
		return wireHistory
	case strings.HasPrefix(subject, prefix+".task."):
		return wireTask
	case strings.HasPrefix(subject, "$JS.ACK."):
		return wireAck
	case strings.HasPrefix(subject, "$KV."):
		return wireKV
	case strings.HasPrefix(subject, "_INBOX."):
		return wireInbox
	case strings.HasPrefix(subject, "$JS.API."):
		return wireAPI
	}
	return wireOther
}

func apiVerb(subject string) string {
	rest := strings.TrimPrefix(subject, "$JS.API.")
	for _, v := range apiVerbs {
		if rest == v || strings.HasPrefix(rest, v+".") {
			return v
		}
	}
	return "OTHER"
}

// wireCounts is what the tap saw.
type wireCounts struct {
	byKind       map[string]int64
	byVerb       map[string]int64
	historyBytes int64
}

// stop ends the count once everything the given connections published so
// far has reached the tap: a flush of each means the server has routed
// their messages, and the marker, published after, arrives behind them.
func (w *wireTap) stop(ctx context.Context, tapConn *nats.Conn, published ...*nats.Conn) (wireCounts, error) {
	defer func() { _ = w.sub.Unsubscribe() }()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, nc := range published {
		if err := nc.FlushWithContext(ctx); err != nil {
			return wireCounts{}, fmt.Errorf("wire tap: flush: %w", err)
		}
	}
	if err := tapConn.Publish(w.marker, nil); err != nil {
		return wireCounts{}, fmt.Errorf("wire tap: %w", err)
	}
	select {
	case <-w.marked:
	case <-ctx.Done():
		return wireCounts{}, fmt.Errorf("wire tap: marker not seen: %w", ctx.Err())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return wireCounts{byKind: w.counts, byVerb: w.verbs, historyBytes: w.historyBytes}, nil
}
