package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/stream"
)

// The request/reply API, a NATS micro service named "<prefix>-api": any NATS
// client can start, describe, read, wake, cancel, signal and query sagas
// with JSON requests. A node serves <prefix>.api.start.<type> and
// <prefix>.api.query.<type> for each workflow type it registers, so a
// start reaches a node that can check its input, a query one that can
// replay the saga, and no responders means no node runs the type. See
// docs/api.md for the wire format.

// apiTimeout bounds the work behind one request.
const apiTimeout = 30 * time.Second

func (n *Node) startAPI() error {
	cfg := n.opts.Stream
	workflows, activities := n.reg.WorkflowNames(), n.reg.ActivityNames()
	if n.opts.ProjectorOnly {
		workflows, activities = nil, nil
	}
	svc, err := micro.AddService(n.nc, micro.Config{
		Name:        cfg.Prefix + "-api",
		Version:     "1.0.0",
		Description: "jetsaga: start, describe, history, wake, cancel, signal and query sagas",
		// What the node runs, for the discovery ($SRV.INFO) that the web
		// UI's nodes page reads.
		Metadata: map[string]string{
			"node":       n.opts.NodeName,
			"workflows":  strings.Join(workflows, ","),
			"activities": strings.Join(activities, ","),
		},
		// And what it is doing now ($SRV.STATS).
		StatsHandler: func(*micro.Endpoint) any { return n.work() },
	})
	if err != nil {
		return &saga.Error{Kind: saga.KindConfiguration, Message: "start API service", Cause: err}
	}
	endpoints := map[string]func(context.Context, *apiRequest){
		"describe": sagaEndpoint(n.apiDescribe),
		"history":  n.apiHistory,
		"wake":     sagaEndpoint(n.apiWake),
		"cancel":   n.apiCancel,
		"signal":   n.apiSignal,
		"query":    func(ctx context.Context, req *apiRequest) { n.apiQuery(ctx, req, true) },
	}
	if n.opts.ProjectorOnly {
		endpoints = map[string]func(context.Context, *apiRequest){}
	}
	if lister, ok := n.opts.Projection.(Lister); ok {
		// Served only by nodes that have the projection: no responders
		// means none runs.
		endpoints["list"] = func(ctx context.Context, req *apiRequest) { n.apiList(ctx, req, lister) }
	}
	subjects := map[string]string{}
	for verb := range endpoints {
		subjects[verb] = cfg.APISubject(verb)
	}
	for _, wf := range n.reg.WorkflowNames() {
		if n.opts.ProjectorOnly {
			break
		}
		name := "start-" + wf
		endpoints[name] = func(ctx context.Context, req *apiRequest) { n.apiStart(ctx, req, wf) }
		subjects[name] = cfg.StartSubject(wf)
		// Queries about sagas of this type that reached a node without
		// it come here (see apiQuery).
		name = "query-" + wf
		endpoints[name] = func(ctx context.Context, req *apiRequest) { n.apiQuery(ctx, req, false) }
		subjects[name] = typedQuerySubject(cfg, wf)
	}
	for name, h := range endpoints {
		if err := svc.AddEndpoint(name, n.async(h), micro.WithEndpointSubject(subjects[name])); err != nil {
			_ = svc.Stop()
			return &saga.Error{Kind: saga.KindConfiguration, Message: "add API endpoint " + name, Cause: err}
		}
	}
	n.api = svc
	return nil
}

// async runs each request in its own goroutine, tracked like a message
// handler so that Stop waits for it. The goroutine gets an apiRequest, not
// micro's Request: micro reads the request's state once the handler
// returns, so answering it from another goroutine is a data race.
func (n *Node) async(h func(context.Context, *apiRequest)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		if !n.track() {
			_ = req.Error(api.CodeUnavailable, "node stopping", nil)
			return
		}
		detached := &apiRequest{nc: n.nc, reply: req.Reply(), data: req.Data()}
		go func() {
			defer n.untrack()
			ctx, cancel := context.WithTimeout(n.runCtx, apiTimeout)
			defer cancel()
			h(ctx, detached)
		}()
	})
}

