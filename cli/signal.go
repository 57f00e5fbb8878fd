package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/stream"
)

// runSignal sends a signal to a saga through a node's API, which checks
// that the saga exists and has not ended before the inbox stream takes
// the signal: unlike a plain publish, a signal that cannot arrive is an
// error here rather than a dead letter later.
func runSignal(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("signal", env)
	var conn connFlags
	conn.register(fs, env)
	input := fs.String("input", "", "the signal's value as JSON (default: no value)")
	msgID := fs.String("msg-id", "", "de-duplicates the signal: a second signal with the same id within the inbox's duplicate window (2 minutes) is dropped, so a retry is safe")
	pos, err := parseArgs(fs, args, "saga-id", "name")
	if err != nil {
		return err
	}
	id, name := pos[0], pos[1]
	if err := validateNames(id, "signal name", name); err != nil {
		return err
	}
	raw, err := inputFlag(*input)
	if err != nil {
		return err
	}
	nc, err := conn.connect("signal")
	if err != nil {
		return err
	}
	defer nc.Close()
	var res api.SignalResponse
	req := api.SignalRequest{ID: id, Name: name, Input: raw, MsgID: *msgID}
	if err := apiRequest(ctx, nc, stream.Config{Prefix: conn.prefix}.APISubject("signal"), req, &res); err != nil {
		return sagaRequestFailure(id, "a signal can no longer reach it", err)
	}
	fmt.Fprintf(env.Stdout, "signal %s sent to %s (inbox sequence %d)\n", name, res.ID, res.InboxSeq)
	return nil
}

// runQuery asks a saga a named query through a node's API and prints the
// result. Any node takes the request; one that does not run the saga's
// workflow type relays it to one that does.
func runQuery(ctx context.Context, args []string, env Env) error {
	fs := newFlagSet("query", env)
	var conn connFlags
	conn.register(fs, env)
	input := fs.String("input", "", "the query's argument as JSON (default: none)")
	compact := fs.Bool("json", false, "print the result as JSON on one line, for scripts (default: indented)")
	pos, err := parseArgs(fs, args, "saga-id", "name")
	if err != nil {
		return err
	}
	id, name := pos[0], pos[1]
	if err := validateNames(id, "query name", name); err != nil {
		return err
	}
	raw, err := inputFlag(*input)
	if err != nil {
		return err
	}
	nc, err := conn.connect("query")
	if err != nil {
		return err
	}
	defer nc.Close()
	var res api.QueryResponse
	req := api.QueryRequest{ID: id, Name: name, Input: raw}
	if err := apiRequest(ctx, nc, stream.Config{Prefix: conn.prefix}.APISubject("query"), req, &res); err != nil {
		return sagaRequestFailure(id, "", err)
	}
	if *compact {
		_, err := fmt.Fprintf(env.Stdout, "%s\n", res.Result)
		return err
	}
	var v any
	if err := json.Unmarshal(res.Result, &v); err != nil {
		return fmt.Errorf("query %s of %s: the result is not JSON: %w", name, id, err)
	}
	return writeJSON(env.Stdout, v)
}

// validateNames checks a saga id and a signal or query name before
// anything is sent: a bad one would not even make a subject.
func validateNames(id, what, name string) error {
	if err := stream.ValidateID("saga id", id); err != nil {
		return err
	}
	return stream.ValidateID(what, name)
}

// inputFlag checks an --input flag: empty (no value) or JSON.
func inputFlag(input string) (json.RawMessage, error) {
	if input == "" {
		return nil, nil
	}
	if !json.Valid([]byte(input)) {
		return nil, fmt.Errorf("%w: --input is not valid JSON", errUsage)
	}
	return json.RawMessage(input), nil
}

// sagaRequestFailure says in the operator's terms why the API refused a
// request about a saga: it is not found, or it ended (ended, when set,
// says what that means for the request).
func sagaRequestFailure(id, ended string, err error) error {
	e := (*api.Error)(nil)
	if !errors.As(err, &e) {
		return err
	}
	switch e.Code {
	case api.CodeNotFound:
		return &operatorError{msg: fmt.Sprintf("saga %s not found (is the id right, and the --prefix?)", id), err: err}
	case api.CodeConflict:
		status := ""
		if s := e.Context["status"]; s != "" {
			status = " (" + s + ")"
		}
		msg := fmt.Sprintf("saga %s already ended%s", id, status)
		if ended != "" {
			msg += ": " + ended
		}
		return &operatorError{msg: msg, err: err}
	}
	// The node's description says what was wrong (an unknown query, with
	// the known ones; an input that does not fit; no node runs the type).
	return &operatorError{msg: e.Description, err: err}
}
