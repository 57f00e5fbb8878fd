package saga

import (
	"context"
	"fmt"
	"time"

	"github.com/jetsaga/saga/stream"
)

// MaxHeartbeatDetails bounds the encoded details of one heartbeat: they
// are stored with the activity's attempts, not in the history.
const MaxHeartbeatDetails = 64 << 10

// WithHeartbeatTimeout bounds the time between two heartbeats (see
// Heartbeat) of each attempt of this call. An attempt that stays silent
// longer counts as timed out (its node died, say) and the next attempt
// starts, long before the start-to-close timeout would tell. It runs on a
// durable timer, so it is rounded up to whole seconds.
func WithHeartbeatTimeout(d time.Duration) ActivityOption {
	return func(o *ActivityOptions) { o.HeartbeatTimeout = d }
}

// HeartbeatRecorder takes the heartbeats of a running activity attempt;
// the node installs one in the attempt's context.
type HeartbeatRecorder interface {
	// RecordHeartbeat keeps details as the attempt's latest; it must not
	// block.
	RecordHeartbeat(details stream.Payload)
}

type heartbeatKey struct{}

type heartbeatState struct {
	recorder HeartbeatRecorder
	last     stream.Payload // the details the previous attempts left
}

// WithHeartbeat returns a context for an activity attempt whose
// heartbeats go to r, and whose previous attempts left details last.
func WithHeartbeat(ctx context.Context, r HeartbeatRecorder, last stream.Payload) context.Context {
	return context.WithValue(ctx, heartbeatKey{}, heartbeatState{recorder: r, last: last})
}

// Heartbeat tells the engine that the activity running with ctx is alive,
// and records details (progress, say) for the next attempt should this
// one fail or its node die: see HeartbeatDetails. It does not block: the
// node records the latest details every few seconds (a third of the
// heartbeat timeout, when the activity has one) and then checks whether
// the saga was canceled, in which case ctx is canceled with ErrCanceled as
// its cause and the activity is recorded as canceled once it returns.
// details may be nil. It returns an error only when details cannot be
// recorded: they do not encode, or exceed MaxHeartbeatDetails.
func Heartbeat(ctx context.Context, details any) error {
	hb, ok := ctx.Value(heartbeatKey{}).(heartbeatState)
	if !ok {
		return NewError(KindValidation, "heartbeat: the context is not an activity's")
	}
	var data stream.Payload
	if details != nil {
		var err error
		if data, err = encodeValue(codecFrom(ctx), details); err != nil {
			return Errorf(KindCodec, "heartbeat: encode details: %w", err)
		}
		if len(data) > MaxHeartbeatDetails {
			return NewError(KindValidation, fmt.Sprintf("heartbeat: details of %d bytes, at most %d", len(data), MaxHeartbeatDetails))
		}
	}
	hb.recorder.RecordHeartbeat(data)
	return nil
}

// HeartbeatDetails decodes into out the details the last heartbeat of an
// earlier attempt recorded, so that a long activity can resume where it
// stopped. It reports false when no earlier attempt recorded any.
func HeartbeatDetails(ctx context.Context, out any) (bool, error) {
	hb, ok := ctx.Value(heartbeatKey{}).(heartbeatState)
	if !ok || len(hb.last) == 0 {
		return false, nil
	}
	if err := decodeValue(codecFrom(ctx), hb.last, out); err != nil {
		return false, Errorf(KindCodec, "heartbeat details: decode into %T: %w", out, err)
	}
	return true, nil
}
