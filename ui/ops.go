package ui

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/jetsaga/saga/api"
	"github.com/jetsaga/saga/stream"
	"github.com/jetsaga/saga/telemetry"
)

// Bounds of the operations pages.
const (
	deadLetterPage = 100
	// discoveryWait is how long the nodes page collects the answers of
	// the nodes to a discovery request: there is no telling how many
	// will answer.
	discoveryWait = 500 * time.Millisecond
)

type deadLettersPage struct {
	page
	Letters []stream.DeadLetter
	Limit   int
	Missing string
}

func (s *Server) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	p := deadLettersPage{page: s.page("Dead letters"), Limit: deadLetterPage}
	dls, err := s.hist.DeadLetters(ctx, deadLetterPage)
	switch {
	case errors.Is(err, stream.ErrNotFound):
		p.Missing = err.Error()
	case err != nil:
		s.fail(w, r, http.StatusBadGateway, err)
		return
	}
	// Newest first: what an operator looks for is what just went wrong.
	slices.Reverse(dls)
	p.Letters = dls
	s.render(w, http.StatusOK, "deadletters.html", p)
}

type lagPage struct {
	page
	Lags []lagRow
}

type lagRow struct {
	telemetry.ConsumerLag
	Lag string
}

func (s *Server) handleLag(w http.ResponseWriter, r *http.Request) {
	js, err := jetstream.New(s.opts.Conn)
	if err != nil {
		s.fail(w, r, http.StatusInternalServerError, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	lags, err := telemetry.EngineLags(ctx, js, s.opts.Stream.Prefix)
	if err != nil {
		s.fail(w, r, http.StatusBadGateway, err)
		return
	}
	p := lagPage{page: s.page("Consumer lag")}
	for _, l := range lags {
		p.Lags = append(p.Lags, lagRow{ConsumerLag: l, Lag: roundDuration(time.Duration(l.LagSeconds * float64(time.Second)))})
	}
	s.render(w, http.StatusOK, "lag.html", p)
}

type nodesPage struct {
	page
	Service string
	Nodes   []nodeRow
	Wait    time.Duration
}

type nodeRow struct {
	Name, ID, Version    string
	Workflows            []string
	Activities           []string
	Started              time.Time
	Requests             int
	Work                 *api.NodeWork
	Endpoints            int
	ProjectionListServed bool
}

func (s *Server) handleNodes(w http.ResponseWriter, r *http.Request) {
	svc := s.opts.Stream.Prefix + "-api"
	infos, err := discover[micro.Info](r.Context(), s.opts.Conn, micro.InfoVerb, svc)
	if err != nil {
		s.fail(w, r, http.StatusBadGateway, err)
		return
	}
	stats, err := discover[micro.Stats](r.Context(), s.opts.Conn, micro.StatsVerb, svc)
	if err != nil {
		s.fail(w, r, http.StatusBadGateway, err)
		return
	}
	byID := map[string]micro.Stats{}
	for _, st := range stats {
		byID[st.ID] = st
	}
	p := nodesPage{page: s.page("Nodes"), Service: svc, Wait: discoveryWait}
	for _, in := range infos {
		n := nodeRow{Name: in.Metadata["node"], ID: in.ID, Version: in.Version, Endpoints: len(in.Endpoints),
			Workflows: split(in.Metadata["workflows"]), Activities: split(in.Metadata["activities"])}
		for _, e := range in.Endpoints {
			if e.Subject == s.opts.Stream.APISubject("list") {
				n.ProjectionListServed = true
			}
		}
		if st, ok := byID[in.ID]; ok {
			n.Started = st.Started
			for _, e := range st.Endpoints {
				n.Requests += e.NumRequests // errors are not counted: see docs/api.md
			}
			// Every endpoint carries the node's work in flight; a node
			// of a version without it reports none.
			if len(st.Endpoints) > 0 && len(st.Endpoints[0].Data) > 0 {
				var work api.NodeWork
				if err := json.Unmarshal(st.Endpoints[0].Data, &work); err == nil {
					n.Work = &work
				}
			}
		}
		p.Nodes = append(p.Nodes, n)
	}
	slices.SortFunc(p.Nodes, func(a, b nodeRow) int { return strings.Compare(a.Name+a.ID, b.Name+b.ID) })
	s.render(w, http.StatusOK, "nodes.html", p)
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// discover asks every instance of a micro service (every node) and
// collects the answers that come within discoveryWait.
func discover[T any](ctx context.Context, nc *nats.Conn, verb micro.Verb, service string) ([]T, error) {
	subject, err := micro.ControlSubject(verb, service, "")
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, discoveryWait)
	defer cancel()
	var out []T
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return out, nil // the wait is over: these are the answers
			}
			return out, err
		}
		var v T
		if json.Unmarshal(msg.Data, &v) == nil {
			out = append(out, v)
		}
	}
}
