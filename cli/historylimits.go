package cli

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jetsaga/saga/stream"
)

// historyLimitFlags are the history limit flags of "run" (recorded if
// this node is the first to set the fleet's) and of "history-limits"
// (an operator's change).
type historyLimitFlags struct {
	warnEvents, limitEvents uint64
	warnBytes, limitBytes   int64
}

func (h *historyLimitFlags) register(fs interface {
	Uint64Var(*uint64, string, uint64, string)
	Int64Var(*int64, string, int64, string)
}, what string) {
	fs.Uint64Var(&h.warnEvents, "history-warn-events", 0, "a run this many events long is reported (describe, logs, metrics)"+what)
	fs.Uint64Var(&h.limitEvents, "history-limit-events", 0, "a run is blocked (history_too_long) before its code's decisions take it past this many events"+what)
	fs.Int64Var(&h.warnBytes, "history-warn-bytes", 0, "a run this many bytes long is reported"+what)
	fs.Int64Var(&h.limitBytes, "history-limit-bytes", 0, "a run is blocked before its code's decisions take it past this many bytes"+what)
}

func (h *historyLimitFlags) set() bool {
	return h.warnEvents != 0 || h.limitEvents != 0 || h.warnBytes != 0 || h.limitBytes != 0
}

func (h *historyLimitFlags) limits() stream.HistoryLimits {
	return stream.HistoryLimits{WarnEvents: h.warnEvents, LimitEvents: h.limitEvents, WarnBytes: h.warnBytes, LimitBytes: h.limitBytes}
}

// runHistoryLimits shows the fleet's history limits, or changes them: an
// operator raises the limit to let sagas blocked at it go on (then wakes
// them), or lowers it. Settings not given keep their recorded value.
func runHistoryLimits(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("history-limits", env)
	var conn connFlags
	conn.register(fs, env)
	var h historyLimitFlags
	h.register(fs, " (changes the fleet's setting)")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	nc, err := conn.connect("history-limits")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cfg := stream.Config{Prefix: conn.prefix}
	l, recorded, err := stream.FleetHistoryLimits(ctx, js, cfg)
	if err != nil {
		return err
	}
	if !recorded {
		// Streams from before the limits, whose nodes may not record
		// them: nodes follow the defaults, which a change starts from.
		l = stream.DefaultHistoryLimits
	}
	if h.set() {
		for to, from := range map[*uint64]uint64{&l.WarnEvents: h.warnEvents, &l.LimitEvents: h.limitEvents} {
			if from != 0 {
				*to = from
			}
		}
		for to, from := range map[*int64]int64{&l.WarnBytes: h.warnBytes, &l.LimitBytes: h.limitBytes} {
			if from != 0 {
				*to = from
			}
		}
		if err := stream.SetHistoryLimits(ctx, js, cfg, l); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
	}
	if *asJSON {
		return writeJSON(env.Stdout, map[string]any{"warn_events": l.WarnEvents, "limit_events": l.LimitEvents, "warn_bytes": l.WarnBytes, "limit_bytes": l.LimitBytes,
			"recorded": recorded || h.set()})
	}
	fmt.Fprintf(env.Stdout, "warn at:  %d events or %d bytes\nlimit at: %d events or %d bytes\n", l.WarnEvents, l.WarnBytes, l.LimitEvents, l.LimitBytes)
	if !recorded && !h.set() {
		fmt.Fprintf(env.Stdout, "not recorded on %s: nodes follow these defaults\n", cfg.HistoryStream(0))
	}
	if h.set() {
		fmt.Fprintln(env.Stdout, "recorded: nodes follow within 30 s; wake the sagas blocked at the limit (saga-node wake <id>)")
	}
	return nil
}
