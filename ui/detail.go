package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// sagaView is what the detail page and its live fragment show.
type sagaView struct {
	D        *saga.Description
	Input    string
	Output   string
	Error    []errorLine
	Timeline timeline
	Comp     compView
	Events   []eventView
	Timers   []openTimer
	Running  bool
	// Acts: the saga takes signals and cancellations (it has not ended).
	Acts     bool
	Archived bool // read from the projection: the streams no longer hold it
}

type errorLine struct {
	Kind, Message string
	Context       map[string]string
}

type eventView struct {
	ID       uint64
	Type     string
	Category string
	Time     time.Time
	Attrs    string
	Undo     bool
}

type openTimer struct {
	EventID uint64
	FireAt  time.Time
}

type detailPage struct {
	page
	sagaView
	Message string
	Signal  struct{ Name, Input string }
}

// load reads a saga's description and history: from the streams, else
// from the projection for a saga they no longer hold.
func (s *Server) load(ctx context.Context, id string) (*saga.Description, []stream.Event, bool, error) {
	d, err := s.client.Describe(ctx, id)
	if err == nil {
		var events []stream.Event
		events, err = s.client.History(ctx, id)
		if err == nil {
			return d, events, false, nil
		}
	}
	if !errors.Is(err, stream.ErrNotFound) || s.opts.Projection == nil {
		return nil, nil, false, err
	}
	st, perr := s.opts.Projection.State(ctx, id)
	if errors.Is(perr, pgarchive.ErrNotFound) {
		return nil, nil, false, err
	}
	if perr != nil {
		return nil, nil, false, errors.Join(err, perr)
	}
	events, perr := s.opts.Projection.History(ctx, id)
	if perr != nil {
		return nil, nil, false, errors.Join(err, perr)
	}
	return saga.DescribeState(st), events, true, nil
}

// view reads a saga for its page; withEvents adds every event with its
// attributes as JSON (the page's list of events), which the live
// fragment does not show: for a long history that is most of the work.
func (s *Server) view(ctx context.Context, id string, withEvents bool) (sagaView, error) {
	if err := stream.ValidateID("saga id", id); err != nil {
		return sagaView{}, err
	}
	d, events, archived, err := s.load(ctx, id)
	if err != nil {
		return sagaView{}, err
	}
	v := sagaView{D: d, Archived: archived, Running: d.Status == saga.StatusRunning}
	v.Acts = v.Running || d.Status == saga.StatusBlocked
	v.Input = prettyPayload(d.Input)
	v.Output = prettyPayload(d.Output)
	for e := d.Error; e != nil; e = e.Cause {
		v.Error = append(v.Error, errorLine{Kind: string(e.Kind), Message: e.Message, Context: e.Context})
	}
	now := time.Now()
	if d.ClosedAt != nil {
		now = *d.ClosedAt
	}
	v.Timeline = buildTimeline(events, now)
	v.Comp = buildCompensation(events, d.Compensation)
	v.Timers = openTimers(events)
	if !withEvents {
		return v, nil
	}
	for _, e := range events {
		v.Events = append(v.Events, eventView{ID: e.ID, Type: string(e.Type), Category: string(e.Category), Time: e.Time,
			Attrs: eventAttrs(e), Undo: e.Category == stream.CategoryCompensation})
	}
	return v, nil
}

func (s *Server) handleDetail(w http.ResponseWriter, r *http.Request) {
	v, err := s.view(r.Context(), r.PathValue("id"), true)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	p := detailPage{page: s.page("Saga " + v.D.ID), sagaView: v, Message: s.signedMessage(r)}
	s.render(w, http.StatusOK, "detail.html", p)
}

// handleLive renders the parts of the detail page that change while a
// saga runs; the page's script fetches it again and again until the saga
// ends.
func (s *Server) handleLive(w http.ResponseWriter, r *http.Request) {
	v, err := s.view(r.Context(), r.PathValue("id"), false)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	s.render(w, http.StatusOK, "live", detailPage{page: s.page(""), sagaView: v})
}

