package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/ui"
)

// uiFlags are the web UI's flags, on "run", "ui" and "demo".
type uiFlags struct {
	listen    string
	readOnly  bool
	user      string
	password  string
	token     string
	allowOpen bool
	hosts     string
	getenv    func(string) string
}

// register adds the flags; readOnly names the read-only flag ("read-only"
// on "ui", "ui-read-only" where it could be read as the node's).
func (u *uiFlags) register(fs *flag.FlagSet, env Env, defListen, what, readOnly string) {
	u.getenv = env.Getenv
	fs.StringVar(&u.listen, "ui-listen", defListen, "address of the web UI"+what)
	fs.BoolVar(&u.readOnly, readOnly, false, "web UI: hide the actions (signal, cancel, wake) and refuse them")
	fs.StringVar(&u.user, "ui-user", "", "web UI: require HTTP basic authentication with this user (password from --ui-password or env SAGA_UI_PASSWORD)")
	fs.StringVar(&u.password, "ui-password", "", "web UI: the basic authentication password; prefer env SAGA_UI_PASSWORD")
	fs.StringVar(&u.token, "ui-token", "", "web UI: require this bearer token (or it as the basic authentication password); prefer env SAGA_UI_TOKEN")
	fs.BoolVar(&u.allowOpen, "ui-allow-open", false, "web UI: serve an address other than loopback without authentication")
	fs.StringVar(&u.hosts, "ui-allowed-hosts", "", "web UI without authentication: host names it answers to besides loopback ones, comma-separated (others are refused: DNS rebinding)")
}

// options checks the flags and returns the UI's options, without the
// connection.
func (u *uiFlags) options() (ui.Options, error) {
	password, token := u.password, u.token
	if password == "" && u.getenv != nil {
		password = u.getenv("SAGA_UI_PASSWORD")
	}
	if token == "" && u.getenv != nil {
		token = u.getenv("SAGA_UI_TOKEN")
	}
	o := ui.Options{ReadOnly: u.readOnly, Token: token}
	switch {
	case u.user != "" && password == "":
		return o, fmt.Errorf("%w: --ui-user needs a password (--ui-password or SAGA_UI_PASSWORD)", errUsage)
	case u.user == "" && password != "":
		return o, fmt.Errorf("%w: a password (--ui-password or SAGA_UI_PASSWORD) needs --ui-user: without it, no authentication is set", errUsage)
	case u.user != "" && token != "":
		return o, fmt.Errorf("%w: give --ui-user or --ui-token, not both", errUsage)
	}
	if u.user != "" {
		o.User, o.Password = u.user, password
	}
	for h := range strings.SplitSeq(u.hosts, ",") {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			o.AllowedHosts = append(o.AllowedHosts, h)
		}
	}
	if u.listen != "" {
		hasAuth := o.User != "" || o.Token != ""
		if err := ui.CheckListen(u.listen, hasAuth, u.allowOpen); err != nil {
			if errors.Is(err, ui.ErrUnsafeListen) {
				return o, fmt.Errorf("%w: --ui-listen %s is reachable from other machines: set --ui-user or --ui-token, or --ui-allow-open", errUsage, u.listen)
			}
			return o, fmt.Errorf("%w: --ui-listen: %v", errUsage, err)
		}
	}
	return o, nil
}

// serveUI serves the UI on nc until the returned stop is called; stop
// shuts the HTTP server down and waits for it.
func serveUI(o ui.Options, listen string, nc *nats.Conn, cfg stream.Config, codec stream.PayloadCodec, pg *pgarchive.Store, log *slog.Logger) (url string, stop func(), err error) {
	o.Conn, o.Stream, o.Codec, o.Projection, o.Logger = nc, cfg, codec, pg, log.With("component", "ui")
	h, err := ui.New(o)
	if err != nil {
		return "", nil, err
	}
	hs, err := ui.Listen(listen, h, o.Logger)
	if err != nil {
		h.Close()
		return "", nil, err
	}
	return hs.URL(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil {
			log.Warn("ui: shutdown", "err", err)
		}
		h.Close()
	}, nil
}

// runUI serves the web UI against a running engine, with no workflow of
// its own, until SIGINT or SIGTERM.
func runUI(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("ui", env)
	var conn connFlags
	conn.register(fs, env)
	pgURL := pgFlag(fs, env)
	var keys codecFlags
	keys.register(fs)
	var uf uiFlags
	uf.register(fs, env, ui.DefaultListen, " (loopback by default)", "read-only")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if uf.listen == "" {
		return fmt.Errorf("%w: --ui-listen must not be empty", errUsage)
	}
	opts, err := uf.options()
	if err != nil {
		return err
	}
	codec, err := keys.codec()
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("%w: --log-level: %v", errUsage, err)
	}
	log := newLogger(env.Stderr, level)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The UI outlives NATS outages, as a node does.
	nc, err := conn.connect("ui", nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	var pg *pgarchive.Store
	if *pgURL != "" {
		if pg, err = pgarchive.Open(ctx, *pgURL); err != nil {
			return err
		}
		defer pg.Close()
	}
	// The engine's shard count, as its streams record it: a UI set to
	// another would be refused every read.
	cfg := stream.Config{Prefix: conn.prefix}
	if js, err := jetstream.New(nc); err == nil {
		readCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		fleet, err := stream.Fleet(readCtx, js, cfg.Defaults())
		cancel()
		if err != nil {
			log.Warn("could not read the engine's settings; assuming one history shard", "err", err)
		} else if fleet.HistoryShards > 0 {
			cfg.HistoryShards = fleet.HistoryShards
		}
	}
	url, stopUI, err := serveUI(opts, uf.listen, nc, cfg, codec, pg, log)
	if err != nil {
		return err
	}
	defer stopUI()
	log.Info("serving the web UI", "url", url, "read_only", opts.ReadOnly, "source", uiListSource(pg))
	fmt.Fprintf(env.Stdout, "web UI at %s\n", url)
	<-ctx.Done()
	return nil
}

func uiListSource(pg *pgarchive.Store) string {
	if pg != nil {
		return "postgres"
	}
	return "jetstream"
}
