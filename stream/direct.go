package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// directReader reads messages straight from a stream's store with the
// JetStream direct-get API, batch form included. All replies arrive on one
// long-lived wildcard subscription and are routed to the waiting request by
// the last token of the reply subject, so a read costs one request and no
// subscription churn.
type directReader struct {
	nc          *nats.Conn
	inboxPrefix string
	sub         *nats.Subscription

	mu      sync.Mutex
	pending map[string]chan *nats.Msg
	seq     uint64
	// dropReply, when set (by tests), drops the replies it returns true
	// for, as a slow consumer on the reply subscription would.
	dropReply func(*nats.Msg) bool
}

func newDirectReader(nc *nats.Conn) (*directReader, error) {
	r := &directReader{nc: nc, inboxPrefix: nc.NewRespInbox(), pending: map[string]chan *nats.Msg{}}
	sub, err := nc.Subscribe(r.inboxPrefix+".*", r.route)
	if err != nil {
		return nil, fmt.Errorf("direct get subscription: %w", err)
	}
	r.sub = sub
	return r, nil
}

func (r *directReader) close() { _ = r.sub.Unsubscribe() }

func (r *directReader) route(m *nats.Msg) {
	token := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	r.mu.Lock()
	ch := r.pending[token]
	drop := r.dropReply != nil && r.dropReply(m)
	r.mu.Unlock()
	if ch == nil || drop {
		return // a late reply to a request that gave up
	}
	select {
	case ch <- m:
	default: // more replies than asked for: the request already has its answer
	}
}

// errNoDirectResponders: a direct get found no server to answer it.
var errNoDirectResponders = errors.New("no server answered")

// lastSequenceHeader names, on each reply of a batch, the sequence of the
// reply before it.
const lastSequenceHeader = "Nats-Last-Sequence"

type directGetRequest struct {
	Seq        uint64 `json:"seq,omitempty"`
	NextBySubj string `json:"next_by_subj,omitempty"`
	LastBySubj string `json:"last_by_subj,omitempty"`
	Batch      int    `json:"batch,omitempty"`
}

// storedMsg is one message read from a stream.
type storedMsg struct {
	Subject string
	Seq     uint64
	Header  nats.Header
	Data    []byte
}

// get sends one direct-get request and collects its replies: a single
// message, or a batch closed by an end-of-batch status. numPending is the
// number of matching messages after the last one returned. A "no message"
// answer yields no messages and no error.
func (r *directReader) get(ctx context.Context, stream string, req directGetRequest) (msgs []storedMsg, numPending uint64, err error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, 0, err
	}
	replies := max(req.Batch, 1) + 1
	ch := make(chan *nats.Msg, replies)
	r.mu.Lock()
	r.seq++
	token := strconv.FormatUint(r.seq, 36)
	r.pending[token] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, token)
		r.mu.Unlock()
	}()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	subject := jsAPIPrefix + "DIRECT.GET." + stream
	if err := r.nc.PublishRequest(subject, r.inboxPrefix+"."+token, body); err != nil {
		return nil, 0, fmt.Errorf("direct get %s: %w", stream, err)
	}
	// A batch arrives as separate messages on the shared subscription, which
	// may drop some (a slow consumer). The server chains them: each names
	// the sequence of the one before it (0 for the first) and the end of
	// batch names the last, so a gap shows.
	var last uint64
	chained := func(m *nats.Msg) error {
		if req.Batch == 0 {
			return nil
		}
		prev, err := strconv.ParseUint(m.Header.Get(lastSequenceHeader), 10, 64)
		if err != nil || prev != last {
			return fmt.Errorf("%w: direct get %s: a reply follows sequence %s, the last one received was %d", ErrTornRead, stream, m.Header.Get(lastSequenceHeader), last)
		}
		return nil
	}
	for {
		var m *nats.Msg
		select {
		case m = <-ch:
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("direct get %s: %w", stream, ctx.Err())
		}
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			switch m.Header.Get("Status") {
			case "404":
				return msgs, 0, nil
			case "204": // end of batch
				if err := chained(m); err != nil {
					return nil, 0, err
				}
				np, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
				return msgs, np, nil
			case "503":
				// Nothing answered for the stream: it may be missing, or its
				// servers may be starting or electing. The store asks which.
				return nil, 0, fmt.Errorf("%w: %w: direct get %s", ErrUnavailable, errNoDirectResponders, stream)
			default:
				return nil, 0, fmt.Errorf("direct get %s: status %s %s", stream, m.Header.Get("Status"), m.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return nil, 0, fmt.Errorf("direct get %s: bad sequence header %q", stream, m.Header.Get(jetstream.SequenceHeader))
		}
		if err := chained(m); err != nil {
			return nil, 0, err
		}
		last = seq
		msgs = append(msgs, storedMsg{Subject: m.Header.Get(jetstream.SubjectHeader), Seq: seq, Header: m.Header, Data: m.Data})
		if req.Batch == 0 {
			return msgs, 0, nil
		}
	}
}
