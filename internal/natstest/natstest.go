// Package natstest starts a real embedded nats-server with JetStream for a
// test, in a temporary directory, and shuts it down when the test ends.
package natstest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// StartCluster runs n servers as one cluster, each listening for clients
// and routes on loopback ports and storing in its own temporary directory,
// named saga-0 … saga-<n-1>. It returns once JetStream answers through
// every server (the cluster elected its metadata leader). They are shut
// down when the test ends; adjust may change each server's options.
func StartCluster(t testing.TB, n int, adjust ...func(*embeddednats.Options)) []*Server {
	t.Helper()
	// Every member must know every route before it starts (JetStream sizes
	// its metadata group by them), so the route ports are picked up front.
	routes := make([]string, n)
	listeners := make([]net.Listener, n)
	for i := range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pick a route port: %v", err)
		}
		listeners[i] = l
		routes[i] = "nats://" + l.Addr().String()
	}
	for _, l := range listeners {
		_ = l.Close()
	}
	servers := make([]*Server, n)
	for i := range n {
		servers[i] = Start(t, func(o *embeddednats.Options) {
			o.ServerName = fmt.Sprintf("saga-%d", i)
			o.Cluster = &embeddednats.ClusterOptions{Name: "saga-test", Listen: routes[i][len("nats://"):], Routes: routes}
			for _, f := range adjust {
				f(o)
			}
		})
	}
	for _, s := range servers {
		s.waitForJetStream()
	}
	return servers
}

// clusterReadyTimeout bounds the wait for a cluster's JetStream: electing
// a metadata leader takes a few raft election timeouts (4-9 s each).
const clusterReadyTimeout = 60 * time.Second

// waitForJetStream waits until JetStream answers account requests through
// this server. A standalone server does as soon as it starts; a cluster
// member once the cluster has a metadata leader and the member sees it.
func (s *Server) waitForJetStream() {
	s.t.Helper()
	nc, err := s.Connect()
	if err != nil {
		s.t.Fatalf("connect to nats-server: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatalf("jetstream: %v", err)
	}
	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("JetStream not available through %s after %s: %v", s.Name(), clusterReadyTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartAgain starts the server again, after a Shutdown, on the same address
// and with the same store, as an operator restarting nats-server would.
// Clients connected before reconnect to it. A cluster member rejoins its
// cluster on the same route address, and StartAgain returns once JetStream
// answers through it.
func (s *Server) StartAgain() {
	s.t.Helper()
	srv, err := embeddednats.Start(s.opts)
	if err != nil {
		s.t.Fatalf("restart nats-server: %v", err)
	}
	s.t.Cleanup(srv.Shutdown)
	s.Server = srv
	if s.opts.Cluster != nil {
		s.waitForJetStream()
	}
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
