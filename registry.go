package saga

import (
	"context"
	"maps"
	"slices"
	"sync"

	"github.com/jetsaga/saga/internal/replay"
	"github.com/jetsaga/saga/stream"
)

// Definition is a workflow or activity definition that can be registered.
type Definition interface {
	register(*Registry) error
}

var (
	_ Definition = (*Workflow[int, int])(nil)
	_ Definition = (*Activity[int, int])(nil)
)

// RegisteredWorkflow is a workflow definition with its types erased, as a
// node runs it.
type RegisteredWorkflow struct {
	Name    string
	Version int
	Func    replay.WorkflowFunc
	// InputFromJSON translates a JSON input and checks that it decodes into
	// the workflow's input type.
	InputFromJSON func([]byte) (stream.Payload, error)
	// CheckInput checks that an encoded input decodes into the workflow's
	// input type (a start published in msgpack).
	CheckInput func(stream.Payload) error
}

// RegisteredActivity is an activity definition with its types erased.
type RegisteredActivity struct {
	Name string
	Run  func(context.Context, stream.Payload) (stream.Payload, error)
}

// Registry holds the workflow and activity definitions a node runs. It is
// safe for concurrent use.
type Registry struct {
	mu         sync.RWMutex
	workflows  map[string]*RegisteredWorkflow
	activities map[string]*RegisteredActivity
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{workflows: map[string]*RegisteredWorkflow{}, activities: map[string]*RegisteredActivity{}}
}

// Register adds definitions. A name registered twice is an error.
func (r *Registry) Register(defs ...Definition) error {
	for _, d := range defs {
		if err := d.register(r); err != nil {
			return err
		}
	}
	return nil
}

// MustRegister is Register for program set-up: it panics on error.
func (r *Registry) MustRegister(defs ...Definition) {
	if err := r.Register(defs...); err != nil {
		panic(err)
	}
}

func (r *Registry) addWorkflow(w *RegisteredWorkflow) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.workflows[w.Name]; dup {
		return NewError(KindConfiguration, "workflow "+w.Name+" is registered twice")
	}
	r.workflows[w.Name] = w
	return nil
}

func (r *Registry) addActivity(a *RegisteredActivity) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.activities[a.Name]; dup {
		return NewError(KindConfiguration, "activity "+a.Name+" is registered twice")
	}
	r.activities[a.Name] = a
	return nil
}

// Workflow returns a registered workflow.
func (r *Registry) Workflow(name string) (*RegisteredWorkflow, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	w, ok := r.workflows[name]
	return w, ok
}

// Activity returns a registered activity.
func (r *Registry) Activity(name string) (*RegisteredActivity, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.activities[name]
	return a, ok
}

// WorkflowNames lists the registered workflow types, sorted.
func (r *Registry) WorkflowNames() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.workflows))
}

// ActivityNames lists the registered activity types, sorted.
func (r *Registry) ActivityNames() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Sorted(maps.Keys(r.activities))
}
