package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// ErrNoNode: no node serves an API subject.
var ErrNoNode = errors.New("no node answered")

// callTimeout bounds one request when the caller's context does not.
const callTimeout = 30 * time.Second

// Call sends req as JSON to an API subject and decodes the reply into
// out. An error reply is an *Error; a subject no node serves, ErrNoNode.
// The command line and the web UI both call the API through it, so that
// they see the same errors.
func Call(ctx context.Context, nc *nats.Conn, subject string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(ctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w on %s: is \"saga-node run\" running against this NATS and prefix?", ErrNoNode, subject)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", subject, err)
	}
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		e := &Error{Code: code, Description: msg.Header.Get(micro.ErrorHeader)}
		// The body holds the structured error when a node sent it; the
		// code and the description say enough without it.
		var b struct {
			Kind    string            `json:"kind"`
			Context map[string]string `json:"context"`
		}
		if json.Unmarshal(msg.Data, &b) == nil && b.Kind != "" {
			e.Kind, e.Context = b.Kind, b.Context
		}
		return e
	}
	if err := json.Unmarshal(msg.Data, out); err != nil {
		return fmt.Errorf("%s: the reply is not the expected JSON: %w", subject, err)
	}
	return nil
}

// Error is an error reply: its code (CodeNotFound, …), its one-line
// description and, when the node sent the structured error, its kind and
// context.
type Error struct {
	Code        string
	Description string
	Kind        string
	Context     map[string]string
}

func (e *Error) Error() string { return fmt.Sprintf("%s (code %s)", e.Description, e.Code) }
