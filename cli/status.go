package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/telemetry"
)

// runStatus prints the backlog of every durable consumer of the engine:
// how far behind the dispatcher, the timers, the inbox, the tasks of each
// type and the projector are, in messages and in seconds.
func runStatus(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("status", env)
	var conn connFlags
	conn.register(fs, env)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	nc, err := conn.connect("status")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	out, err := telemetry.EngineLags(ctx, js, conn.prefix)
	if errors.Is(err, telemetry.ErrNoStreams) {
		return fmt.Errorf("no stream of prefix %q: is the engine running against this NATS?", conn.prefix)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(env.Stdout, out)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tCONSUMER\tPENDING\tACK PENDING\tREDELIVERED\tLAG")
	for _, c := range out {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", c.Stream, c.Consumer, c.Pending, c.AckPending, c.Redelivered,
			(time.Duration(c.LagSeconds * float64(time.Second))).Round(time.Millisecond))
	}
	return tw.Flush()
}
