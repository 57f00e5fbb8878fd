package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jetsaga/saga/stream"
)

// deadLetterJSON is one dead letter as "dead-letters --json" prints it:
// its metadata, without the body.
type deadLetterJSON struct {
	Stream             string    `json:"stream"`
	Subject            string    `json:"subject"`
	Sequence           uint64    `json:"sequence"`
	Consumer           string    `json:"consumer"`
	Reason             string    `json:"reason"`
	Node               string    `json:"node"`
	Deliveries         uint64    `json:"deliveries"`
	Time               time.Time `json:"time"`
	Size               int       `json:"size"`
	Truncated          bool      `json:"truncated"`
	DeadLetterSequence uint64    `json:"dead_letter_sequence"`
}

// runDeadLetters lists the most recent dead letters, oldest first. It reads
// the dead-letter stream directly, so it needs no running node.
func runDeadLetters(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("dead-letters", env)
	var conn connFlags
	conn.register(fs, env)
	asJSON := fs.Bool("json", false, "print JSON")
	limit := fs.Int("limit", 100, "list the most recent N dead letters (0: all)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if *limit < 0 {
		return fmt.Errorf("%w: --limit must be 0 (all) or more, got %d", errUsage, *limit)
	}
	nc, err := conn.connect("dead-letters")
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := stream.Open(nc, stream.Config{Prefix: conn.prefix})
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	dls, err := st.DeadLetters(ctx, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]deadLetterJSON, len(dls))
		for i, d := range dls {
			out[i] = deadLetterJSON{Stream: d.Stream, Subject: d.Subject, Sequence: d.Sequence, Consumer: d.Consumer,
				Reason: d.Reason, Node: d.Node, Deliveries: d.Deliveries, Time: d.Time, Size: d.Size,
				Truncated: d.Truncated, DeadLetterSequence: d.DeadLetterSequence}
		}
		return writeJSON(env.Stdout, out)
	}
	return writeDeadLetters(env.Stdout, dls)
}

func writeDeadLetters(w io.Writer, dls []stream.DeadLetter) error {
	if len(dls) == 0 {
		_, err := fmt.Fprintln(w, "no dead letters")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTREAM\tSEQ\tSUBJECT\tSIZE\tREASON")
	for _, d := range dls {
		at := "-"
		if !d.Time.IsZero() {
			at = d.Time.UTC().Format(time.RFC3339)
		}
		size := fmt.Sprint(d.Size)
		if d.Truncated {
			size += " (truncated)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", at, cell(d.Stream), d.Sequence, cell(d.Subject), size, cell(d.Reason))
	}
	return tw.Flush()
}

// cell keeps a header value, which an operator may have written, from
// breaking the table's columns.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(s, "\t", " ")
}
