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
		host, portStr, err := net.SplitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("embeddednats: listen address %q: %w", opts.Listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("embeddednats: listen port %q: %w", portStr, err)
		}
		sopts.Host = host
		sopts.Port = port
		if port == 0 {
			sopts.Port = server.RANDOM_PORT
		}
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

// ClientURL is the URL clients on the network use; empty for an
// in-process-only server.
func (s *Server) ClientURL() string {
	if s.srv.Addr() == nil {
		return ""
	}
	return s.srv.ClientURL()
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
