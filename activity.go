package saga

import (
	"context"
	"time"

	"github.com/jetsaga/saga/stream"
)

// Defaults of activity options.
const (
	// DefaultActivityTimeout bounds one attempt of an activity (the
	// manual's default_activity_timeout).
	DefaultActivityTimeout = 300 * time.Second
	// DefaultMaximumAttempts bounds the attempts of an activity, the first
	// included, so that a saga whose activity keeps failing still ends.
	DefaultMaximumAttempts = 5
	// DefaultInitialInterval is the wait before the first retry.
	DefaultInitialInterval = time.Second
	// DefaultBackoffCoefficient multiplies the wait after each retry.
	DefaultBackoffCoefficient = 2.0
	// DefaultMaximumInterval caps the wait between retries.
	DefaultMaximumInterval = 100 * time.Second
)

// ActivityOptions are the options recorded with a scheduled activity.
// Zero fields take the defaults above when the activity is scheduled.
type ActivityOptions = stream.ActivityOptions

// RetryPolicy says how a failed activity is retried: after
// InitialInterval, then each wait BackoffCoefficient times the last, at
// most MaximumInterval, for at most MaximumAttempts attempts in all.
// Errors marked NonRetryable (see Permanent) and errors whose kind is in
// NonRetryableErrorKinds are not retried.
type RetryPolicy = stream.RetryPolicy

// ActivityOption adjusts the options of one ExecuteActivity call.
type ActivityOption func(*ActivityOptions)

// WithStartToCloseTimeout bounds each attempt of this call.
func WithStartToCloseTimeout(d time.Duration) ActivityOption {
	return func(o *ActivityOptions) { o.StartToCloseTimeout = d }
}

// WithScheduleToStartTimeout bounds the wait from scheduling the activity
// to the start of its first attempt (no node runs the type, a backlog, a
// lost task): past it, the call fails with an error of kind Timeout. It
// runs on a durable timer, so it is rounded up to whole seconds. By
// default there is no bound.
func WithScheduleToStartTimeout(d time.Duration) ActivityOption {
	return func(o *ActivityOptions) { o.ScheduleToStartTimeout = d }
}

// WithRetryPolicy sets the retry policy of this call.
func WithRetryPolicy(p RetryPolicy) ActivityOption {
	return func(o *ActivityOptions) { o.RetryPolicy = p }
}

// resolveActivityOptions fills unset options from the node's defaults, then
// from the engine's, so that what is recorded is complete.
func resolveActivityOptions(o, node ActivityOptions) ActivityOptions {
	o.StartToCloseTimeout = firstPositive(o.StartToCloseTimeout, node.StartToCloseTimeout, DefaultActivityTimeout)
	// A heartbeat timeout runs on a durable timer, whose unit is the
	// second; a negative one is none.
	o.HeartbeatTimeout = max(o.HeartbeatTimeout, 0)
	if r := o.HeartbeatTimeout % time.Second; r != 0 {
		o.HeartbeatTimeout += time.Second - r
	}
	p, n := &o.RetryPolicy, node.RetryPolicy
	p.InitialInterval = firstPositive(p.InitialInterval, n.InitialInterval, DefaultInitialInterval)
	p.BackoffCoefficient = firstPositive(p.BackoffCoefficient, n.BackoffCoefficient, DefaultBackoffCoefficient)
	p.MaximumInterval = firstPositive(p.MaximumInterval, n.MaximumInterval, DefaultMaximumInterval)
	p.MaximumAttempts = firstPositive(p.MaximumAttempts, n.MaximumAttempts, DefaultMaximumAttempts)
	if p.NonRetryableErrorKinds == nil {
		p.NonRetryableErrorKinds = n.NonRetryableErrorKinds
	}
	return o
}

func firstPositive[T int | float64 | time.Duration](vs ...T) T {
	for _, v := range vs {
		if v > 0 {
			return v
		}
	}
	return 0
}

// Activity is an activity definition: a unit of side-effecting work with a
// type id and typed input and output. Activities run at least once, so they
// must be idempotent.
type Activity[In, Out any] struct {
	name    string
	run     func(context.Context, In) (Out, error)
	options ActivityOptions
}

// NewActivity defines an activity. name is its type id; opts set its
// default options. run may be nil to declare an activity that workflows
// call but another program implements (see Implement).
func NewActivity[In, Out any](name string, run func(context.Context, In) (Out, error), opts ...ActivityOption) *Activity[In, Out] {
	a := &Activity[In, Out]{name: name, run: run}
	for _, opt := range opts {
		opt(&a.options)
	}
	return a
}

// Name returns the activity type id.
func (a *Activity[In, Out]) Name() string { return a.name }

// Implement returns a copy of the activity with run as its implementation,
// ready to register. Workflows keep calling the declared activity.
func (a *Activity[In, Out]) Implement(run func(context.Context, In) (Out, error)) *Activity[In, Out] {
	c := *a
	c.run = run
	return &c
}

func (a *Activity[In, Out]) register(r *Registry) error {
	if err := stream.ValidateID("activity type", a.name); err != nil {
		return wrapStreamError("register activity", err)
	}
	if a.run == nil {
		return NewError(KindConfiguration, "activity "+a.name+" has no run function")
	}
	return r.addActivity(&RegisteredActivity{Name: a.name, Run: a.erased})
}

func (a *Activity[In, Out]) erased(ctx context.Context, input stream.Payload) (stream.Payload, error) {
	var in In
	if len(input) > 0 {
		if err := decodeValue(codecFrom(ctx), input, &in); err != nil {
			return nil, Permanent(Errorf(KindCodec, "activity %s: decode input: %w", a.name, err))
		}
	}
	out, err := a.run(ctx, in)
	if err != nil {
		return nil, err
	}
	b, err := encodeValue(codecFrom(ctx), out)
	if err != nil {
		return nil, Permanent(Errorf(KindCodec, "activity %s: encode result: %w", a.name, err))
	}
	return b, nil
}

// ActivityInfo describes the activity attempt a context belongs to.
type ActivityInfo struct {
	SagaID           string
	ActivityType     string
	ScheduledEventID uint64
	// Attempt counts from 1.
	Attempt int
}

type activityInfoKey struct{}

// WithActivityInfo returns a context carrying info; the worker calls it
// before running an activity.
func WithActivityInfo(ctx context.Context, info ActivityInfo) context.Context {
	return context.WithValue(ctx, activityInfoKey{}, info)
}

// GetActivityInfo returns the info of the activity running with ctx.
func GetActivityInfo(ctx context.Context) (ActivityInfo, bool) {
	info, ok := ctx.Value(activityInfoKey{}).(ActivityInfo)
	return info, ok
}
