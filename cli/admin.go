package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/pgarchive"
	"github.com/jetsaga/saga/stream"
)

// errSagaNotCompleted: start --wait saw the saga end other than completed.
var errSagaNotCompleted = errors.New("saga did not complete")

// runStart starts a saga through a node's API, which checks the workflow
// type and the input before anything is written.
func runStart(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("start", env)
	var conn connFlags
	conn.register(fs, env)
	id := fs.String("id", "", "saga id (default: generated)")
	input := fs.String("input", "", "workflow input as JSON")
	wait := fs.Bool("wait", false, "wait for the saga to end, print its description as JSON, exit 0 only if it completed")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long --wait waits")
	ifExists := fs.String("if-exists", "fail", `"fail" or "use_existing" when the id is taken`)
	requestID := fs.String("request-id", "", "identifies this start: retrying with the same --id and --request-id succeeds if the first attempt created the saga")
	runTimeout := fs.Duration("run-timeout", 0, "bound on the saga's run: past it the saga is canceled, compensates and ends timed_out (0: no bound)")
	pos, err := parseArgs(fs, args, "workflow-type")
	if err != nil {
		return err
	}
	if *ifExists != "fail" && *ifExists != "use_existing" {
		return fmt.Errorf(`%w: --if-exists must be "fail" or "use_existing", got %q`, errUsage, *ifExists)
	}
	if *runTimeout < 0 {
		return fmt.Errorf("%w: --run-timeout must not be negative, got %s", errUsage, *runTimeout)
	}
	if err := stream.ValidateID("workflow type", pos[0]); err != nil {
		return err
	}
	req := api.StartRequest{ID: *id, IfExists: *ifExists, RequestID: *requestID}
	if *runTimeout > 0 {
		req.RunTimeout = runTimeout.String()
	}
	if *input != "" {
		if !json.Valid([]byte(*input)) {
			return fmt.Errorf("%w: --input is not valid JSON", errUsage)
		}
		req.Input = json.RawMessage(*input)
	}
	nc, err := conn.connect("start")
	if err != nil {
		return err
	}
	defer nc.Close()
	var res api.StartResponse
	subject := stream.Config{Prefix: conn.prefix}.StartSubject(pos[0])
	if err := apiRequest(ctx, nc, subject, req, &res); errors.Is(err, errNoNode) {
		return fmt.Errorf("no node answered on %s: unknown workflow type %q for every running node (or no node runs)", subject, pos[0])
	} else if err != nil {
		return err
	}
	if !*wait {
		fmt.Fprintln(env.Stdout, res.ID)
		return nil
	}
	cl, err := saga.NewClient(nc, saga.ClientOptions{Stream: stream.Config{Prefix: conn.prefix}})
	if err != nil {
		return err
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	d, err := cl.Wait(wctx, res.ID)
	if err != nil {
		return fmt.Errorf("saga %s started, but waiting for its end failed: %w", res.ID, err)
	}
	if err := writeJSON(env.Stdout, d); err != nil {
		return err
	}
	if d.Status != saga.StatusCompleted {
		msg := ""
		if d.Error != nil {
			msg = ": " + d.Error.Message
		}
		fmt.Fprintf(env.Stderr, "saga-node start: saga %s is %s%s\n", d.ID, d.Status, msg)
		return errSagaNotCompleted
	}
	return nil
}

// errNoNode: no node serves an API subject.
var errNoNode = api.ErrNoNode

// apiRequest calls a node API subject and decodes the reply into out.
func apiRequest(ctx context.Context, nc *nats.Conn, subject string, req, out any) error {
	return api.Call(ctx, nc, subject, req, out)
}

// clientCommand parses "<command> <saga-id> [--json]", with the flags
// more adds, and opens a client.
func clientCommand(name string, args []string, env Env, pgURL *string, more ...func(*flag.FlagSet)) (*saga.Client, func(), string, bool, error) {
	fs := newFlagSet(name, env)
	var conn connFlags
	conn.register(fs, env)
	asJSON := fs.Bool("json", false, "print JSON")
	for _, add := range more {
		add(fs)
	}
	if pgURL != nil {
		fs.StringVar(pgURL, "pg-url", env.Getenv("SAGA_PG_URL"), "PostgreSQL URL of the projection (env SAGA_PG_URL): read there a saga the streams no longer hold")
	}
	pos, err := parseArgs(fs, args, "saga-id")
	if err != nil {
		return nil, nil, "", false, err
	}
	if err := stream.ValidateID("saga id", pos[0]); err != nil {
		return nil, nil, "", false, err
	}
	nc, err := conn.connect(name)
	if err != nil {
		return nil, nil, "", false, err
	}
	cl, err := saga.NewClient(nc, saga.ClientOptions{Stream: stream.Config{Prefix: conn.prefix}})
	if err != nil {
		nc.Close()
		return nil, nil, "", false, err
	}
	return cl, func() { cl.Close(); nc.Close() }, pos[0], *asJSON, nil
}

func runDescribe(ctx context.Context, args []string, env Env) error {
	var pgURL string
	cl, done, id, asJSON, err := clientCommand("describe", args, env, &pgURL)
	if err != nil {
		return err
	}
	defer done()
	d, err := cl.Describe(ctx, id)
	d, err = fromProjection(ctx, pgURL, d, err, func(st *pgarchive.Store) (*saga.Description, error) {
		s, err := st.State(ctx, id)
		if err != nil {
			return nil, err
		}
		return saga.DescribeState(s), nil
	})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(env.Stdout, d)
	}
	return writeDescription(env.Stdout, d)
}

