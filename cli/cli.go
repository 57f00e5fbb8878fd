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
  saga-node run      [--data DIR] [--listen HOST:PORT] [--nats-url URL] [--sync always|interval] [--pg-url URL]
  saga-node demo
  saga-node start    <workflow-type> [--id ID] [--input JSON] [--wait] [--timeout D] [--request-id R] [--run-timeout D]
  saga-node describe <saga-id> [--json] [--pg-url URL]
  saga-node history  <saga-id> [--json] [--pg-url URL]
  saga-node list     [--status S] [--type T] [--since D] [--compensation C] [--waiting-on-timer] [--limit N] [--after CURSOR] [--json]
  saga-node migrate
  saga-node archive  [--older-than D] [--limit N]
  saga-node status   [--json]
  saga-node wake     <saga-id>
  saga-node cancel   <saga-id> [--reason R]
  saga-node signal   <saga-id> <name> [--input JSON] [--msg-id ID]
  saga-node query    <saga-id> <name> [--input JSON] [--json]
  saga-node dead-letters [--json] [--limit N]
  saga-node replay-check [--type T] [--since D] [--from stream|archive] [--json] [--limit N]
  saga-node bench    [--sagas N] [--in-flight N] [--sync interval|always] [--nats-url URL]

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

		"dead-letters": runDeadLetters,
		"replay-check": runReplayCheck,
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

// connFlags are the flags of every command that connects to NATS.
type connFlags struct {
	url    string
	prefix string
}

func (c *connFlags) register(fs *flag.FlagSet, env Env) {
	def := env.Getenv("SAGA_NATS_URL")
	if def == "" {
		def = DefaultNATSURL
	}
	fs.StringVar(&c.url, "nats-url", def, "NATS server URL (env SAGA_NATS_URL)")
	fs.StringVar(&c.prefix, "prefix", "saga", "subject and stream prefix of the engine")
}

func (c *connFlags) connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(c.url, append([]nats.Option{nats.Name("saga-node " + name), nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is \"saga-node run\" running? set --nats-url or SAGA_NATS_URL)", c.url, err)
	}
	return nc, nil
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}