func (s *Server) handleHistoryJSON(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := stream.ValidateID("saga id", id); err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	_, events, _, err := s.load(r.Context(), id)
	if err != nil {
		s.fail(w, r, statusOf(err), err)
		return
	}
	body, err := json.MarshalIndent(events, "", "  ")
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", id+"-history.json"))
	_, _ = w.Write(append(body, '\n'))
}

// statusOf maps an error to the HTTP status of its page.
func statusOf(err error) int {
	switch {
	case errors.Is(err, stream.ErrNotFound), errors.Is(err, saga.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, stream.ErrInvalidID):
		return http.StatusBadRequest
	}
	return http.StatusBadGateway
}

func prettyPayload(p stream.Payload) string {
	if len(p) == 0 {
		return ""
	}
	b, err := p.MarshalJSON()
	if err != nil {
		return fmt.Sprintf("<%d bytes that do not decode: %v>", len(p), err)
	}
	return prettyJSON(b)
}

// prettyJSON indents JSON and undoes encoding/json's escapes of <, > and
// &, so that a payload reads as it was written; the templates escape it
// for HTML.
func prettyJSON(b []byte) string {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return string(b)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if enc.Encode(v) != nil {
		return string(b)
	}
	return strings.TrimSuffix(out.String(), "\n")
}

// eventAttrs is an event's attributes as indented JSON.
func eventAttrs(e stream.Event) string {
	b, err := json.Marshal(e)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	var whole struct {
		Attributes json.RawMessage `json:"attributes"`
	}
	if json.Unmarshal(b, &whole) != nil || len(whole.Attributes) == 0 {
		return prettyJSON(b)
	}
	return prettyJSON(whole.Attributes)
}

func openTimers(events []stream.Event) []openTimer {
	created := map[uint64]openTimer{}
	var order []uint64
	for _, e := range events {
		switch a := e.Attrs.(type) {
		case *stream.TimerCreatedAttrs:
			created[e.ID] = openTimer{EventID: e.ID, FireAt: a.FireAt(e.Time)}
			order = append(order, e.ID)
		case *stream.TimerFiredAttrs:
			delete(created, a.StartedEventID)
		case *stream.TimerCanceledAttrs:
			delete(created, a.StartedEventID)
		}
	}
	if len(events) > 0 {
		switch events[len(events)-1].Type {
		case stream.WorkflowExecutionCompleted, stream.WorkflowExecutionFailed, stream.WorkflowExecutionCanceled,
			stream.WorkflowExecutionTimedOut, stream.WorkflowExecutionContinuedAsNew:
			return nil // a saga that ended waits for nothing
		}
	}
	var out []openTimer
	for _, id := range order {
		if t, ok := created[id]; ok {
			out = append(out, t)
		}
	}
	return out
}

// compView is the compensation of a saga: the undos registered, in the
// order the steps succeeded, and those that ran, last registered first.
type compView struct {
	Registered []compReg
	Info       *saga.CompensationInfo
	Left       string
}

type compReg struct {
	EventID            uint64
	Step, ActivityType string
}

func buildCompensation(events []stream.Event, info *saga.CompensationInfo) compView {
	var c compView
	for _, e := range events {
		if a, ok := e.Attrs.(*stream.MarkerRecordedAttrs); ok && a.Name == stream.MarkerCompensation && a.Compensation != nil {
			c.Registered = append(c.Registered, compReg{EventID: e.ID, Step: a.Compensation.Step, ActivityType: a.Compensation.ActivityType})
		}
	}
	c.Info = info
	if info != nil && info.NeedsOperator {
		c.Left = strings.Join(append(append([]string(nil), info.FailedSteps...), info.NotRun...), ", ")
	}
	return c
}

// signedMessage is the message of the action that led to the page, when
// the server signed it (see signMessage).
func (s *Server) signedMessage(r *http.Request) string {
	q := r.URL.Query()
	if msg := q.Get("msg"); s.messageSigned(msg, q.Get("sig")) {
		return msg
	}
	return ""
}
