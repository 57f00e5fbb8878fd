// Package natstest starts a real embedded nats-server with JetStream for a
// test, in a temporary directory, and shuts it down when the test ends.
package natstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
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
	// links and member are set on a cluster's members.
	links  *clusterLinks
	member int
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
	// A restart comes back on the same addresses, as clients and the other
	// members of a cluster expect.
	if opts.Listen != "" {
		u, err := url.Parse(srv.ClientURL())
		if err != nil {
			t.Fatalf("nats-server client URL: %v", err)
		}
		opts.Listen = u.Host
	}
	if opts.Cluster != nil {
		u, err := url.Parse(srv.ClusterURL())
		if err != nil {
			t.Fatalf("nats-server cluster URL: %v", err)
		}
		cluster := *opts.Cluster
		cluster.Listen = u.Host
		opts.Cluster = &cluster
	}
	return &Server{Server: srv, t: t, opts: opts}
}

// StartCluster runs n servers as one cluster, each listening for clients on
// a loopback port and storing in its own temporary directory, named saga-0
// … saga-<n-1>. It returns once JetStream answers through every server (the
// cluster elected its metadata leader). They are shut down when the test
// ends; adjust may change each server's options.
//
// The members route to each other only through links the test owns, so
// that Kill can cut a member off as a crash would.
func StartCluster(t testing.TB, n int, adjust ...func(*embeddednats.Options)) []*Server {
	t.Helper()
	// Every member is configured with a route to every member, itself
	// included (JetStream counts them for the cluster's size, and a server
	// ignores a route to itself), so the links exist before the servers;
	// a link forwards once its server is up.
	c := &clusterLinks{links: make([][]*link, n)}
	for i := range n {
		c.links[i] = make([]*link, n)
		for j := range n {
			c.links[i][j] = newLink(t)
		}
	}
	servers := make([]*Server, n)
	for i := range n {
		var routes []string
		for _, l := range c.links[i] {
			routes = append(routes, "nats://"+l.addr())
		}
		servers[i] = Start(t, func(o *embeddednats.Options) {
			o.ServerName = fmt.Sprintf("saga-%d", i)
			// Members that learn of each other through a third would route
			// to the advertised address, around the links: advertise one
			// where nothing listens (port 1: privileged, unused).
			o.Cluster = &embeddednats.ClusterOptions{Name: "saga-test", Listen: "127.0.0.1:0", Routes: routes, Advertise: "127.0.0.1:1"}
			for _, f := range adjust {
				f(o)
			}
		})
		servers[i].links, servers[i].member = c, i
		for j := range n {
			c.links[j][i].setTarget(servers[i].opts.Cluster.Listen)
		}
	}
	for _, s := range servers {
		s.waitForJetStream()
	}
	return servers
}

// clusterLinks holds the links between the members of a cluster:
// links[i][j] carries the routes member i opens to member j.
type clusterLinks struct {
	links [][]*link
}

// setCut cuts, or restores, every link to and from a member.
func (c *clusterLinks) setCut(member int, cut bool) {
	for i, row := range c.links {
		for j, l := range row {
			if i == member || j == member {
				l.setCut(cut)
			}
		}
	}
}

// link forwards the TCP connections made to it to its target address, once
// it has one, until it is cut: then it drops them, and refuses new ones
// until it is restored.
type link struct {
	l  net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	target string
	cut    bool
	conns  map[net.Conn]struct{}
}

func newLink(t testing.TB) *link {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen for a route link: %v", err)
	}
	k := &link{l: l, conns: map[net.Conn]struct{}{}}
	k.wg.Go(k.accept)
	t.Cleanup(k.close)
	return k
}

func (k *link) addr() string { return k.l.Addr().String() }

func (k *link) accept() {
	for {
		c, err := k.l.Accept()
		if err != nil {
			return
		}
		k.wg.Go(func() { k.forward(c) })
	}
}

func (k *link) setTarget(addr string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.target = addr
}

func (k *link) forward(c net.Conn) {
	k.mu.Lock()
	target := k.target
	k.mu.Unlock()
	if target == "" {
		_ = c.Close() // the server routes again a second later
		return
	}
	up, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		_ = c.Close()
		return
	}
	if !k.track(c, up) {
		_ = c.Close()
		_ = up.Close()
		return
	}
	defer k.untrack(c, up)
	var back sync.WaitGroup
	back.Go(func() {
		_, _ = io.Copy(c, up)
		_ = c.Close()
		_ = up.Close()
	})
	_, _ = io.Copy(up, c)
	_ = c.Close()
	_ = up.Close()
	back.Wait()
}

