// Package ui owns the web UI that saga-node serves: server-rendered pages
// to find sagas, read one (its header, a timeline, its compensation and
// its events) and act on it (signal, cancel, wake), and the HTTP server
// that carries them. It reads histories through saga.Client, lists from
// the Postgres projection when there is one (else from the history
// streams), and sends actions through the same request/reply API and
// client calls as the command line. docs/ui.md describes it.
package ui

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// DefaultListen is where the UI listens unless told otherwise: loopback,
// so that nothing outside the machine reaches it by default.
const DefaultListen = "127.0.0.1:8233"

// ActionIdentity is recorded as the requester of a cancellation made in
// the UI, followed by the basic-auth user in brackets when there is one.
const ActionIdentity = "saga-node ui"

//go:embed assets
var assets embed.FS

// Options configure a Server.
type Options struct {
	// Conn reaches the engine; it stays owned by the caller.
	Conn *nats.Conn
	// Stream names the engine's streams; it must match the nodes'.
	Stream stream.Config
	// Codec opens sealed payloads; nil when the fleet does not seal them.
	Codec saga.PayloadCodec
	// Projection, when set, lists sagas (and reads those the streams no
	// longer hold); without it the list comes from the history streams.
	Projection *pgarchive.Store
	// ReadOnly hides the actions and refuses their requests with 403.
	ReadOnly bool
	// User and Password, when set, require HTTP basic authentication.
	User, Password string
	// Token, when set, requires "Authorization: Bearer <token>" (or basic
	// authentication with the token as password, for a browser).
	Token string
	// AllowedHosts are the host names (without port) the UI answers to
	// when it has no authentication, besides loopback ones (127.0.0.1,
	// ::1, localhost): a page of another site that re-points its own name
	// at this machine (DNS rebinding) is then refused, since its requests
	// name that site.
	AllowedHosts []string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server is the UI as an http.Handler.
type Server struct {
	opts   Options
	client *saga.Client
	hist   *stream.Store
	mux    *http.ServeMux
	tmpl   *template.Template
	log    *slog.Logger
	// csrf is a per-process token every action form carries: another
	// site can make a browser post, but cannot read the token.
	csrf string
}

// ErrConfig: Options that cannot make a Server.
var ErrConfig = errors.New("ui: invalid options")

// New returns a Server. Close releases what it opened.
func New(opts Options) (*Server, error) {
	if opts.Conn == nil {
		return nil, fmt.Errorf("%w: no NATS connection", ErrConfig)
	}
	if opts.Token != "" && opts.User != "" {
		return nil, fmt.Errorf("%w: give basic authentication or a token, not both", ErrConfig)
	}
	if (opts.User == "") != (opts.Password == "") {
		return nil, fmt.Errorf("%w: basic authentication needs a user and a password", ErrConfig)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Stream = opts.Stream.Defaults()
	tmpl, err := template.New("").Funcs(funcs).ParseFS(assets, "assets/*.html")
	if err != nil {
		return nil, fmt.Errorf("ui: templates: %w", err)
	}
	hist, err := stream.Open(opts.Conn, opts.Stream)
	if err != nil {
		return nil, err
	}
	client, err := saga.NewClient(opts.Conn, saga.ClientOptions{Stream: opts.Stream, Codec: opts.Codec, Logger: opts.Logger})
	if err != nil {
		hist.Close()
		return nil, err
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	s := &Server{opts: opts, client: client, hist: hist, tmpl: tmpl, log: opts.Logger, csrf: base64.RawURLEncoding.EncodeToString(b)}
	s.routes()
	return s, nil
}

// Close releases the client and the stream reader; the connection stays
// the caller's.
func (s *Server) Close() {
	s.client.Close()
	s.hist.Close()
}

// staticAssets are the files served under /assets/: the templates stay
// the server's own.
var staticAssets = map[string]string{"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}

func (s *Server) routes() {
	m := http.NewServeMux()
	for name, contentType := range staticAssets {
		data, err := fs.ReadFile(assets, "assets/"+name)
		if err != nil {
			panic(fmt.Sprintf("ui: embedded asset %s: %v", name, err)) // the build embeds it
		}
		m.HandleFunc("GET /assets/"+name, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", contentType)
			http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
		})
	}
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/sagas", http.StatusFound) })
	m.HandleFunc("GET /sagas", s.handleList)
	m.HandleFunc("GET /sagas/{id}", s.handleDetail)
	m.HandleFunc("GET /sagas/{id}/live", s.handleLive)
	m.HandleFunc("GET /sagas/{id}/history.json", s.handleHistoryJSON)
	m.HandleFunc("GET /dead-letters", s.handleDeadLetters)
	m.HandleFunc("GET /nodes", s.handleNodes)
	m.HandleFunc("GET /lag", s.handleLag)
	m.HandleFunc("POST /sagas/{id}/signal", s.action(s.signal))
	m.HandleFunc("POST /sagas/{id}/cancel", s.action(s.cancel))
	m.HandleFunc("POST /sagas/{id}/wake", s.action(s.wake))
	s.mux = m
}

// ServeHTTP checks the credentials, sets the headers every page gets and
// routes the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No inline script or style runs, whatever a payload holds: the only
	// script is the embedded one. Set on every answer, refusals included.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	// Payloads and the form token stay out of caches.
	h.Set("Cache-Control", "no-store")
	if !s.hostAllowed(r) {
		http.Error(w, "this UI does not answer to host "+r.Host+" (see --ui-allowed-hosts)", http.StatusMisdirectedRequest)
		return
	}
	if !s.authorized(r) {
		h.Set("WWW-Authenticate", `Basic realm="saga-node ui", charset="UTF-8"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && crossSite(r) {
		http.Error(w, "a request from another site", http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// hostAllowed refuses, on a UI without authentication, requests that name
// a host other than loopback or the allowed ones: how a page of another
// site reaches a loopback UI through DNS rebinding. With authentication
// the browser has no credentials for that site's name.
func (s *Server) hostAllowed(r *http.Request) bool {
	if s.opts.Token != "" || s.opts.User != "" {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return isLoopback(host) || slices.Contains(s.opts.AllowedHosts, strings.ToLower(host))
}

// crossSite reports a request a browser sent on behalf of another site:
// an Origin that is not this host, or a fetch the browser marks
// cross-site. A client that sends neither (curl) is judged by the form
// token alone.
func crossSite(r *http.Request) bool {
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return true
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	u, err := url.Parse(origin)
	return err != nil || !strings.EqualFold(u.Host, r.Host)
}

func (s *Server) authorized(r *http.Request) bool {
	switch {
	case s.opts.Token != "":
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			return equal(tok, s.opts.Token)
		}
		_, pw, ok := r.BasicAuth()
		return ok && equal(pw, s.opts.Token)
	case s.opts.User != "":
		u, pw, ok := r.BasicAuth()
		// Both compared whatever the first gives, so that the time taken
		// does not say which was wrong.
		userOK, passwordOK := equal(u, s.opts.User), equal(pw, s.opts.Password)
		return ok && userOK && passwordOK
	}
	return true
}

// equal compares secrets in constant time, also in their length: it
// compares their digests.
func equal(a, b string) bool {
	da, db := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(da[:], db[:]) == 1
}

// signMessage and messageSigned keep the message a saga's page shows after
// an action the server's own: a link of another site cannot put its text
// in the page's status box.
func (s *Server) signMessage(msg string) string {
	m := hmac.New(sha256.New, []byte(s.csrf))
	m.Write([]byte(msg))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (s *Server) messageSigned(msg, sig string) bool {
	return msg != "" && hmac.Equal([]byte(s.signMessage(msg)), []byte(sig))
}

// ErrUnsafeListen: a listen address reachable from other machines with
// no authentication.
var ErrUnsafeListen = errors.New("ui: a listen address other than loopback needs authentication")

// CheckListen refuses an address other machines can reach when the UI
// has no authentication, unless allowOpen says the operator wants that.
func CheckListen(addr string, hasAuth, allowOpen bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("ui: listen address %q: %w", addr, err)
	}
	if hasAuth || allowOpen || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("%w: %q (set basic authentication or a token, or allow it explicitly)", ErrUnsafeListen, addr)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// HTTPServer serves a handler on a listener it owns, until Shutdown.
type HTTPServer struct {
	srv  *http.Server
	addr string
	done chan struct{}
}

// Listen binds addr and serves h on it from a goroutine that Shutdown
// stops and waits for.
func Listen(addr string, h http.Handler, log *slog.Logger) (*HTTPServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ui: listen on %s: %w", addr, err)
	}
	hs := &HTTPServer{
		// Bounded reads, and idle connections closed: a client that
		// connects and says nothing (authenticated or not) holds nothing
		// for long. No write timeout: a long history's JSON takes its time.
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)},
		addr: l.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(hs.done)
		if err := hs.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("ui: serve", "err", err)
		}
	}()
	return hs, nil
}

// Addr is the address the server listens on (the port chosen, for ":0").
func (h *HTTPServer) Addr() string { return h.addr }

// URL is the UI's address for a browser.
func (h *HTTPServer) URL() string { return "http://" + h.addr + "/" }

// Shutdown stops accepting requests, waits for those in progress until
// ctx ends (then closes them), and waits for the serving goroutine.
func (h *HTTPServer) Shutdown(ctx context.Context) error {
	err := h.srv.Shutdown(ctx)
	if err != nil {
		_ = h.srv.Close()
	}
	<-h.done
	return err
}
