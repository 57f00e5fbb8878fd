package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/replaycheck"
	"github.com/jetsaga/saga/stream"
)

// Bounds of the JetStream listing: a page of sagas, and the sagas
// described to fill it when filters leave some out.
const (
	pageSize      = 50
	maxStreamScan = 500
)

// statuses are the statuses a saga can have, in the order the list shows
// them.
var statuses = []stream.Status{stream.StatusRunning, stream.StatusCompleted, stream.StatusFailed,
	stream.StatusCanceled, stream.StatusTimedOut, stream.StatusBlocked}

// timeLayout is the layout of the time-range inputs (an HTML
// datetime-local value, read as UTC).
const timeLayout = "2006-01-02T15:04"

type listRow struct {
	ID, Type     string
	Version      int
	Status       stream.Status
	Compensation string
	StartedAt    time.Time
	ClosedAt     *time.Time
	Events       uint64
	// Error is a failed saga's error and its causes, on one line.
	Error string
}

type statusCount struct {
	Status stream.Status
	Count  int
	Link   string
}

type listPage struct {
	page
	Source              string // "postgres" or "jetstream"
	Status, Type, Since string
	Until, Prefix       string
	Statuses            []stream.Status
	Rows                []listRow
	Counts              []statusCount
	Total               int
	Next                string
	Scanned, Listed     int
	ScanCut             bool
	Elapsed             time.Duration
}

type listQuery struct {
	status       stream.Status
	typ, prefix  string
	since, until time.Time
	after        string
}

func parseListQuery(q url.Values) (listQuery, error) {
	var lq listQuery
	lq.status = stream.Status(q.Get("status"))
	if lq.status != "" && !slices.Contains(statuses, lq.status) {
		return lq, fmt.Errorf("status %q is not a saga status", lq.status)
	}
	lq.typ = strings.TrimSpace(q.Get("type"))
	if lq.typ != "" {
		if err := stream.ValidateID("workflow type", lq.typ); err != nil {
			return lq, err
		}
	}
	lq.prefix = strings.TrimSpace(q.Get("prefix"))
	for _, tf := range []struct {
		name string
		t    *time.Time
	}{{"since", &lq.since}, {"until", &lq.until}} {
		v := strings.TrimSpace(q.Get(tf.name))
		if v == "" {
			continue
		}
		t, err := time.Parse(timeLayout, v)
		if err != nil {
			if t, err = time.Parse(time.RFC3339, v); err != nil {
				return lq, fmt.Errorf("%s %q is not a time (%s, UTC)", tf.name, v, timeLayout)
			}
		}
		*tf.t = t.UTC()
	}
	lq.after = q.Get("after")
	return lq, nil
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	lq, err := parseListQuery(r.URL.Query())
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	p := listPage{page: s.page("Sagas"), Status: string(lq.status), Type: lq.typ, Prefix: lq.prefix,
		Since: r.URL.Query().Get("since"), Until: r.URL.Query().Get("until"), Statuses: statuses}
	if s.opts.Projection != nil {
		err = s.listProjection(r.Context(), lq, &p)
	} else {
		err = s.listStreams(r.Context(), lq, &p)
	}
	switch {
	case errors.Is(err, pgarchive.ErrBadCursor), errors.Is(err, pgarchive.ErrBadFilter):
		s.fail(w, r, http.StatusBadRequest, err)
		return
	case err != nil:
		s.fail(w, r, http.StatusBadGateway, err)
		return
	}
	if p.Next != "" {
		q := r.URL.Query()
		q.Set("after", p.Next)
		p.Next = "/sagas?" + q.Encode()
	}
	p.Elapsed = time.Since(began).Round(time.Millisecond)
	s.render(w, http.StatusOK, "list.html", p)
}

