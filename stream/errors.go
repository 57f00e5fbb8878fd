package stream

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors of the history log. Match them with errors.Is.
var (
	// ErrConcurrency means another writer appended to the saga first: the
	// expected last sequence did not match. Re-read and decide again.
	ErrConcurrency = errors.New("concurrent append: the saga's history moved on")
	// ErrNotFound means the saga has no history.
	ErrNotFound = errors.New("saga not found")
	// ErrInvalidID means a saga id, workflow type or activity type is not
	// a safe subject token.
	ErrInvalidID = errors.New("invalid identifier")
	// ErrCodec means bytes that do not decode as what they claim to be.
	ErrCodec = errors.New("undecodable message")
	// ErrUnsupported means a well-formed message this node cannot handle:
	// a newer envelope format or event type, or a size above this node's
	// limit. Another node (a newer one, or one with larger limits) may.
	ErrUnsupported = errors.New("message not supported by this node")
	// ErrTooLarge means a message exceeds the configured maximum size.
	ErrTooLarge = errors.New("message too large")
	// ErrNoStream means no stream captures the subject: the streams were
	// not created (no node has started with this prefix) or were deleted.
	ErrNoStream = errors.New("no stream for subject (has a node set up the streams for this prefix?)")
	// ErrUnavailable means the stream did not answer in time: its leader
	// is being elected or its server is restarting. Retrying can succeed.
	ErrUnavailable = errors.New("stream unavailable (no server answered in time)")
	// ErrTornRead means a batched read lost messages on the way (a slow
	// consumer drop on the reply subscription): the reply chain has a gap.
	// Reading again can succeed.
	ErrTornRead = errors.New("read lost messages in transit")
)

// Transient reports whether err may pass if the operation is retried: the
// server or a stream leader did not answer, a read was torn, a request
// timed out, or another writer got there first. Everything else (a value
// too large, a malformed message, an invalid id, a missing stream) fails
// the same way every time. This is the one classification the engine's
// retries ask.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, ErrTooLarge), errors.Is(err, ErrCodec), errors.Is(err, ErrInvalidID), errors.Is(err, ErrNotFound),
		errors.Is(err, ErrUnsupported), errors.Is(err, ErrNoStream), errors.Is(err, context.Canceled),
		errors.Is(err, nats.ErrConnectionClosed):
		return false
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrTornRead), errors.Is(err, ErrConcurrency),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrDisconnected):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 5xx: the server could not serve the request now (no leader,
		// JetStream starting); 4xx: the request itself is wrong.
		return apiErr.Code >= 500
	}
	// Errors of unknown origin (a network error, say) are retried: the
	// callers bound their retries.
	return true
}

// JetStream API error codes the log reacts to.
const (
	codeWrongLastSequence         jetstream.ErrorCode = 10071
	codeWrongLastSequenceInFlight jetstream.ErrorCode = 10164
	codeMessageTooLarge           jetstream.ErrorCode = 10054
	codeNoMessageFound            jetstream.ErrorCode = 10037
	codeStreamNotFound            jetstream.ErrorCode = 10059
	codeDuplicateInProcess        jetstream.ErrorCode = 10158
)

// jsAPIPrefix is where the JetStream API answers: the default, as the
// store's jetstream.New(nc) uses (no domain).
const jsAPIPrefix = "$JS.API."

// apiErrorCode is the JetStream error code in err's chain, 0 if none.
func apiErrorCode(err error) jetstream.ErrorCode {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode
	}
	return 0
}

// MapError turns JetStream server errors into the log's errors (for
// example a wrong-last-sequence reply into ErrConcurrency); other packages
// that talk to JetStream directly use it too.
func MapError(err error) error { return mapError(err) }

// mapError is the one place that turns JetStream server errors into the
// log's errors. The original error stays in the chain.
func mapError(err error) error {
	if err == nil {
		return nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeWrongLastSequence, codeWrongLastSequenceInFlight:
			return fmt.Errorf("%w: %w", ErrConcurrency, err)
		case codeMessageTooLarge:
			return fmt.Errorf("%w: %w", ErrTooLarge, err)
		case codeNoMessageFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		case codeStreamNotFound:
			return fmt.Errorf("%w: %w", ErrNoStream, err)
		case codeDuplicateInProcess:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w: %w", ErrNoStream, err)
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	return err
}
