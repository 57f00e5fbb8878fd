package saga_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/stream"
)

func TestContinueAsNewFromTheWorkflowFunction(t *testing.T) {
	// Wrapped on its way out, the request still ends the run; the next
	// run's input is the one given, checked against the input type.
	var asked error
	r := newLocalRun(t, saga.NewWorkflow("again", 1, func(ctx saga.Context, in string) (string, error) {
		if in == "" {
			asked = saga.ContinueAsNew(ctx, "next")
			return "", fmt.Errorf("round done: %w", asked)
		}
		return in, nil
	}))
	start := stream.Event{ID: 0, SagaID: "s", Type: stream.WorkflowExecutionStarted, Attrs: &stream.WorkflowExecutionStartedAttrs{Input: mustPayload(t, "")}}
	if err := r.m.Feed(t.Context(), start); err != nil {
		t.Fatal(err)
	}
	props := r.m.Propose(1, start.Time)
	if len(props) != 1 || props[0].Type != stream.WorkflowExecutionContinuedAsNew {
		t.Fatalf("decision %v", props)
	}
	// What the next run starts with, while the decision is proposed.
	next := r.m.NextRun()
	var in string
	if next == nil || stream.Unmarshal(next.Input, &in) != nil || in != "next" {
		t.Fatalf("next run %+v", next)
	}
	if err := r.m.Feed(t.Context(), props...); err != nil || r.m.NextRun() != nil {
		t.Fatalf("recorded: %v, next run still proposed: %v", err, r.m.NextRun() != nil)
	}
	r.history = append([]stream.Event{start}, props...)
	r.replays()

	// An input the workflow could not take ends the saga failed, saying so.
	r = newLocalRun(t, saga.NewWorkflow("wrong", 1, func(ctx saga.Context, _ string) (string, error) {
		return "", saga.ContinueAsNew(ctx, map[string]int{"not": 1})
	}))
	props = r.start("")
	f, ok := props[0].Attrs.(*stream.WorkflowExecutionFailedAttrs)
	if !ok || f.Failure.Kind != string(saga.KindValidation) || !strings.Contains(f.Failure.Message, "continue as new: the input does not fit string") {
		t.Fatalf("decision %v", props)
	}
	if !errors.Is(asked, saga.ErrContinueAsNew) {
		t.Fatalf("error %v does not match ErrContinueAsNew", asked)
	}
}
