// Package api owns the wire types of the engine's request/reply API (the
// NATS micro service every node runs): the JSON bodies of requests and
// replies, the error codes of error replies, and Call, which sends a
// request and reads its reply (shared by the command line and the web
// UI). Clients and the command line import it without importing the
// node. docs/api.md describes the subjects and the protocol.
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

// SagaRequest is the body of describe and wake, and the reply of wake
// and cancel.
type SagaRequest struct {
	ID string `json:"id"`
}

// HistoryRequest is the body of history.
type HistoryRequest struct {
	ID string `json:"id"`
	// LatestRun asks for the events of the saga's latest run alone, from
	// its WorkflowExecutionStarted; without it, every run's (the whole
	// history).
	LatestRun bool `json:"latest_run,omitempty"`
}

// CancelRequest is the body of cancel.
type CancelRequest struct {
	ID string `json:"id"`
	// Reason is recorded with the request; at most 4 KiB.
	Reason string `json:"reason,omitempty"`
}

// SignalRequest is the body of signal.
type SignalRequest struct {
	ID string `json:"id"`
	// Name is the signal's name, the channel the workflow receives it on.
	Name string `json:"name"`
	// Input is the signal's value as JSON; absent: no value.
	Input json.RawMessage `json:"input,omitempty"`
	// MsgID, when set, de-duplicates the signal: the inbox stream drops a
	// second signal with the same id within its duplicate window, so a
	// sender may retry safely.
	MsgID string `json:"msg_id,omitempty"`
}

// SignalResponse answers a signal once the inbox stream stored it.
type SignalResponse struct {
	ID string `json:"id"`
	// InboxSeq is the signal's sequence in the inbox stream; the saga
	// records its signals in that order.
	InboxSeq uint64 `json:"inbox_seq"`
}

// QueryRequest is the body of query and of query.<workflow type>.
type QueryRequest struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Input is the query handler's argument as JSON; absent: its zero
	// value.
	Input json.RawMessage `json:"input,omitempty"`
}

// QueryResponse answers a query with the handler's result as JSON.
type QueryResponse struct {
	Result json.RawMessage `json:"result"`
}

// Error codes of error replies, in the Nats-Service-Error-Code header.
const (
	CodeBadRequest  = "400"
	CodeNotFound    = "404"
	CodeConflict    = "409"
	CodeInternal    = "500"
	CodeUnavailable = "503"
)

// ListRequest is the body of <prefix>.api.list, served by the nodes that
// have the Postgres projection. Zero fields select everything.
type ListRequest struct {
	Status string `json:"status,omitempty"`
	Type   string `json:"type,omitempty"`
	// Since is a Go duration: sagas started within it.
	Since        string `json:"since,omitempty"`
	Compensation string `json:"compensation,omitempty"`
	// WaitingOnTimer keeps running sagas with an open timer.
	WaitingOnTimer bool `json:"waiting_on_timer,omitempty"`
	// Limit is the page size (default 100, at most 1,000); After the
	// cursor of the previous page.
	Limit int    `json:"limit,omitempty"`
	After string `json:"after,omitempty"`
}

// ListResponse is a page of sagas, newest first; Next is the cursor of
// the next page, empty after the last.
type ListResponse struct {
	Sagas json.RawMessage `json:"sagas"`
	Next  string          `json:"next,omitempty"`
}

// NodeWork is what a node reports of its work in flight, as the custom
// data of its API service's endpoints in the NATS micro discovery
// ($SRV.STATS): the web UI's nodes page shows it.
type NodeWork struct {
	// InFlight counts the messages the node is handling now (commits,
	// tasks, timers, inbox messages) and the eager activity runs.
	InFlight int64 `json:"in_flight"`
	// ActivitiesRunning counts the activity attempts running on the node,
	// from tasks and eagerly.
	ActivitiesRunning int `json:"activities_running"`
	// CachedSagas and LiveMachines: sagas in the node's cache, and those
	// whose workflow code is live (the others are parked, with no
	// goroutine).
	CachedSagas  int `json:"cached_sagas"`
	LiveMachines int `json:"live_machines"`
}