func (k *link) track(conns ...net.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cut {
		return false
	}
	for _, c := range conns {
		k.conns[c] = struct{}{}
	}
	return true
}

func (k *link) untrack(conns ...net.Conn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range conns {
		delete(k.conns, c)
	}
}

func (k *link) setCut(cut bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cut = cut
	if cut {
		for c := range k.conns {
			_ = c.Close()
		}
	}
}

func (k *link) close() {
	_ = k.l.Close()
	k.setCut(true)
	k.wg.Wait()
}

// Kill makes a cluster member vanish as a crashed process would: its routes
// drop first, so the other members learn nothing from it (not even that
// it hands over its leaderships, which Shutdown does), then it stops.
// StartAgain brings it back.
func (s *Server) Kill() {
	s.t.Helper()
	if s.links == nil {
		s.t.Fatal("Kill: not a cluster member")
	}
	s.links.setCut(s.member, true)
	s.Shutdown()
}

// clusterReadyTimeout bounds the wait for a cluster's JetStream: electing
// a metadata leader takes a few raft election timeouts (4-9 s each).
const clusterReadyTimeout = 60 * time.Second

// waitForJetStream waits until JetStream answers account requests through
// this server. A standalone server does as soon as it starts; a cluster
// member once the cluster has a metadata leader and the member sees it.
func (s *Server) waitForJetStream() {
	s.t.Helper()
	s.pollJetStream("JetStream", func(ctx context.Context, js jetstream.JetStream) error {
		_, err := js.AccountInfo(ctx)
		return err
	})
}

// pollJetStream runs check through this server, with a second for each
// try, until it succeeds or clusterReadyTimeout passes.
func (s *Server) pollJetStream(what string, check func(context.Context, jetstream.JetStream) error) {
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
	err = poll(clusterReadyTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return check(ctx, js)
	})
	if err != nil {
		s.t.Fatalf("no %s through %s after %s: %v", what, s.Name(), clusterReadyTimeout, err)
	}
}

// StartAgain starts the server again, after a Shutdown, on the same address
// and with the same store, as an operator restarting nats-server would.
// Clients connected before reconnect to it. A cluster member rejoins its
// cluster, and StartAgain returns once its replicas of every stream have
// caught up, as an operator would wait for it to be healthy: until then
// requests through it may go unanswered, and reads may be answered by any
// replica.
func (s *Server) StartAgain() {
	s.t.Helper()
	if s.links != nil {
		s.links.setCut(s.member, false)
	}
	srv, err := embeddednats.Start(s.opts)
	if err != nil {
		s.t.Fatalf("restart nats-server: %v", err)
	}
	s.t.Cleanup(srv.Shutdown)
	s.Server = srv
	if s.links != nil {
		s.waitForReplicas()
	}
}

// waitForReplicas waits until every stream has a leader and all its
// replicas are current, as seen through this server.
func (s *Server) waitForReplicas() {
	s.t.Helper()
	s.pollJetStream("current replicas of every stream", func(ctx context.Context, js jetstream.JetStream) error {
		// Names come from the cluster's metadata; a stream whose leader
		// does not answer is then an error, not a stream left out.
		lister := js.StreamNames(ctx)
		var names []string
		for name := range lister.Name() {
			names = append(names, name)
		}
		if err := lister.Err(); err != nil {
			return err
		}
		for _, name := range names {
			st, err := js.Stream(ctx, name)
			if err != nil {
				return fmt.Errorf("stream %s: %w", name, err)
			}
			c := st.CachedInfo().Cluster
			if c == nil || c.Leader == "" {
				return fmt.Errorf("stream %s has no leader", name)
			}
			if len(c.Replicas) != st.CachedInfo().Config.Replicas-1 {
				return fmt.Errorf("stream %s: %d of %d replicas known", name, len(c.Replicas)+1, st.CachedInfo().Config.Replicas)
			}
			for _, r := range c.Replicas {
				if !r.Current || r.Offline {
					return fmt.Errorf("stream %s: replica %s is behind", name, r.Name)
				}
			}
		}
		return nil
	})
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

// WaitFor polls cond until it holds, and fails the test if d passes first.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if poll(d, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
}

var errNotYet = errors.New("not yet")

// poll calls try every 10 ms until it returns nil or d passes, and returns
// its last error.
func poll(d time.Duration, try func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := try()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
