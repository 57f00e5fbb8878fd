package pgarchive

import (
	"context"
	"errors"
	"fmt"

	"github.com/jetsaga/saga/stream"
)

// IDs lists the sagas a filter selects, newest first: every page of List.
func (s *Store) IDs(ctx context.Context, f Filter) ([]string, error) {
	var ids []string
	f.Limit = maxPage
	for {
		rows, next, err := s.List(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			ids = append(ids, r.SagaID)
		}
		if next == "" {
			return ids, nil
		}
		f.After = next
	}
}

// Events returns a saga's history as the projection holds it; one it
// does not hold is stream.ErrNotFound.
func (s *Store) Events(ctx context.Context, id string) ([]stream.Event, error) {
	events, err := s.History(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", stream.ErrNotFound, err)
	}
	return events, err
}