func runHistory(ctx context.Context, args []string, env Env) error {
	var pgURL string
	var latestRun bool
	cl, done, id, asJSON, err := clientCommand("history", args, env, &pgURL, func(fs *flag.FlagSet) {
		fs.BoolVar(&latestRun, "latest-run", false, "only the saga's latest run, from its start (a saga that continued as new); default: every run")
	})
	if err != nil {
		return err
	}
	defer done()
	history := cl.History
	if latestRun {
		history = cl.RunHistory
	}
	events, err := history(ctx, id)
	events, err = fromProjection(ctx, pgURL, events, err, func(st *pgarchive.Store) ([]stream.Event, error) {
		events, err := st.History(ctx, id)
		if latestRun {
			events = stream.LatestRun(events)
		}
		return events, err
	})
	if err != nil {
		return err
	}
	if asJSON {
		return writeJSON(env.Stdout, events)
	}
	return writeTimeline(env.Stdout, events)
}

// runWake asks a node to re-evaluate a saga, for example after deploying
// code that fixes what blocked it.
func runWake(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("wake", env)
	var conn connFlags
	conn.register(fs, env)
	pos, err := parseArgs(fs, args, "saga-id")
	if err != nil {
		return err
	}
	if err := stream.ValidateID("saga id", pos[0]); err != nil {
		return err
	}
	nc, err := conn.connect("wake")
	if err != nil {
		return err
	}
	defer nc.Close()
	var res api.SagaRequest
	if err := apiRequest(ctx, nc, stream.Config{Prefix: conn.prefix}.APISubject("wake"), api.SagaRequest{ID: pos[0]}, &res); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "woke %s\n", res.ID)
	return nil
}

// cancelIdentity is recorded as the requester of a cancellation made
// with the command line.
const cancelIdentity = "saga-node cancel"

// runCancel records a request to cancel a saga. Like describe it works on
// the history directly, so it needs no node to answer: the nodes running
// the saga act on the request when they see it.
func runCancel(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("cancel", env)
	var conn connFlags
	conn.register(fs, env)
	reason := fs.String("reason", "", "why the saga is canceled, recorded with the request")
	pos, err := parseArgs(fs, args, "saga-id")
	if err != nil {
		return err
	}
	id := pos[0]
	if err := stream.ValidateID("saga id", id); err != nil {
		return err
	}
	nc, err := conn.connect("cancel")
	if err != nil {
		return err
	}
	defer nc.Close()
	cl, err := saga.NewClient(nc, saga.ClientOptions{Stream: stream.Config{Prefix: conn.prefix}})
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := cl.RequestCancel(ctx, id, *reason, cancelIdentity); err != nil {
		return cancelFailure(id, err)
	}
	fmt.Fprintf(env.Stdout, "cancel requested for %s\n", id)
	return nil
}

// cancelFailure says in the operator's terms why a cancellation was
// refused.
func cancelFailure(id string, err error) error {
	switch {
	case errors.Is(err, saga.ErrAlreadyEnded):
		status := ""
		if e := (*saga.Error)(nil); errors.As(err, &e) && e.Context["status"] != "" {
			status = " (" + e.Context["status"] + ")"
		}
		return &operatorError{msg: fmt.Sprintf("saga %s already ended%s: there is nothing to cancel", id, status), err: err}
	case errors.Is(err, saga.ErrCancelRequested):
		return &operatorError{msg: fmt.Sprintf("the cancellation of saga %s was already requested; \"saga-node describe %s\" shows where it stands", id, id), err: err}
	case errors.Is(err, saga.ErrNotFound):
		return &operatorError{msg: fmt.Sprintf("saga %s not found (is the id right, and the --prefix?)", id), err: err}
	}
	return err
}

