package stream

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server answers map to the log's errors in one place; a request nobody
// answered is a retryable unavailability, not a missing stream.
func TestMapError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
	}{
		{&jetstream.APIError{ErrorCode: 10071}, ErrConcurrency},
		{&jetstream.APIError{ErrorCode: 10164}, ErrConcurrency},
		{&jetstream.APIError{ErrorCode: 10054}, ErrTooLarge},
		{&jetstream.APIError{ErrorCode: 10059}, ErrNoStream},
		{&jetstream.APIError{ErrorCode: 10158}, ErrUnavailable},
		{jetstream.ErrStreamNotFound, ErrNoStream},
		{fmt.Errorf("publish: %w", jetstream.ErrNoStreamResponse), ErrUnavailable},
		{nats.ErrNoResponders, ErrUnavailable},
		{nats.ErrMaxPayload, ErrTooLarge},
	} {
		got := mapError(c.err)
		if !errors.Is(got, c.want) || !errors.Is(got, c.err) {
			t.Errorf("mapError(%v) = %v, want %v wrapping the original", c.err, got, c.want)
		}
	}
}
