package pgarchive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/stream"
)

// ListSagas answers the API's list request: the request/reply form of
// List, for nodes that have the projection.
// A filter or cursor that no saga can match is an error of kind
// Validation.
func (s *Store) ListSagas(ctx context.Context, r api.ListRequest) (api.ListResponse, error) {
	res, err := s.listSagas(ctx, r)
	if errors.Is(err, ErrBadFilter) || errors.Is(err, ErrBadCursor) {
		err = &saga.Error{Kind: saga.KindValidation, Message: "list", Cause: err}
	}
	return res, err
}

func (s *Store) listSagas(ctx context.Context, r api.ListRequest) (api.ListResponse, error) {
	f := Filter{Status: stream.Status(r.Status), Type: r.Type, Compensation: r.Compensation,
		WaitingOnTimer: r.WaitingOnTimer, Limit: r.Limit, After: r.After}
	if r.Since != "" {
		d, err := time.ParseDuration(r.Since)
		if err != nil || d <= 0 {
			return api.ListResponse{}, fmt.Errorf("%w: since %q is not a positive duration", ErrBadFilter, r.Since)
		}
		f.Since = time.Now().Add(-d)
	}
	if err := f.validate(); err != nil {
		return api.ListResponse{}, err
	}
	rows, next, err := s.List(ctx, f)
	if err != nil {
		return api.ListResponse{}, err
	}
	if rows == nil {
		rows = []Row{}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return api.ListResponse{}, err
	}
	return api.ListResponse{Sagas: b, Next: next}, nil
}
