package saga

import (
	"log/slog"
	"time"

	"github.com/jetsaga/saga/internal/replay"
)

// Context is what workflow code gets instead of a context.Context. It
// answers from history on replay, so its methods are the deterministic
// replacements of time.Now, go statements and the like. It also carries a
// cancellation scope: see WithCancel and NewDisconnectedContext.
type Context struct {
	env   *replay.Env
	scope *replay.Scope
}

// SagaID returns the saga's id.
func (c Context) SagaID() string { return c.env.SagaID() }

// WorkflowType returns the saga's workflow type id.
func (c Context) WorkflowType() string { return c.env.WorkflowType() }

// Now returns the time of the event the workflow is reacting to; use it
// instead of time.Now.
func (c Context) Now() time.Time { return c.env.Now() }

// IsReplaying reports whether the code is re-running recorded decisions.
func (c Context) IsReplaying() bool { return c.env.IsReplaying() }

// Logger logs from workflow code, once per decision however often the code
// is replayed.
func (c Context) Logger() *slog.Logger { return c.env.Logger() }

// GetVersion makes a change to workflow code safe for sagas already
// running: it returns the version recorded for changeID, DefaultVersion
// for sagas that reached this point before the change existed, and
// maxSupported for new ones. Branch on the result; raise minSupported
// when no saga on an old branch is left, but keep the call: a history
// holding a marker for a change the code does not make is taken for one
// written by newer code.
func (c Context) GetVersion(changeID string, minSupported, maxSupported int) int {
	return c.env.GetVersion(changeID, minSupported, maxSupported)
}

// DefaultVersion is what GetVersion returns for sagas that predate a change.
const DefaultVersion = replay.DefaultVersion

// Go runs fn as another thread of the workflow, deterministically
// interleaved with the others. Use it instead of a go statement.
func (c Context) Go(fn func(Context)) {
	c.env.Go(func(env *replay.Env) { fn(Context{env: env, scope: c.scope}) })
}

// Await blocks until cond returns true. cond may only read workflow
// state, such as whether an Awaitable is ready:
//
//	ctx.Await(func() bool { return f.Ready() || ctx.Done().Ready() })
func (c Context) Await(cond func() bool) { c.env.Await(cond) }

// Awaitable is what workflow code can wait for with Context.Await: a
// *Future, or a context's Done.
type Awaitable interface {
	// Ready reports whether the awaited thing happened.
	Ready() bool
}

// Err returns nil until the context is canceled, then an *Error of kind
// Cancelled that matches ErrCanceled.
func (c Context) Err() error {
	if !c.scope.Canceled() {
		return nil
	}
	return canceledError("workflow context")
}

func canceledError(what string) *Error {
	return &Error{Kind: KindCancelled, Message: what, Cause: ErrCanceled}
}

// Done returns what becomes ready once the context is canceled.
func (c Context) Done() Awaitable { return scopeDone{c.scope} }

type scopeDone struct{ scope *replay.Scope }

func (d scopeDone) Ready() bool { return d.scope.Canceled() }

// WithCancel returns a child of parent, canceled when parent is or when
// the returned function is called, and the function. Canceling a context
// makes the futures of the activities started in it, and every Get
// waiting in it, return an error matching ErrCanceled; the activities
// themselves run to their end. Like everything workflow code does, the
// function must be called from workflow code, never from a native
// goroutine.
func WithCancel(parent Context) (Context, func()) {
	child := parent.env.NewScope(parent.scope)
	return Context{env: parent.env, scope: child}, child.Cancel
}

// NewDisconnectedContext returns a context of the same saga that no
// cancellation of parent reaches: for cleanup, such as compensation, that
// must still run once the rest of the workflow was canceled.
func NewDisconnectedContext(parent Context) Context {
	return Context{env: parent.env, scope: parent.env.NewDisconnectedScope()}
}
