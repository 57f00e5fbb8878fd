// Package cli is the saga-node command line: "run" (a node, with an
// embedded nats-server by default), "demo", and the admin commands that
// talk to a running engine over NATS (start, describe, history, wake,
// cancel, signal, query, dead-letters).
//
// cmd/saga-node runs it with the worked examples registered. A program
// with its own workflows calls Run with its own Registry and gets the same
// commands.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
)

// Env is what a command may touch: its output streams, the environment and
// the definitions a node runs.
type Env struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Registry holds what "run" and "demo" serve.
	Registry *saga.Registry
}

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// DefaultNATSURL is where admin commands look for the engine.
const DefaultNATSURL = "nats://127.0.0.1:4222"

const usage = `saga-node: a durable saga engine on NATS JetStream

Usage:
  saga-node run      [--data DIR] [--listen HOST:PORT] [--nats-url URL] [--sync always|interval] [--pg-url URL] [--ui-listen HOST:PORT]
  saga-node demo     [--ui]
  saga-node ui       [--nats-url URL] [--pg-url URL] [--ui-listen HOST:PORT] [--read-only] [--ui-user U --ui-password P | --ui-token T]
  saga-node start    <workflow-type> [--id ID] [--input JSON] [--wait] [--timeout D] [--request-id R] [--run-timeout D]
  saga-node describe <saga-id> [--json] [--pg-url URL]
  saga-node history  <saga-id> [--json] [--latest-run] [--pg-url URL]
  saga-node list     [--status S] [--type T] [--since D] [--compensation C] [--waiting-on-timer] [--limit N] [--after CURSOR] [--json]
  saga-node migrate
  saga-node archive  [--older-than D] [--limit N]
  saga-node status   [--json]
  saga-node wake     <saga-id>
  saga-node cancel   <saga-id> [--reason R]
  saga-node signal   <saga-id> <name> [--input JSON] [--msg-id ID]
  saga-node query    <saga-id> <name> [--input JSON] [--json]
  saga-node dead-letters [--json] [--limit N]
  saga-node history-limits [--history-warn-events N] [--history-limit-events N] [--history-warn-bytes B] [--history-limit-bytes B] [--json]
  saga-node replay-check [--type T] [--since D] [--from stream|archive] [--json] [--limit N]
  saga-node bench    [--sagas N] [--in-flight N] [--sync interval|always] [--shards K] [--idle N] [--json] [--nats-url URL]

Admin commands reach the engine at --nats-url, else $SAGA_NATS_URL, else
nats://127.0.0.1:4222. The Postgres projection (list, migrate, and describe
or history of sagas the streams no longer hold) is at --pg-url, else
$SAGA_PG_URL. "saga-node <command> -h" lists a command's flags.
`

// errUsage marks errors that deserve the usage text.
var errUsage = errors.New("usage")

// Run runs one command and returns the process exit code.
func Run(ctx context.Context, args []string, env Env) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Registry == nil {
		env.Registry = saga.NewRegistry()
	}
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, usage)
		return ExitUsage
	}
	commands := map[string]func(context.Context, []string, Env) error{
		"run":      runNode,
		"demo":     runDemo,
		"start":    runStart,
		"describe": runDescribe,
		"history":  runHistory,
		"wake":     runWake,
		"cancel":   runCancel,
		"signal":   runSignal,
		"query":    runQuery,
		"bench":    runBench,
		"migrate":  runMigrate,
		"list":     runList,
		"status":   runStatus,
		"archive":  runArchive,
		"ui":       runUI,

		"dead-letters":   runDeadLetters,
		"replay-check":   runReplayCheck,
		"history-limits": runHistoryLimits,
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
			fmt.Fprint(env.Stdout, usage)
			return ExitOK
		}
		fmt.Fprintf(env.Stderr, "saga-node: unknown command %q\n\n%s", args[0], usage)
		return ExitUsage
	}
	err := cmd(ctx, args[1:], env)
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.Stderr, "saga-node %s: %v\n", args[0], err)
		return ExitUsage
	case errors.Is(err, errSagaNotCompleted):
		return ExitError // the command printed the saga already
	}
	fmt.Fprintf(env.Stderr, "saga-node %s: %v\n", args[0], err)
	return ExitError
}

// parseArgs parses flags that may come before, between or after the
// positional arguments ("start order --id x" and "start --id x order"),
// and checks the number of positionals.
func parseArgs(fs *flag.FlagSet, args []string, positionals ...string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != len(positionals) {
		want := "no arguments"
		if len(positionals) > 0 {
			want = "<" + strings.Join(positionals, "> <") + ">"
		}
		return nil, fmt.Errorf("%w: expected %s, got %d argument(s)", errUsage, want, len(pos))
	}
	return pos, nil
}