// apiRequest is a request answered outside micro's handler, with the same
// wire format as micro's responses.
type apiRequest struct {
	nc    *nats.Conn
	reply string
	data  []byte
}

func (r *apiRequest) respondJSON(v any) {
	body, err := json.Marshal(v)
	if err != nil {
		r.error(api.CodeInternal, "encode response: "+err.Error(), nil)
		return
	}
	r.respond(&nats.Msg{Data: body})
}

func (r *apiRequest) error(code, description string, body []byte) {
	r.respond(&nats.Msg{
		Header: nats.Header{micro.ErrorHeader: {description}, micro.ErrorCodeHeader: {code}},
		Data:   body,
	})
}

// respond sends the answer; a request without a reply subject (a plain
// publish) gets none, as with micro.
func (r *apiRequest) respond(m *nats.Msg) {
	if r.reply == "" {
		return
	}
	m.Subject = r.reply
	_ = r.nc.PublishMsg(m)
}

func decodeRequest(req *apiRequest, v any) error {
	dec := json.NewDecoder(bytes.NewReader(req.data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &saga.Error{Kind: saga.KindValidation, Message: "request is not the expected JSON", Cause: err}
	}
	return nil
}

func (n *Node) apiStart(ctx context.Context, req *apiRequest, workflowType string) {
	var r api.StartRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	res, err := n.StartJSON(ctx, workflowType, r)
	if err != nil {
		respondError(req, err)
		return
	}
	req.respondJSON(api.StartResponse{ID: res.ID, Existing: res.Existing})
}

// StartJSON starts a saga from a JSON input, checking first that the
// workflow type is registered on this node and that the input decodes into
// its input type. The API and the CLI start sagas this way.
func (n *Node) StartJSON(ctx context.Context, workflowType string, r api.StartRequest) (saga.StartResult, error) {
	if err := stream.ValidateID("workflow type", workflowType); err != nil {
		return saga.StartResult{}, &saga.Error{Kind: saga.KindValidation, Message: "start", Cause: err}
	}
	wf, ok := n.reg.Workflow(workflowType)
	if !ok {
		return saga.StartResult{}, (&saga.Error{Kind: saga.KindValidation, Message: "start " + workflowType, Cause: saga.ErrUnknownWorkflowType}).
			WithContext("registered", strings.Join(n.reg.WorkflowNames(), ","))
	}
	opts := saga.StartOptions{ID: r.ID, RequestID: r.RequestID}
	if r.RunTimeout != "" {
		d, err := time.ParseDuration(r.RunTimeout)
		if err != nil || d < 0 {
			return saga.StartResult{}, saga.NewError(saga.KindValidation, `run_timeout must be a non-negative duration such as "30s", got "`+r.RunTimeout+`"`)
		}
		opts.RunTimeout = d
	}
	switch r.IfExists {
	case "", "fail":
	case "use_existing":
		opts.IfExists = saga.IfExistsUseExisting
	default:
		return saga.StartResult{}, saga.NewError(saga.KindValidation, `if_exists must be "fail" or "use_existing", got "`+r.IfExists+`"`)
	}
	input := []byte(r.Input)
	if len(input) == 0 {
		input = []byte("null")
	}
	payload, err := wf.InputFromJSON(input)
	if err != nil {
		return saga.StartResult{}, &saga.Error{Kind: saga.KindValidation, Message: "start " + workflowType + ": input", Cause: err}
	}
	return n.client.StartPayload(ctx, wf.Name, wf.Version, payload, opts)
}

// sagaEndpoint serves a request about one saga, {"id": ...}, answering
// with what do returns as JSON.
func sagaEndpoint(do func(ctx context.Context, id string) (any, error)) func(context.Context, *apiRequest) {
	return func(ctx context.Context, req *apiRequest) {
		var r api.SagaRequest
		if err := decodeRequest(req, &r); err != nil {
			respondError(req, err)
			return
		}
		reply, err := do(ctx, r.ID)
		if err != nil {
			respondError(req, err)
			return
		}
		req.respondJSON(reply)
	}
}

func (n *Node) apiDescribe(ctx context.Context, id string) (any, error) {
	return n.client.Describe(ctx, id)
}

// apiHistory answers with the saga's events: every run's, or the latest
// run's when the request asks.
func (n *Node) apiHistory(ctx context.Context, req *apiRequest) {
	var r api.HistoryRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	history := n.client.History
	if r.LatestRun {
		history = n.client.RunHistory
	}
	events, err := history(ctx, r.ID)
	if err != nil {
		respondError(req, err)
		return
	}
	req.respondJSON(events)
}

func (n *Node) apiWake(ctx context.Context, id string) (any, error) {
	return api.SagaRequest{ID: id}, n.Wake(ctx, id)
}

// apiCancel records a request to cancel a saga, in the name of this node.
func (n *Node) apiCancel(ctx context.Context, req *apiRequest) {
	var r api.CancelRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	if err := n.client.RequestCancel(ctx, r.ID, r.Reason, n.opts.NodeName); err != nil {
		respondError(req, err)
		return
	}
	req.respondJSON(api.SagaRequest{ID: r.ID})
}

// apiSignal checks that the saga exists and has not ended, then puts the
// signal into the inbox stream, and answers with its inbox sequence.
func (n *Node) apiSignal(ctx context.Context, req *apiRequest) {
	var r api.SignalRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	input, err := jsonPayload("signal "+r.Name+": input", r.Input)
	if err != nil {
		respondError(req, err)
		return
	}
	seq, err := n.Signal(ctx, r.ID, r.Name, input, r.MsgID)
	if err != nil {
		if e := (*saga.Error)(nil); errors.Is(err, saga.ErrAlreadyEnded) && errors.As(err, &e) {
			// Name how it ended, so that a client can say so without
			// asking again. The status of an ended saga does not change.
			if d, derr := n.client.Describe(ctx, r.ID); derr == nil {
				e.WithContext("status", string(d.Status))
			}
		}
		respondError(req, err)
		return
	}
	req.respondJSON(api.SignalResponse{ID: r.ID, InboxSeq: seq})
}

// jsonPayload converts a JSON value of a request into a payload; an absent
// or null value is no value.
func jsonPayload(what string, doc json.RawMessage) (stream.Payload, error) {
	if t := bytes.TrimSpace(doc); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	p, err := stream.PayloadFromJSON(doc)
	if err != nil {
		return nil, &saga.Error{Kind: saga.KindValidation, Message: what, Cause: err}
	}
	return p, nil
}

// typedQuerySubject is the subject of the queries about sagas of one
// workflow type, served only by the nodes that register the type.
func typedQuerySubject(cfg stream.Config, workflowType string) string {
	return cfg.APISubject("query") + "." + workflowType
}

// apiQuery answers a query from the saga's current state. Only a node that
// registers the saga's workflow type can replay it: any other node relays
// the request (when forward is set, as on <prefix>.api.query) to
// <prefix>.api.query.<type>, which only such nodes serve, and relays the
// answer back. The relay is a request of its own rather than a forward
// with the caller's reply subject, so that "no node runs the type" comes
// back as an answer (503) instead of the caller's timeout.
func (n *Node) apiQuery(ctx context.Context, req *apiRequest, forward bool) {
	var r api.QueryRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	input, err := jsonPayload("query "+r.Name+": input", r.Input)
	if err != nil {
		respondError(req, err)
		return
	}
	workflowType, result, err := n.Query(ctx, r.ID, r.Name, input)
	switch {
	case errors.Is(err, ErrWorkflowNotHere) && forward:
		n.relayQuery(ctx, req, workflowType)
		return
	case errors.Is(err, ErrWorkflowNotHere):
		// Asked on another type's subject: relaying again could go round
		// in circles, and the caller asked the wrong subject.
		respondError(req, (&saga.Error{Kind: saga.KindValidation,
			Message: fmt.Sprintf("query %s: the saga is of workflow type %s; ask %s", r.ID, workflowType, n.opts.Stream.APISubject("query")),
			Cause:   err}).WithContext("saga_id", r.ID).WithContext("workflow_type", workflowType))
		return
	case err != nil:
		respondError(req, err)
		return
	}
	doc, err := result.MarshalJSON()
	if err != nil {
		respondError(req, &saga.Error{Kind: saga.KindCodec, Message: "query " + r.Name + " of " + r.ID + ": render the result as JSON", Cause: err})
		return
	}
	req.respondJSON(api.QueryResponse{Result: doc})
}

// relayQuery asks a node that runs workflowType the caller's query and
// passes its answer, headers and body, back to the caller.
func (n *Node) relayQuery(ctx context.Context, req *apiRequest, workflowType string) {
	subject := typedQuerySubject(n.opts.Stream, workflowType)
	reply, err := n.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: req.data})
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		req.error(api.CodeUnavailable, fmt.Sprintf("no node runs workflow type %s (nobody serves %s)", workflowType, subject),
			errorBody(saga.NewError(saga.KindConfiguration, "no node runs workflow type "+workflowType).WithContext("workflow_type", workflowType)))
		return
	case err != nil:
		req.error(api.CodeUnavailable, fmt.Sprintf("relay the query to a node that runs workflow type %s: %v", workflowType, err),
			errorBody((&saga.Error{Kind: saga.KindTimeout, Message: "relay query to " + subject, Cause: err}).WithContext("workflow_type", workflowType)))
		return
	}
	req.respond(&nats.Msg{Header: reply.Header, Data: reply.Data})
}

