package stream

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The engine's history shard count is recorded when its streams are
// created; a node set to another count is refused before it creates a
// stream, since it would look for sagas in the wrong streams and could
// start a second history for an existing id.
func TestShardCountIsTheEngines(t *testing.T) {
	nc, js := setupJetStream(t)
	ctx := setupContext(t, 30*time.Second)
	if err := openStore(t, nc, Config{HistoryShards: 2}).EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, Config{}.Defaults().HistoryStream(0))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Metadata[metaHistoryShards]; got != "2" {
		t.Fatalf("recorded shard count %q, want 2", got)
	}
	for _, shards := range []int{1, 4} {
		err := openStore(t, nc, Config{HistoryShards: shards}).EnsureStreams(ctx, nil)
		if !errors.Is(err, ErrShardsMismatch) {
			t.Fatalf("a node with %d shards on an engine of 2: %v", shards, err)
		}
	}
	if _, err := js.Stream(ctx, Config{}.Defaults().HistoryStream(2)); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("a refused node created a shard stream: %v", err)
	}
	if err := openStore(t, nc, Config{HistoryShards: 2}).EnsureStreams(ctx, nil); err != nil {
		t.Fatalf("a node with the engine's count: %v", err)
	}
}

// An engine created before the count was recorded has it recorded from
// the history streams that exist, by the first node that agrees with
// them; a node that does not is refused.
func TestShardCountOfAnEngineWithoutTheRecord(t *testing.T) {
	nc, js := setupJetStream(t)
	ctx := setupContext(t, 30*time.Second)
	cfg := Config{HistoryShards: 3}.Defaults()
	for shard := range 3 {
		sc := cfg.historyStreamConfig(shard)
		sc.Metadata = nil
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	if err := openStore(t, nc, Config{HistoryShards: 1}).EnsureStreams(ctx, nil); !errors.Is(err, ErrShardsMismatch) {
		t.Fatalf("a node with 1 shard on 3 existing streams: %v", err)
	}
	if err := openStore(t, nc, Config{HistoryShards: 3}).EnsureStreams(ctx, nil); err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, cfg.HistoryStream(0))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Metadata[metaHistoryShards]; got != "3" {
		t.Fatalf("recorded shard count %q, want 3", got)
	}
}

// A stream another node is creating, which a server does not show yet,
// is waited for by a node that has just set the streams up: before, the
// node read "stream not found" and exited (three nodes starting at once
// on a cluster forming). Here the stream is created once the node's first
// read of it has gone out.
func TestEnsuredStreamIsWaitedFor(t *testing.T) {
	nc, js := setupJetStream(t)
	ctx := setupContext(t, 30*time.Second)
	sc := Config{}.Defaults().historyStreamConfig(0)
	firstRead := make(chan struct{}, 1)
	sub, err := nc.Subscribe("$JS.API.STREAM.INFO."+sc.Name, func(*nats.Msg) {
		select {
		case firstRead <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		select {
		case <-firstRead:
		case <-ctx.Done():
		}
		_, err := js.CreateStream(ctx, sc)
		created <- err
	}()
	got, err := ensuredStreamConfig(ctx, js, sc.Name)
	if err != nil {
		t.Fatalf("the stream created meanwhile was not waited for: %v", err)
	}
	if got.Name != sc.Name {
		t.Fatalf("read %q", got.Name)
	}
	if err := <-created; err != nil {
		t.Fatal(err)
	}
}
