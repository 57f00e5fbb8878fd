// Package natstest starts a real embedded nats-server with JetStream for a
// test, in a temporary directory, and shuts it down when the test ends.
package natstest

import (
	"log/slog"
	"net/url"
	"os"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga/internal/embeddednats"
)

// Server is a test's embedded server.
type Server struct {
	*embeddednats.Server
	t    testing.TB
	opts embeddednats.Options
}

// Start runs a server listening on a random loopback port, with its store in
// a fresh temporary directory. It is shut down when the test ends. adjust
// may change the options.
func Start(t testing.TB, adjust ...func(*embeddednats.Options)) *Server {
	t.Helper()
	opts := embeddednats.Options{Dir: t.TempDir(), Listen: "127.0.0.1:0"}
	for _, f := range adjust {
		f(&opts)
	}
	srv, err := embeddednats.Start(opts)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	if opts.Listen != "" {
		// A restart comes back on the same address, as clients expect.
		u, err := url.Parse(srv.ClientURL())
		if err != nil {
			t.Fatalf("nats-server client URL: %v", err)
		}
		opts.Listen = u.Host
	}
	return &Server{Server: srv, t: t, opts: opts}
}

// StartAgain starts the server again, after a Shutdown, on the same address
// and with the same store, as an operator restarting nats-server would.
// Clients connected before reconnect to it.
func (s *Server) StartAgain() {
	s.t.Helper()
	srv, err := embeddednats.Start(s.opts)
	if err != nil {
		s.t.Fatalf("restart nats-server: %v", err)
	}
	s.t.Cleanup(srv.Shutdown)
	s.Server = srv
}

// Conn opens a client connection over TCP that is closed when the test
// ends. Each simulated node should get its own, so that closing one
// connection cuts off exactly one node.
func (s *Server) Conn() *nats.Conn {
	s.t.Helper()
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		s.t.Fatalf("connect to nats-server: %v", err)
	}
	s.t.Cleanup(nc.Close)
	return nc
}

// Logger is the logger tests give nodes: silent, or debug output on
// stderr when SAGA_TEST_LOG is set.
func Logger() *slog.Logger {
	if os.Getenv("SAGA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
