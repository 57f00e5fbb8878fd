package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/stream"
)

// maxForm bounds an action's form body.
const maxForm = 64 << 10

// errRefused is an action refused before it reached the engine.
type errRefused struct {
	code int
	msg  string
}

func (e *errRefused) Error() string { return e.msg }

// action wraps an action's handler with the checks every action makes:
// not read-only, the form's CSRF token, and the operator's confirmation.
// Success goes back to the saga's page with a message.
func (s *Server) action(do func(ctx context.Context, id string, form url.Values) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.opts.ReadOnly {
			s.fail(w, r, http.StatusForbidden, errors.New("the UI is read-only: actions are turned off"))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxForm)
		if err := r.ParseForm(); err != nil {
			s.fail(w, r, http.StatusBadRequest, err)
			return
		}
		if !equal(r.PostForm.Get("csrf"), s.csrf) {
			s.fail(w, r, http.StatusForbidden, errors.New("the form's token is missing or stale: reload the page and try again"))
			return
		}
		if r.PostForm.Get("confirm") != "yes" {
			s.fail(w, r, http.StatusBadRequest, errors.New("the action was not confirmed: tick the confirmation box"))
			return
		}
		id := r.PathValue("id")
		if err := stream.ValidateID("saga id", id); err != nil {
			s.fail(w, r, http.StatusBadRequest, err)
			return
		}
		msg, err := do(context.WithValue(r.Context(), userKey{}, s.user(r)), id, r.PostForm)
		if err != nil {
			code := http.StatusBadGateway
			if e := (*errRefused)(nil); errors.As(err, &e) {
				code = e.code
			}
			s.log.Warn("ui: action refused", "path", r.URL.Path, "saga_id", id, "err", err)
			s.fail(w, r, code, err)
			return
		}
		s.log.Info("ui: action", "path", r.URL.Path, "saga_id", id, "user", s.user(r), "remote", r.RemoteAddr)
		if wantsJSON(r) {
			// The page's script: the outcome itself, not a page to follow.
			writeJSON(w, http.StatusOK, actionResult{Message: msg})
			return
		}
		http.Redirect(w, r, "/sagas/"+url.PathEscape(id)+"?msg="+url.QueryEscape(msg)+"&sig="+s.signMessage(msg), http.StatusSeeOther)
	}
}

// apiFailure turns an API error reply into the status the page answers
// with and a message in an operator's terms.
func apiFailure(id string, err error) error {
	e := (*api.Error)(nil)
	switch {
	case errors.Is(err, api.ErrNoNode):
		return &errRefused{http.StatusServiceUnavailable, err.Error()}
	case !errors.As(err, &e):
		return err
	case e.Code == api.CodeNotFound:
		return &errRefused{http.StatusNotFound, fmt.Sprintf("saga %s not found", id)}
	case e.Code == api.CodeConflict:
		msg := fmt.Sprintf("saga %s already ended", id)
		if st := e.Context["status"]; st != "" {
			msg += " (" + st + ")"
		}
		return &errRefused{http.StatusConflict, msg}
	case e.Code == api.CodeBadRequest:
		return &errRefused{http.StatusBadRequest, e.Description}
	}
	return err
}

func (s *Server) signal(ctx context.Context, id string, form url.Values) (string, error) {
	name := strings.TrimSpace(form.Get("name"))
	if err := stream.ValidateID("signal name", name); err != nil {
		return "", &errRefused{http.StatusBadRequest, err.Error()}
	}
	req := api.SignalRequest{ID: id, Name: name}
	if in := strings.TrimSpace(form.Get("input")); in != "" {
		if !json.Valid([]byte(in)) {
			return "", &errRefused{http.StatusBadRequest, "the signal's input is not valid JSON"}
		}
		req.Input = json.RawMessage(in)
	}
	var res api.SignalResponse
	if err := api.Call(ctx, s.opts.Conn, s.opts.Stream.APISubject("signal"), req, &res); err != nil {
		return "", apiFailure(id, err)
	}
	return fmt.Sprintf("signal %s sent (inbox sequence %d)", name, res.InboxSeq), nil
}

func (s *Server) cancel(ctx context.Context, id string, form url.Values) (string, error) {
	// As "saga-node cancel" does: the request is recorded in the history,
	// so no node has to answer.
	err := s.client.RequestCancel(ctx, id, form.Get("reason"), identity(ctx))
	switch {
	case errors.Is(err, saga.ErrAlreadyEnded):
		return "", &errRefused{http.StatusConflict, fmt.Sprintf("saga %s already ended: there is nothing to cancel", id)}
	case errors.Is(err, saga.ErrCancelRequested):
		return "", &errRefused{http.StatusConflict, fmt.Sprintf("the cancellation of saga %s was already requested", id)}
	case errors.Is(err, saga.ErrNotFound):
		return "", &errRefused{http.StatusNotFound, fmt.Sprintf("saga %s not found", id)}
	case errors.Is(err, saga.KindValidation):
		return "", &errRefused{http.StatusBadRequest, err.Error()} // a reason over 4 KiB, say
	case err != nil:
		return "", err
	}
	return "cancellation requested", nil
}

func (s *Server) wake(ctx context.Context, id string, _ url.Values) (string, error) {
	var res api.SagaRequest
	if err := api.Call(ctx, s.opts.Conn, s.opts.Stream.APISubject("wake"), api.SagaRequest{ID: id}, &res); err != nil {
		return "", apiFailure(id, err)
	}
	return "woken: a node replays it and decides", nil
}

type userKey struct{}

// identity is who the history records as asking: the UI, and the
// basic-auth user when there is one.
func identity(ctx context.Context) string {
	if u, _ := ctx.Value(userKey{}).(string); u != "" {
		return ActionIdentity + " (" + u + ")"
	}
	return ActionIdentity
}