func newFlagSet(name string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet("saga-node "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	return fs
}

// connFlags are the flags of every command that connects to NATS: where,
// under which prefix, and with which credentials and TLS settings.
type connFlags struct {
	url    string
	prefix string

	creds, nkeySeed string
	user, password  string
	token           string
	tlsCA           string
	tlsCert, tlsKey string
	inboxPrefix     string
	getenv          func(string) string
}

func (c *connFlags) register(fs *flag.FlagSet, env Env) {
	def := env.Getenv("SAGA_NATS_URL")
	if def == "" {
		def = DefaultNATSURL
	}
	c.getenv = env.Getenv
	fs.StringVar(&c.url, "nats-url", def, "NATS server URL, or several separated by commas (env SAGA_NATS_URL)")
	fs.StringVar(&c.prefix, "prefix", "saga", "subject and stream prefix of the engine")
	fs.StringVar(&c.creds, "nats-creds", "", "NATS credentials file (user JWT and nkey seed)")
	fs.StringVar(&c.nkeySeed, "nats-nkey", "", "file holding a NATS user nkey seed")
	fs.StringVar(&c.user, "nats-user", "", "NATS user name (password from --nats-password or env SAGA_NATS_PASSWORD)")
	fs.StringVar(&c.password, "nats-password", "", "NATS password; prefer env SAGA_NATS_PASSWORD, which stays out of the process list")
	fs.StringVar(&c.token, "nats-token", "", "NATS authentication token; prefer env SAGA_NATS_TOKEN")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "PEM file of the CAs that sign the NATS servers' certificates")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "PEM client certificate for NATS (mutual TLS; needs --tls-key)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&c.inboxPrefix, "nats-inbox-prefix", "", "subject prefix of the connection's reply inboxes (default _INBOX), for a user whose permissions allow only its own (docs/security.md)")
}

// options turns the authentication and TLS flags into connection options.
// Conflicting or incomplete settings are usage errors: a node that silently
// connected without the credentials it was given would fail later, on a
// permission, far from the cause.
func (c *connFlags) options() ([]nats.Option, error) {
	password := c.password
	if password == "" && c.getenv != nil {
		password = c.getenv("SAGA_NATS_PASSWORD")
	}
	token := c.token
	if token == "" && c.getenv != nil {
		token = c.getenv("SAGA_NATS_TOKEN")
	}
	var opts []nats.Option
	methods := 0
	if c.creds != "" {
		methods++
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.nkeySeed != "" {
		methods++
		opt, err := nats.NkeyOptionFromSeed(c.nkeySeed)
		if err != nil {
			return nil, fmt.Errorf("%w: --nats-nkey: %v", errUsage, err)
		}
		opts = append(opts, opt)
	}
	if c.user != "" {
		methods++
		if password == "" {
			return nil, fmt.Errorf("%w: --nats-user needs a password (--nats-password or SAGA_NATS_PASSWORD)", errUsage)
		}
		opts = append(opts, nats.UserInfo(c.user, password))
	} else if c.password != "" {
		return nil, fmt.Errorf("%w: --nats-password needs --nats-user", errUsage)
	}
	if token != "" {
		methods++
		opts = append(opts, nats.Token(token))
	}
	if methods > 1 {
		return nil, fmt.Errorf("%w: give one of --nats-creds, --nats-nkey, --nats-user or a token, not several", errUsage)
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return nil, fmt.Errorf("%w: --tls-cert and --tls-key go together", errUsage)
	}
	if c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(c.tlsCA))
	}
	if c.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(c.inboxPrefix))
	}
	if c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(c.tlsCert, c.tlsKey))
	}
	return opts, nil
}

// redactURLs hides the password or token a NATS URL list may carry
// (nats://user:secret@host), for logs and errors.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			if _, hasPassword := u.User.Password(); !hasPassword {
				u.User = url.User("xxxxx") // a token alone
			}
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// usesAuth reports whether any credential or TLS flag is set.
func (c *connFlags) usesAuth() bool {
	return c.creds != "" || c.nkeySeed != "" || c.user != "" || c.password != "" || c.token != "" || c.tlsCA != "" || c.tlsCert != "" || c.tlsKey != ""
}

func (c *connFlags) connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	auth, err := c.options()
	if err != nil {
		return nil, err
	}
	base := []nats.Option{nats.Name("saga-node " + name), nats.Timeout(5 * time.Second)}
	nc, err := nats.Connect(c.url, append(append(base, auth...), opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is \"saga-node run\" running? set --nats-url or SAGA_NATS_URL)", redactURLs(c.url), err)
	}
	return nc, nil
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// newFormattedLogger is newLogger with a choice of format: "text", or
// "json" (one object per line) for log collectors.
func newFormattedLogger(w io.Writer, level slog.Level, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format must be \"text\" or \"json\", got %q", errUsage, format)
}
