// Package saga is the public API of jetsaga, a durable saga engine whose
// log is NATS JetStream.
//
// A workflow is a plain Go function of a saga.Context and a typed input;
// an activity is a plain Go function of a context.Context and a typed
// input. Workflows call activities with ExecuteActivity and get typed
// futures back. Every decision and result is recorded as an immutable
// event on the saga's JetStream subject, so a saga survives any crash and
// continues on any node by replaying its history.
//
//	var Reserve = saga.NewActivity("reserve-inventory", reserve)
//	var Order = saga.NewWorkflow("order", 1, func(ctx saga.Context, in OrderInput) (OrderResult, error) {
//		res, err := saga.ExecuteActivity(ctx, Reserve, in.Items).Get(ctx)
//		...
//	})
//
// Workflow code must be deterministic: the same inputs must lead to the same
// calls in the same order. Use ctx.Now, saga.SideEffect and ctx.Go instead
// of time.Now, random numbers and go statements, and no native channels,
// mutexes or sleeps. A change that alters the calls of running sagas needs
// ctx.GetVersion; otherwise replay detects the difference and blocks the
// saga instead of corrupting it.
//
// A Context carries a cancellation scope: WithCancel stops waiting for
// work that is no longer needed, and NewDisconnectedContext gives cleanup,
// such as compensation, a context that cancellation does not reach.
//
// A Registry holds the definitions a node runs (package worker); a Client
// starts sagas, waits for them and reads their state and history.
package saga
