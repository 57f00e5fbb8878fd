package pgtest

import (
	"context"
	"sync"
	"testing"

	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// Apply projects commits into store as the projector does (Store.Apply),
// for tests and benchmarks that need many sagas projected: in batches of
// 1,000, a few at once, since Apply makes a round trip or two per saga and
// one connection alone would leave the server mostly waiting. A batch
// ends between sagas, so that a saga's commits are applied in order.
func Apply(ctx context.Context, tb testing.TB, store *pgarchive.Store, commits []stream.StoredCommit) {
	tb.Helper()
	const batch, workers = 1000, 4
	batches := make(chan []stream.StoredCommit)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for cs := range batches {
				if err := store.Apply(ctx, cs); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	var err error
send:
	for from := 0; from < len(commits); {
		to := min(from+batch, len(commits))
		for to < len(commits) && commits[to].Commit.SagaID == commits[to-1].Commit.SagaID {
			to++
		}
		select {
		case batches <- commits[from:to]:
			from = to
		case err = <-errs:
			break send
		}
	}
	close(batches)
	wg.Wait()
	close(errs)
	if err == nil {
		err = <-errs
	}
	if err != nil {
		tb.Fatal(err)
	}
}
