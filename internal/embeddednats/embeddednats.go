// Package embeddednats runs a nats-server with JetStream inside the current
// process. saga-node uses it for its default single-binary mode and for the
// demo; the tests use it (through internal/natstest) so that every test talks
// to a real server.
package embeddednats

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configures an embedded server.
type Options struct {
	// Dir is the JetStream storage directory. The server keeps its files
	// under Dir/jetstream. Required; never share one Dir between servers.
	Dir string
	// Listen is the host:port clients connect to. Port 0 picks a free port.
	// Empty means the server accepts only in-process connections.
	Listen string
	// SyncAlways makes JetStream fsync every write (survives an OS crash or
	// power loss, at 10-30x lower write throughput). When false the file
	// store syncs every SyncInterval, which survives a process kill only.
	SyncAlways bool
	// SyncInterval is the periodic fsync interval when SyncAlways is false.
	// Defaults to the server's own default (2 minutes).
	SyncInterval time.Duration
	// ServerName names the server; defaults to "saga-embedded".
	ServerName string
	// MaxPayload is the largest message the server accepts. Defaults to the
	// server default of 1 MiB.
	MaxPayload int32
	// Logger receives the server's warnings and errors. Nil discards them.
	Logger *slog.Logger
	// ReadyTimeout bounds how long Start waits for the server. Defaults to 10s.
	ReadyTimeout time.Duration
	// Cluster, when set, makes the server one member of a NATS cluster, so
	// that JetStream can replicate streams across servers. Nil: a
	// standalone server.
	Cluster *ClusterOptions
	// Configure, when set, is given the server's options last, to set what
	// Options does not name (users and their permissions, say). Settings it
	// makes win over the ones above.
	Configure func(*server.Options)
}

// ClusterOptions joins a server to a cluster. Every member needs its own
// ServerName (JetStream tells replicas apart by it).
type ClusterOptions struct {
	// Name of the cluster, the same on every member. Required.
	Name string
	// Listen is the host:port the other members' routes connect to. Port 0
	// picks a free port. Required.
	Listen string
	// Routes are the route URLs (nats://host:port) of the members. Listing
	// every member, this one included, is simplest: a server ignores a
	// route to itself, and JetStream takes the number of routes as the
	// cluster's size when it first forms its metadata group. At least one
	// is required.
	Routes []string
	// Advertise is the host:port this server tells the other members to
	// route to when they learn of it through a third. Defaults to the
	// address it listens on.
	Advertise string
}

// Server is a running embedded nats-server.
type Server struct {
	srv *server.Server
}

// Start starts a server and waits until it accepts connections and
// JetStream is enabled.
func Start(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("embeddednats: Dir is required")
	}
	sopts := &server.Options{
		ServerName:   opts.ServerName,
		JetStream:    true,
		StoreDir:     opts.Dir,
		SyncAlways:   opts.SyncAlways,
		SyncInterval: opts.SyncInterval,
		MaxPayload:   opts.MaxPayload,
		NoSigs:       true,
	}
	if sopts.ServerName == "" {
		sopts.ServerName = "saga-embedded"
	}
	if opts.Listen == "" {
		sopts.DontListen = true
	} else {
		host, port, err := hostPort("listen", opts.Listen)
		if err != nil {
			return nil, err
		}
		sopts.Host = host
		sopts.Port = port
	}
	if opts.Cluster != nil {
		if err := clusterOptions(sopts, *opts.Cluster); err != nil {
			return nil, err
		}
	}
	if opts.Configure != nil {
		opts.Configure(sopts)
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("embeddednats: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// The server reports start-up failures (a port in use, say) through
	// its logger's Fatalf; catch the first to fail fast with its text.
	adapter := &slogAdapter{l: logger, fatal: make(chan string, 1)}
	srv.SetLoggerV2(adapter, false, false, false)
	srv.Start()
	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for !srv.ReadyForConnections(50 * time.Millisecond) {
		var failure string
		select {
		case failure = <-adapter.fatal:
		default:
			if time.Now().Before(deadline) {
				continue
			}
			failure = fmt.Sprintf("server not ready after %s", timeout)
		}
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("embeddednats: %s", failure)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, errors.New("embeddednats: JetStream did not start (is the directory writable?)")
	}
	return &Server{srv: srv}, nil
}

// hostPort splits a listen address; port 0 becomes the server's "any free
// port".
func hostPort(what, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("embeddednats: %s address %q: %w", what, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("embeddednats: %s port %q: %w", what, portStr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

func clusterOptions(sopts *server.Options, c ClusterOptions) error {
	if c.Name == "" {
		return errors.New("embeddednats: Cluster.Name is required")
	}
	if len(c.Routes) == 0 {
		// JetStream refuses to form a cluster without configured routes.
		return errors.New("embeddednats: Cluster.Routes needs at least one route")
	}
	host, port, err := hostPort("cluster listen", c.Listen)
	if err != nil {
		return err
	}
	sopts.Cluster.Name = c.Name
	sopts.Cluster.Host = host
	sopts.Cluster.Port = port
	sopts.Cluster.Advertise = c.Advertise
	for _, r := range c.Routes {
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return fmt.Errorf("embeddednats: route %q is not a URL like nats://host:port", r)
		}
		sopts.Routes = append(sopts.Routes, u)
	}
	return nil
}

// ClientURL is the URL clients on the network use; empty for an
// in-process-only server.
func (s *Server) ClientURL() string {
	if s.srv.Addr() == nil {
		return ""
	}
	return s.srv.ClientURL()
}

// Name is the server's name, by which JetStream reports the leaders and
// replicas of streams in a cluster.
func (s *Server) Name() string { return s.srv.Name() }

// ClusterURL is the URL other cluster members route to; empty for a
// server that is not in a cluster.
func (s *Server) ClusterURL() string {
	addr := s.srv.ClusterAddr()
	if addr == nil {
		return ""
	}
	return "nats://" + addr.String()
}

// Connect opens a client connection to the server, in-process when the
// server does not listen. Extra options are applied after the defaults.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.InProcessServer(s.srv), nats.MaxReconnects(-1)}
	return nats.Connect("", append(base, opts...)...)
}

// Shutdown stops the server and waits until it is down.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// slogAdapter routes the server's log lines to slog. Notices are debug
// level: the server is chatty at start-up and the node logs what matters.
type slogAdapter struct {
	l     *slog.Logger
	fatal chan string
}

func (a *slogAdapter) Noticef(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }

func (a *slogAdapter) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	a.l.Error(msg)
	select {
	case a.fatal <- msg:
	default:
	}
}
