// Package api owns the wire types of the engine's request/reply API (the
// NATS micro service every node runs): the JSON bodies of requests and
// replies, and the error codes of error replies. Clients and the command
// line import it without importing the node. docs/api.md describes the
// subjects and the protocol.
package api

import "encoding/json"

// StartRequest is the body of <prefix>.api.start.<workflow type>.
type StartRequest struct {
	// ID is the saga id; empty: a random one.
	ID string `json:"id,omitempty"`
	// Input is the workflow input as JSON; it must fit the workflow's
	// input type (unknown fields are refused).
	Input json.RawMessage `json:"input,omitempty"`
	// IfExists is "fail" (the default) or "use_existing".
	IfExists string `json:"if_exists,omitempty"`
	// RequestID makes a retried start of the same id succeed when the
	// first attempt created the saga.
	RequestID string `json:"request_id,omitempty"`
	// RunTimeout bounds the saga's run, as a Go duration ("30s", "2h");
	// past it the saga is canceled, compensates and ends timed_out.
	// Empty: no bound.
	RunTimeout string `json:"run_timeout,omitempty"`
}

// StartResponse answers a start.
type StartResponse struct {
	ID       string `json:"id"`
	Existing bool   `json:"existing,omitempty"`
}

// SagaRequest is the body of describe, history and wake, and the reply
// of wake and cancel.
type SagaRequest struct {
	ID string `json:"id"`
}

// CancelRequest is the body of cancel.
type CancelRequest struct {
	ID string `json:"id"`
	// Reason is recorded with the request; at most 4 KiB.
	Reason string `json:"reason,omitempty"`
}

// Error codes of error replies, in the Nats-Service-Error-Code header.
const (
	CodeBadRequest  = "400"
	CodeNotFound    = "404"
	CodeConflict    = "409"
	CodeInternal    = "500"
	CodeUnavailable = "503"
)
