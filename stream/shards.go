package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// A saga's history stream is chosen by hashing its id over the shard
// count, so every node and client of an engine must use the same count: a
// node with another would look for sagas in the wrong streams, create
// streams for shards the engine does not have, and could start a second
// history for an id that exists in another stream. The count is recorded
// in the first history stream's metadata when the engine's streams are
// created, and a node with another count is refused.

// metaHistoryShards records the engine's history shard count.
const metaHistoryShards = "saga_history_shards"

// ErrShardsMismatch is a node or client whose history shard count differs
// from the engine's.
var ErrShardsMismatch = errors.New("history shard count does not fit the engine's")

// checkShards compares the store's shard count with the one the engine
// has, before any missing stream is created. An engine created before
// the count was recorded has it recorded now, from the history streams
// that exist.
func (s *Store) checkShards(ctx context.Context) error {
	first := s.cfg.HistoryStream(0)
	var sc jetstream.StreamConfig
	err := retryUntil(ctx, func() error {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		defer cancel()
		st, err := s.js.Stream(attemptCtx, first)
		if err != nil {
			return err
		}
		sc = st.CachedInfo().Config
		return nil
	})
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil // a new engine: EnsureStreams creates it with the record
	case err != nil:
		return fmt.Errorf("history shards: read %s: %w", first, mapError(err))
	}
	if v, ok := sc.Metadata[metaHistoryShards]; ok {
		recorded, err := strconv.Atoi(v)
		if err != nil || recorded < 1 {
			return fmt.Errorf("%w: stream %s records %q", ErrShardsMismatch, first, v)
		}
		if recorded != s.cfg.HistoryShards {
			return fmt.Errorf("%w: the engine has %d history shard(s) (recorded on stream %s), this node is set to %d (--history-shards)",
				ErrShardsMismatch, recorded, first, s.cfg.HistoryShards)
		}
		return nil
	}
	existing, err := s.countHistoryStreams(ctx)
	if err != nil {
		return err
	}
	if existing != s.cfg.HistoryShards {
		return fmt.Errorf("%w: the engine has %d history stream(s), this node is set to %d (--history-shards)",
			ErrShardsMismatch, existing, s.cfg.HistoryShards)
	}
	meta := map[string]string{}
	for k, v := range sc.Metadata {
		meta[k] = v
	}
	meta[metaHistoryShards] = strconv.Itoa(existing)
	sc.Metadata = meta
	attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
	defer cancel()
	if _, err := s.js.UpdateStream(attemptCtx, sc); err != nil {
		return fmt.Errorf("history shards: record the count on %s: %w", first, mapError(err))
	}
	return nil
}

// countHistoryStreams counts the history streams that exist, from shard 0
// on.
func (s *Store) countHistoryStreams(ctx context.Context) (int, error) {
	for shard := 0; shard <= maxHistoryShards; shard++ {
		attemptCtx, cancel := context.WithTimeout(ctx, setupAttemptTimeout)
		_, err := s.js.Stream(attemptCtx, s.cfg.HistoryStream(shard))
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return shard, nil
		}
		if err != nil {
			return 0, fmt.Errorf("history shards: read %s: %w", s.cfg.HistoryStream(shard), mapError(err))
		}
	}
	return maxHistoryShards, nil
}
