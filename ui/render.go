package ui

import (
	"bytes"
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// page is what every page's layout needs.
type page struct {
	Title    string
	ReadOnly bool
	CSRF     string
}

func (s *Server) page(title string) page {
	return page{Title: title, ReadOnly: s.opts.ReadOnly, CSRF: s.csrf}
}

var funcs = template.FuncMap{
	"time": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	},
	"ptime": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05.000Z")
	},
	"since": func(a, b time.Time) string { return b.Sub(a).Round(time.Millisecond).String() },
	"path":  url.PathEscape,
}

// render executes a template into a buffer first, so that a template
// error becomes a 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, code int, name string, data any) {
	var b bytes.Buffer
	if err := s.tmpl.ExecuteTemplate(&b, name, data); err != nil {
		s.log.Error("ui: render", "template", name, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = b.WriteTo(w) // nothing to do about a client gone away
}

type errorPage struct {
	page
	Code    int
	Message string
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	if code >= 500 {
		s.log.Warn("ui: request failed", "path", r.URL.Path, "code", code, "err", err)
	}
	if wantsJSON(r) {
		writeJSON(w, code, actionResult{Error: err.Error()})
		return
	}
	s.render(w, code, "error.html", errorPage{page: s.page(http.StatusText(code)), Code: code, Message: err.Error()})
}

// actionResult answers an action sent by the page's script.
type actionResult struct {
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

// wantsJSON reports a request of the page's script, which asks for JSON.
func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// user names who asked, for the log: the basic-auth user, if any.
func (s *Server) user(r *http.Request) string {
	if u, _, ok := r.BasicAuth(); ok && s.opts.User != "" {
		return u
	}
	return ""
}
