package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// consumerStatus is one durable consumer's backlog.
type consumerStatus struct {
	Stream      string `json:"stream"`
	Consumer    string `json:"consumer"`
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// LagSeconds is how long the oldest message not yet handled has
	// waited; 0 when none waits.
	LagSeconds float64 `json:"lag_seconds"`
}

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
	prefix := strings.ToUpper(conn.prefix) + "_"
	var out []consumerStatus
	names := js.StreamNames(ctx)
	var streams []string
	for name := range names.Name() {
		if strings.HasPrefix(name, prefix) || strings.HasPrefix(name, "KV_"+prefix) {
			streams = append(streams, name)
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return fmt.Errorf("list streams: %w", stream.MapError(err))
	}
	if len(streams) == 0 {
		return fmt.Errorf("no stream of prefix %q: is the engine running against this NATS?", conn.prefix)
	}
	now := time.Now()
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, stream.MapError(err))
		}
		infos := s.ListConsumers(ctx)
		for info := range infos.Info() {
			cs := consumerStatus{Stream: name, Consumer: info.Name, Pending: info.NumPending,
				AckPending: info.NumAckPending, Redelivered: info.NumRedelivered}
			if info.NumPending+uint64(info.NumAckPending) > 0 {
				// The oldest message the consumer has not seen through.
				m, err := s.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(info.Config.FilterSubject))
				if err == nil {
					cs.LagSeconds = now.Sub(m.Time).Seconds()
				}
			}
			out = append(out, cs)
		}
		if err := infos.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
			return fmt.Errorf("consumers of %s: %w", name, stream.MapError(err))
		}
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
