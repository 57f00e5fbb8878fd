package pgarchive

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/jetsaga/saga/stream"
)

// Mismatch is a saga whose projection differs from its history.
type Mismatch struct {
	SagaID string
	// Field names what differs (status, events, last_event, commits, row),
	// and Projection and History the two values.
	Field      string
	Projection string
	History    string
}

func (m Mismatch) String() string {
	return fmt.Sprintf("saga %s: %s is %q in the projection, %q in the history", m.SagaID, m.Field, m.Projection, m.History)
}

// Verify compares the projection of each saga with what its history in
// the streams folds to: the same status, the same number of events, the
// same last event, and the same commits. It returns every mismatch; an
// error only when a read fails. Tests, fault runs and operators use it.
func (s *Store) Verify(ctx context.Context, hist *stream.Store, ids []string) ([]Mismatch, error) {
	var out []Mismatch
	for _, id := range ids {
		commits, err := hist.ReadLatest(ctx, id)
		if err != nil {
			return out, fmt.Errorf("pgarchive: verify %s: read history: %w", id, err)
		}
		want, err := stream.Fold(commits)
		if err != nil {
			return out, fmt.Errorf("pgarchive: verify %s: fold history: %w", id, err)
		}
		row, err := s.Saga(ctx, id)
		if errors.Is(err, ErrNotFound) {
			out = append(out, Mismatch{SagaID: id, Field: "row", Projection: "missing", History: string(want.Status)})
			continue
		}
		if err != nil {
			return out, err
		}
		if row.Status != want.Status {
			out = append(out, Mismatch{SagaID: id, Field: "status", Projection: string(row.Status), History: string(want.Status)})
		}
		if row.Events != want.NextEventID {
			out = append(out, Mismatch{SagaID: id, Field: "events", Projection: fmt.Sprint(row.Events), History: fmt.Sprint(want.NextEventID)})
		}
		got, err := s.Commits(ctx, id)
		if err != nil {
			return out, err
		}
		if len(got) != len(commits) {
			out = append(out, Mismatch{SagaID: id, Field: "commits", Projection: fmt.Sprint(len(got)), History: fmt.Sprint(len(commits))})
			continue
		}
		last := func(cs []stream.StoredCommit) string {
			evs := cs[len(cs)-1].Commit.Events
			e := evs[len(evs)-1]
			return fmt.Sprintf("%d %s", e.ID, e.Type)
		}
		if a, b := last(got), last(commits); a != b {
			out = append(out, Mismatch{SagaID: id, Field: "last_event", Projection: a, History: b})
		}
		for i := range got {
			// Compared decoded: an encoding writes maps (a failure's
			// context) in no fixed order.
			if !reflect.DeepEqual(got[i].Commit, commits[i].Commit) || got[i].Seq != commits[i].Seq {
				out = append(out, Mismatch{SagaID: id, Field: "commits", Projection: fmt.Sprintf("commit %d at %d", i, got[i].Seq),
					History: fmt.Sprintf("commit %d at %d", i, commits[i].Seq)})
				break
			}
		}
	}
	return out, nil
}