// errorBody is the structured form of an error, as error replies carry it.
func errorBody(e *saga.Error) []byte {
	body, _ := json.Marshal(e.Structured())
	return body
}

// Lister answers the API's list requests from a projection of the sagas
// (pgarchive.Store is one).
type Lister interface {
	ListSagas(ctx context.Context, r api.ListRequest) (api.ListResponse, error)
}

func (n *Node) apiList(ctx context.Context, req *apiRequest, l Lister) {
	var r api.ListRequest
	if err := decodeRequest(req, &r); err != nil {
		respondError(req, err)
		return
	}
	res, err := l.ListSagas(ctx, r)
	if err != nil {
		respondError(req, err)
		return
	}
	req.respondJSON(res)
}

// respondError answers with an error code, the error's text and its
// structured form as the body.
func respondError(req *apiRequest, err error) {
	var e *saga.Error
	if !errors.As(err, &e) {
		e = &saga.Error{Kind: saga.KindUnknown, Message: err.Error()}
	}
	code := api.CodeInternal
	switch {
	case errors.Is(err, saga.ErrAlreadyStarted), errors.Is(err, saga.ErrAlreadyEnded), errors.Is(err, saga.ErrCancelRequested),
		errors.Is(err, saga.ErrConcurrency):
		code = api.CodeConflict
	case errors.Is(err, saga.ErrNotFound), errors.Is(err, saga.ErrUnknownWorkflowType):
		code = api.CodeNotFound
	case errors.Is(err, saga.KindValidation), errors.Is(err, saga.KindCodec):
		code = api.CodeBadRequest
	}
	body, _ := json.Marshal(e.Structured())
	// The description travels in a header: one line.
	req.error(code, strings.ReplaceAll(err.Error(), "\n", " "), body)
}

// work is what the node reports of its work in flight.
func (n *Node) work() api.NodeWork {
	st := n.Stats()
	return api.NodeWork{InFlight: n.inflight.Load(), ActivitiesRunning: len(n.activitySlots),
		CachedSagas: st.CachedSagas, LiveMachines: st.LiveMachines}
}
