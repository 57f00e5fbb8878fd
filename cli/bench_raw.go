package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// rawWriters is how many writers append at once: enough to keep a stream
// leader busy, as the engine's many sagas in flight do.
const rawWriters = 64

// rawAppendsPerSubject mirrors an order saga: five commits on its subject.
const rawAppendsPerSubject = 5

// errRawAppend marks a failure of the raw append measurement.
var errRawAppend = errors.New("raw appends")

// rawResult is the raw append rate and what it was measured with.
type rawResult struct {
	appends      int64
	elapsed      time.Duration
	payloadBytes int
}

func (r rawResult) perSec() float64 { return float64(r.appends) / r.elapsed.Seconds() }

// measureRawAppends measures the server alone doing what the engine's
// history appends do: OCC appends (expected last subject sequence, a
// msg id, the expected stream) of payload bytes by 64 writers, each moving
// to a fresh subject every few appends, on scratch streams set up like the
// history streams (storage, replicas, duplicate window, number of
// streams). The streams are deleted afterwards.
func measureRawAppends(ctx context.Context, nc *nats.Conn, cfg stream.Config, d time.Duration, payload int, p *progress) (rawResult, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return rawResult{}, fmt.Errorf("%w: %w", errRawAppend, err)
	}
	name := func(shard int) string { return strings.ToUpper(cfg.Prefix) + "_RAW_" + strconv.Itoa(shard) }
	subject := func(shard int, token string) string {
		return cfg.Prefix + ".raw." + strconv.Itoa(shard) + "." + token
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for shard := range cfg.HistoryShards {
			_ = js.DeleteStream(ctx, name(shard))
		}
	}()
	for shard := range cfg.HistoryShards {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        name(shard),
			Subjects:    []string{subject(shard, "*")},
			Retention:   jetstream.LimitsPolicy,
			Storage:     cfg.Storage,
			Replicas:    cfg.Replicas,
			MaxMsgSize:  cfg.MaxMsgSize,
			Duplicates:  cfg.DuplicateWindow,
			DenyDelete:  true,
			AllowDirect: true,
			Discard:     jetstream.DiscardNew,
		})
		if err != nil {
			return rawResult{}, fmt.Errorf("%w: create %s: %w", errRawAppend, name(shard), err)
		}
	}
	data := make([]byte, payload)
	_, _ = rand.Read(data) // incompressible, like msgpack commits in a file store

	var appends atomic.Int64
	var firstErr error
	var errOnce sync.Once
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	began := time.Now()
	deadline := began.Add(d)
	p.show(func() string {
		return fmt.Sprintf("%-12s %.1fs of %.1fs, %d appends", "raw appends", min(time.Since(began), d).Seconds(), d.Seconds(), appends.Load())
	})
	var wg sync.WaitGroup
	for w := range rawWriters {
		wg.Go(func() {
			for n := 0; time.Now().Before(deadline); n++ {
				token := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(n)
				shard := cfg.Shard(token)
				var last uint64
				for i := range rawAppendsPerSubject {
					ack, err := js.PublishMsg(runCtx, &nats.Msg{Subject: subject(shard, token), Data: data, Header: nats.Header{}},
						jetstream.WithMsgID(token+":"+strconv.Itoa(i)),
						jetstream.WithExpectLastSequencePerSubject(last),
						jetstream.WithExpectStream(name(shard)))
					if err != nil {
						errOnce.Do(func() { firstErr = err; cancel() })
						return
					}
					last = ack.Sequence
					appends.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	if firstErr != nil {
		return rawResult{}, fmt.Errorf("%w: %w", errRawAppend, firstErr)
	}
	return rawResult{appends: appends.Load(), elapsed: elapsed, payloadBytes: payload}, nil
}