// operatorError is an error with a message written for the command line
// that still matches its cause with errors.Is and errors.As.
type operatorError struct {
	msg string
	err error
}

func (e *operatorError) Error() string { return e.msg }
func (e *operatorError) Unwrap() error { return e.err }

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeDescription(w io.Writer, d *saga.Description) error {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "%-9s %s\n", k+":", v) }
	row("id", d.ID)
	row("type", fmt.Sprintf("%s (version %d)", d.Type, d.Version))
	row("status", string(d.Status))
	row("started", d.StartedAt.Format(time.RFC3339Nano))
	if d.ClosedAt != nil {
		row("closed", fmt.Sprintf("%s (took %s)", d.ClosedAt.Format(time.RFC3339Nano), d.ClosedAt.Sub(d.StartedAt).Round(time.Millisecond)))
	} else {
		row("updated", d.UpdatedAt.Format(time.RFC3339Nano))
	}
	if d.Run > 1 {
		row("events", fmt.Sprintf("%d (%d in run %d)", d.Events, d.RunEvents, d.Run))
		if c := d.ContinuedFrom; c != nil {
			row("run", fmt.Sprintf("%d, continues run %d (events %d to %d)", d.Run, c.Run, c.StartEventID, c.EndEventID))
		}
	} else {
		row("events", fmt.Sprint(d.Events))
	}
	if len(d.Input) > 0 {
		row("input", payloadJSON(d.Input))
	}
	if len(d.Output) > 0 {
		row("output", payloadJSON(d.Output))
	}
	if d.Blocked != nil {
		row("blocked", fmt.Sprintf("%s at event %d: %s", d.Blocked.Reason, d.Blocked.AtEventID, firstLine(d.Blocked.Message)))
	} else if d.Error != nil {
		row("error", fmt.Sprintf("[%s] %s", d.Error.Kind, errorChain(d.Error)))
	}
	for _, p := range d.PendingActivities {
		undoing := ""
		if p.CompensationStep != "" {
			undoing = ", undoing " + p.CompensationStep
		}
		row("pending", fmt.Sprintf("%s (scheduled at event %d)%s", p.ActivityType, p.ScheduledEventID, undoing))
	}
	if c := d.CancelRequested; c != nil {
		row("cancel", cancelText(c))
	}
	if c := d.Compensation; c != nil {
		writeCompensation(&b, row, c)
	}
	if d.Warning != "" {
		row("warning", d.Warning)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func cancelText(c *saga.CancelRequest) string {
	s := fmt.Sprintf("requested at event %d (%s)", c.EventID, c.Cause)
	if c.Identity != "" {
		s += " by " + c.Identity
	}
	if c.Reason != "" {
		s += ": " + strconv.Quote(c.Reason)
	}
	return s
}

// writeCompensation lists each undo that ran and, when compensation
// failed, what is left for an operator to undo by hand.
func writeCompensation(b *strings.Builder, row func(k, v string), c *saga.CompensationInfo) {
	row("compensation", c.Status)
	for _, s := range c.Steps {
		v := fmt.Sprintf("%s via %s (event %d): %s", s.Step, s.ActivityType, s.ScheduledEventID, s.Status)
		if s.Error != nil {
			v += fmt.Sprintf(": [%s] %s", s.Error.Kind, firstLine(errorChain(s.Error)))
		}
		row("undo", v)
	}
	if len(c.NotRun) > 0 {
		row("not run", strings.Join(c.NotRun, ", "))
	}
	if c.NeedsOperator {
		left := append(slices.Clone(c.FailedSteps), c.NotRun...)
		fmt.Fprintf(b, "needs an operator: undo by hand: %s\n", strings.Join(left, ", "))
	}
}

func errorChain(e *saga.StructuredError) string {
	var parts []string
	for ; e != nil; e = e.Cause {
		parts = append(parts, e.Message)
	}
	return strings.Join(parts, ": ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func payloadJSON(p stream.Payload) string {
	b, err := p.MarshalJSON()
	if err != nil {
		return fmt.Sprintf("<%d bytes that do not decode: %v>", len(p), err)
	}
	return string(b)
}
