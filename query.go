package saga

import (
	"github.com/jetsaga/saga/stream"
)

// SetQueryHandler lets callers read the workflow's state while it runs:
// a request on the API's query endpoint (or "saga-node query") runs fn on
// the saga's current state, on a node that runs the workflow, and
// answers with its result. A query appends nothing to the history. fn
// must only read workflow state: it may not wait, start activities or
// timers, or receive signals (such a call fails the query). Register
// handlers early in the workflow function; a query that arrives before
// its handler is registered fails as unknown.
func SetQueryHandler[In, Out any](ctx Context, name string, fn func(In) (Out, error)) error {
	if err := stream.ValidateID("query name", name); err != nil {
		return &Error{Kind: KindValidation, Message: "set query handler", Cause: err}
	}
	ctx.env.SetQueryHandler(name, func(input stream.Payload) (stream.Payload, error) {
		var in In
		if len(input) > 0 {
			if err := stream.Unmarshal(input, &in); err != nil {
				return nil, Errorf(KindCodec, "query %s: decode input into %T: %w", name, in, err)
			}
		}
		out, err := fn(in)
		if err != nil {
			return nil, err
		}
		b, err := stream.Marshal(out)
		if err != nil {
			return nil, Errorf(KindCodec, "query %s: encode result: %w", name, err)
		}
		return b, nil
	})
	return nil
}
