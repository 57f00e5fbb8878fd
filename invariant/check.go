package invariant

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

// readTimeout bounds the reads of one saga, so that a stream that stops
// answering fails the check rather than hanging a run.
const readTimeout = 30 * time.Second

// defaultConcurrency is how many sagas Check reads at once by default:
// each read is a round trip or two, so a few in flight hide the latency
// without crowding the server.
const defaultConcurrency = 8

// Check reads the histories of the sagas opts names (every saga the
// streams hold when IDs is nil, plus those Acked names) and checks them.
// It returns an error only when a history cannot be read (the streams do
// not answer, ctx ends); a history that breaks an invariant, or does not
// decode, is a Violation.
//
// Each saga is read as the streams' leader has it (stream.Store.
// ReadLatest). A saga still running may move on while the check runs, so
// the harness checks once the engine is quiet; the Projection, which a
// projector fills asynchronously, once it has caught up.
func Check(ctx context.Context, opts Options) (Report, error) {
	if err := opts.validate(true); err != nil {
		return Report{}, err
	}
	listed, err := sagaIDs(ctx, opts)
	if err != nil {
		return Report{}, err
	}
	acked := map[string]bool{}
	for _, id := range opts.Acked.Starts {
		acked[id] = true
	}
	for _, s := range opts.Acked.Signals {
		acked[s.SagaID] = true
	}
	isListed := map[string]bool{}
	ids := slices.Clone(listed)
	for _, id := range listed {
		isListed[id] = true
	}
	for id := range acked {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)

	reads, err := readAll(ctx, opts, ids)
	if err != nil {
		return Report{}, err
	}
	if len(opts.Acked.Signals) > 0 && opts.SetAside == nil {
		if opts.SetAside, err = setAsideSignals(ctx, opts.Histories); err != nil {
			return Report{}, err
		}
	}
	var (
		hists      []History
		unchecked  []string // sagas with a history not checked
		archived   []string
		violations []Violation
		fromStream []string // sagas read from the streams, whose projection Verify compares
	)
	for _, rd := range reads {
		switch {
		case rd.violation != "":
			violations = append(violations, Violation{SagaID: rd.id, Rule: RuleHistory, Detail: rd.violation})
			unchecked = append(unchecked, rd.id)
		case rd.archived && rd.commits == nil:
			unchecked = append(unchecked, rd.id)
			archived = append(archived, rd.id)
		case len(rd.commits) == 0 && !rd.archived && !isListed[rd.id]:
			// Named by acknowledgements alone: evaluate reports it.
		default:
			hists = append(hists, History{SagaID: rd.id, Commits: rd.commits})
			if !rd.archived {
				fromStream = append(fromStream, rd.id)
			}
		}
	}
	r := evaluate(hists, unchecked, opts)
	r.Archived = archived
	// A history that does not decode is not handed to evaluate, so its
	// violation joins the rest here.
	r.Violations = append(r.Violations, violations...)
	if opts.Projection != nil {
		pv, err := verifyProjection(ctx, opts, fromStream, r.Violations)
		if err != nil {
			return Report{}, err
		}
		r.Violations = append(r.Violations, pv...)
	}
	slices.SortStableFunc(r.Violations, func(a, b Violation) int { return cmp.Compare(a.SagaID, b.SagaID) })
	return r, nil
}

// sagaIDs returns the sagas to check: opts.IDs, or every saga the history
// streams hold.
func sagaIDs(ctx context.Context, opts Options) ([]string, error) {
	if opts.IDs != nil {
		return slices.Clone(opts.IDs), nil
	}
	// The replay checker's listing also refuses a shard count below the
	// engine's, which would leave sagas out without a word.
	ids, err := replaycheck.NewStreamSource(opts.Histories).SagaIDs(ctx, replaycheck.Filter{})
	if err != nil {
		return nil, fmt.Errorf("invariant: list sagas: %w", err)
	}
	return ids, nil
}

// read is what reading one saga gave.
type read struct {
	id      string
	commits []stream.StoredCommit
	// archived: the streams hold only the archive marker; commits are
	// then the projection's, if there is one.
	archived bool
	// violation says why the history could not be checked at all.
	violation string
}

