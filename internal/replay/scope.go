package replay

import "slices"

// Scope is a cancellation scope of workflow code. Canceling it requests
// the cancellation of the commands issued in it and of its child scopes,
// and wakes the code waiting in it. A scope is workflow state like any
// other: canceled only by workflow code, so replay cancels it at the same
// point. Its methods must be called from workflow code.
type Scope struct {
	// m is the machine of the scope: a query handler may not cancel.
	m        *Machine
	canceled bool
	// detached is set for a disconnected scope and its children: the
	// saga's cancellation does not reach them.
	detached bool
	// children and commands are what a cancellation reaches, in the order
	// they were created so that it reaches them in the same order on every
	// replay.
	children []*Scope
	commands []cancellable
}

// RootScope returns the scope the workflow function starts in.
func (e *Env) RootScope() *Scope { return e.m.root }

// NewScope returns a scope canceled when parent is, or by its own Cancel.
// A scope made under a canceled parent starts canceled.
func (e *Env) NewScope(parent *Scope) *Scope {
	e.checkAlive()
	s := &Scope{m: e.m, canceled: parent.canceled, detached: parent.detached}
	if !s.canceled {
		parent.children = appendPruned(parent.children, s, func(c *Scope) bool { return c.canceled })
	}
	return s
}

// NewDisconnectedScope returns a scope that no parent's cancellation
// reaches: for cleanup (compensation) that must run after the rest of the
// workflow was canceled.
func (e *Env) NewDisconnectedScope() *Scope {
	e.checkAlive()
	return &Scope{m: e.m, detached: true}
}

// Cancel cancels the scope and, in creation order, its commands and its
// child scopes. Canceling a canceled scope does nothing.
func (s *Scope) Cancel() {
	if s.canceled {
		return
	}
	if s.m != nil && s.m.inQuery {
		panic(errQueryChangesState) // a query handler may only read
	}
	s.canceled = true
	for _, c := range s.commands {
		c.requestCancel()
	}
	for _, child := range s.children {
		child.Cancel()
	}
	s.commands, s.children = nil, nil // nothing is left to reach
}

// Canceled reports whether the scope, or one of its parents, was canceled.
func (s *Scope) Canceled() bool { return s.canceled }

// add makes c reachable by the scope's cancellation.
func (s *Scope) add(c cancellable) {
	s.commands = appendPruned(s.commands, c, func(c cancellable) bool { return c.lifecycle().state == stateDone })
}

// appendPruned appends v, first dropping the elements a cancellation no
// longer needs to reach whenever the slice is full, so that a long-lived
// scope holds what is still open rather than all it ever held.
func appendPruned[T any](s []T, v T, finished func(T) bool) []T {
	if len(s) == cap(s) {
		s = slices.DeleteFunc(s, finished)
	}
	return append(s, v)
}