func (s *Server) listProjection(ctx context.Context, lq listQuery, p *listPage) error {
	p.Source = "postgres"
	f := pgarchive.Filter{Status: lq.status, Type: lq.typ, Since: lq.since, Until: lq.until, IDPrefix: lq.prefix, Limit: pageSize, After: lq.after}
	rows, next, err := s.opts.Projection.List(ctx, f)
	if err != nil {
		return err
	}
	counts, err := s.opts.Projection.CountByStatus(ctx, f)
	if err != nil {
		return err
	}
	for _, st := range statuses {
		q := url.Values{"status": {string(st)}}
		for k, v := range map[string]string{"type": lq.typ, "prefix": lq.prefix} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if !lq.since.IsZero() {
			q.Set("since", lq.since.Format(timeLayout))
		}
		if !lq.until.IsZero() {
			q.Set("until", lq.until.Format(timeLayout))
		}
		p.Counts = append(p.Counts, statusCount{Status: st, Count: counts[st], Link: "/sagas?" + q.Encode()})
		if lq.status == "" || lq.status == st {
			p.Total += counts[st]
		}
	}
	for _, row := range rows {
		lr := listRow{ID: row.SagaID, Type: row.WorkflowType, Version: row.Version, Status: row.Status,
			StartedAt: row.StartedAt, ClosedAt: row.ClosedAt, Events: row.Events}
		if row.Compensation != nil {
			lr.Compensation = *row.Compensation
		}
		if len(row.Error) > 0 {
			var e saga.StructuredError
			if json.Unmarshal(row.Error, &e) == nil {
				lr.Error = errorSummary(&e)
			}
		}
		p.Rows = append(p.Rows, lr)
	}
	p.Next = next
	return nil
}

// listStreams lists from the history streams: every saga id (one subject
// each, sent by the server at once), then a description of each saga on
// the page. Filters other than the id prefix are applied to what was
// described, so a page of a rare status may take up to maxStreamScan
// descriptions, and may still come out short.
func (s *Server) listStreams(ctx context.Context, lq listQuery, p *listPage) error {
	p.Source = "jetstream"
	ids, err := replaycheck.NewStreamSource(s.hist).SagaIDs(ctx, replaycheck.Filter{})
	if err != nil {
		return err
	}
	p.Listed = len(ids)
	// Newest ids are not known without reading each history: the page is
	// ordered by id, and the cursor is the last id shown.
	// Sorted: the ids with the prefix are together, from the first id
	// not below it.
	i, _ := slices.BinarySearch(ids, lq.prefix)
	if lq.after != "" && lq.after >= lq.prefix {
		i, _ = slices.BinarySearch(ids, lq.after)
		if i < len(ids) && ids[i] == lq.after {
			i++
		}
	}
	for ; i < len(ids) && len(p.Rows) < pageSize; i++ {
		id := ids[i]
		if !strings.HasPrefix(id, lq.prefix) {
			break // sorted: no later id has the prefix
		}
		if p.Scanned >= maxStreamScan {
			p.ScanCut = true
			break
		}
		p.Scanned++
		d, err := s.client.Describe(ctx, id)
		if errors.Is(err, stream.ErrNotFound) {
			continue // archived or purged since it was listed
		}
		if err != nil {
			return fmt.Errorf("describe %s: %w", id, err)
		}
		if (lq.status != "" && stream.Status(d.Status) != lq.status) || (lq.typ != "" && d.Type != lq.typ) ||
			(!lq.since.IsZero() && d.StartedAt.Before(lq.since)) || (!lq.until.IsZero() && !d.StartedAt.Before(lq.until)) {
			continue
		}
		lr := listRow{ID: d.ID, Type: d.Type, Version: d.Version, Status: stream.Status(d.Status),
			StartedAt: d.StartedAt, ClosedAt: d.ClosedAt, Events: d.Events}
		if d.Compensation != nil {
			lr.Compensation = d.Compensation.Status
		}
		lr.Error = errorSummary(d.Error)
		p.Rows = append(p.Rows, lr)
	}
	if i < len(ids) && i > 0 && (len(p.Rows) == pageSize || p.ScanCut) {
		p.Next = ids[i-1]
	}
	return nil
}

// maxSummary bounds the error shown in a list row.
const maxSummary = 300

// errorSummary is an error's kind and its chain of messages on one line.
func errorSummary(e *saga.StructuredError) string {
	if e == nil {
		return ""
	}
	var parts []string
	for c := e; c != nil; c = c.Cause {
		line, _, _ := strings.Cut(c.Message, "\n")
		parts = append(parts, line)
	}
	s := "[" + string(e.Kind) + "] " + strings.Join(parts, ": ")
	if len(s) > maxSummary {
		s = strings.ToValidUTF8(s[:maxSummary], "") + "…"
	}
	return s
}