// readAll reads the sagas, opts.Concurrency at a time, in ids' order.
// The first read that fails stops the others and is the error.
func readAll(parent context.Context, opts Options, ids []string) ([]read, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	out := make([]read, len(ids))
	var (
		mu       sync.Mutex
		firstErr error
	)
	n := opts.Concurrency
	if n == 0 {
		n = defaultConcurrency
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n, len(ids)) {
		wg.Go(func() {
			for i := range next {
				rd, err := readOne(ctx, opts, ids[i])
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				out[i] = rd
			}
		})
	}
feed:
	for i := range ids {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := parent.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// readOne reads one saga's history from the streams, or from the
// projection when the saga is archived.
func readOne(ctx context.Context, opts Options, id string) (read, error) {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	rd := read{id: id}
	commits, err := opts.Histories.ReadLatest(ctx, id)
	switch {
	case err == nil:
		rd.commits = commits
		return rd, nil
	case errors.Is(err, stream.ErrArchived):
		rd.archived = true
	case errors.Is(err, stream.ErrInvalidID):
		// A subject on the history stream that no engine writes.
		rd.violation = err.Error()
		return rd, nil
	case errors.Is(err, stream.ErrCodec), errors.Is(err, stream.ErrUnsupported):
		rd.violation = "does not decode: " + err.Error()
		return rd, nil
	default:
		return rd, fmt.Errorf("invariant: read saga %s: %w", id, err)
	}
	if opts.Projection == nil {
		return rd, nil
	}
	commits, err = opts.Projection.Commits(ctx, id)
	switch {
	case errors.Is(err, pgarchive.ErrNotFound):
		rd.violation = "archived, but the projection holds no history of it"
	case errors.Is(err, stream.ErrCodec), errors.Is(err, stream.ErrUnsupported):
		rd.violation = "archived, and its history in the projection does not decode: " + err.Error()
	case err != nil:
		return rd, fmt.Errorf("invariant: read archived saga %s: %w", id, err)
	default:
		rd.commits = commits
	}
	return rd, nil
}

// verifyProjection compares the projection with the streams (pgarchive
// Verify) for the sagas whose histories fold: Verify stops at one that
// does not, and those have their violations already.
func verifyProjection(ctx context.Context, opts Options, ids []string, found []Violation) ([]Violation, error) {
	broken := map[string]bool{}
	for _, v := range found {
		switch v.Rule {
		case RuleHistory, RuleContiguousIDs, RuleStartFirst:
			broken[v.SagaID] = true
		}
	}
	ids = slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return broken[id] })
	mismatches, err := opts.Projection.Verify(ctx, opts.Histories, ids)
	if err != nil {
		return nil, fmt.Errorf("invariant: verify the projection: %w", err)
	}
	out := make([]Violation, 0, len(mismatches))
	for _, m := range mismatches {
		out = append(out, Violation{SagaID: m.SagaID, Rule: RuleProjection,
			Detail: fmt.Sprintf("%s is %q in the projection, %q in the history", m.Field, m.Projection, m.History)})
	}
	return out, nil
}

// setAsideSignals reads the signals the dead-letter stream holds, by saga
// and message id (kept from the original as Saga-Original-Nats-Msg-Id).
func setAsideSignals(ctx context.Context, st *stream.Store) ([]SignalAck, error) {
	letters, err := st.DeadLetters(ctx, 0)
	if errors.Is(err, stream.ErrNotFound) {
		return []SignalAck{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("invariant: read dead letters: %w", err)
	}
	cfg := st.Config()
	out := []SignalAck{}
	for _, d := range letters {
		if d.Stream != cfg.InboxStream() {
			continue
		}
		kind, tokens, err := cfg.ParseInboxSubject(d.Subject)
		if err != nil || kind != "signal" {
			continue
		}
		out = append(out, SignalAck{SagaID: tokens[0], Name: tokens[1], MsgID: d.Headers.Get("Saga-Original-" + jetstream.MsgIDHeader)})
	}
	return out, nil
}
