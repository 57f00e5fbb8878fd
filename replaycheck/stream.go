package replaycheck

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// StreamSource reads histories from the engine's history streams.
//
// It lists sagas by asking each history stream for the subjects it holds
// (one per saga, with its message count): the server sends them all, in
// pages of 100,000, and the whole map is held in memory at once. That is
// a few tens of bytes per saga, acceptable for a check run now and then;
// an archive indexed by type and start time lists a filtered set instead.
//
// The streams cannot say a saga's start time without reading its history,
// so Since is applied by Check after the read. Type is applied here from
// each saga's last commit (one direct get), so that sagas of other types
// are not read in full.
type StreamSource struct {
	store *stream.Store
}

var _ Source = (*StreamSource)(nil)

// NewStreamSource reads through store, whose Config must name the
// engine's prefix and history shard count.
func NewStreamSource(store *stream.Store) *StreamSource { return &StreamSource{store: store} }

// readTimeout bounds the reads of one saga, so that a stream that stops
// answering fails the check instead of hanging a CI job.
const readTimeout = 30 * time.Second

// SagaIDs lists the sagas of every history shard, sorted by id within the
// whole set, so that two checks of the same streams take the same order
// (and --limit the same sagas).
func (s *StreamSource) SagaIDs(ctx context.Context, f Filter) ([]string, error) {
	cfg := s.store.Config()
	js := s.store.JetStream()
	if err := s.checkShards(ctx, js, cfg); err != nil {
		return nil, err
	}
	var ids []string
	for shard := range cfg.HistoryShards {
		name := cfg.HistoryStream(shard)
		st, err := js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("history stream %s: %w", name, stream.MapError(err))
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(cfg.HistoryFilter(shard)))
		if err != nil {
			return nil, fmt.Errorf("list the subjects of %s: %w", name, stream.MapError(err))
		}
		// The last token as it is, even one that is not a valid id: such a
		// subject was written by someone else, and Events reports it.
		prefix := cfg.Prefix + ".h." + strconv.Itoa(shard) + "."
		for subject, n := range info.State.Subjects {
			if id, ok := strings.CutPrefix(subject, prefix); ok && n > 0 {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	if f.Type == "" {
		return ids, nil
	}
	kept := ids[:0]
	for _, id := range ids {
		keep, err := s.hasType(ctx, id, f.Type)
		if err != nil {
			return nil, err
		}
		if keep {
			kept = append(kept, id)
		}
	}
	return kept, nil
}

// checkShards refuses a configuration with fewer shards than the engine
// has: the sagas of the shards beyond it would not be checked, and the
// check would pass without a word.
func (s *StreamSource) checkShards(ctx context.Context, js jetstream.JetStream, cfg stream.Config) error {
	beyond := cfg.HistoryStream(cfg.HistoryShards)
	_, err := js.Stream(ctx, beyond)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("history stream %s: %w", beyond, stream.MapError(err))
	}
	return fmt.Errorf("%w: the engine has a history stream %s beyond the %d shard(s) configured here (set the history shard count the nodes run with)",
		ErrShardsMismatch, beyond, cfg.HistoryShards)
}

// ErrShardsMismatch means the history shard count given is not the
// engine's.
var ErrShardsMismatch = errors.New("history shard count mismatch")

// hasType reports whether the saga's commits say it is of workflowType:
// every commit repeats the type, so the last one says it. A saga whose
// last commit does not decode is kept, for Events to report.
func (s *StreamSource) hasType(ctx context.Context, id, workflowType string) (bool, error) {
	if stream.ValidateID("saga id", id) != nil {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	last, err := s.store.Last(ctx, id)
	switch {
	case errors.Is(err, stream.ErrNotFound):
		return false, nil
	case errors.Is(err, stream.ErrCodec), errors.Is(err, stream.ErrUnsupported):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read saga %s: %w", id, err)
	}
	return last.Commit.WorkflowType == workflowType, nil
}

// Events reads the saga's latest run from the stream's leader's point of
// view (stream.Store.ReadLatestRun: a lagging replica must not pass for
// the whole run), checks that its commits follow on from the run's
// start, and returns the run's events: the runs before it are not read.
func (s *StreamSource) Events(ctx context.Context, sagaID string) ([]stream.Event, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	commits, err := s.store.ReadLatestRun(ctx, sagaID)
	if err != nil {
		return nil, err
	}
	if len(commits) == 0 {
		return nil, fmt.Errorf("saga %q: %w", sagaID, stream.ErrNotFound)
	}
	if _, err := stream.Fold(commits); err != nil {
		return nil, fmt.Errorf("saga %s: %w", sagaID, err)
	}
	return stream.RunEventsOf(commits), nil
}
