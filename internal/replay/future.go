package replay

import "github.com/jetsaga/saga/stream"

// Future is the pending result of an activity.
type Future struct {
	m       *Machine
	ready   bool // the result is in
	value   stream.Payload
	failure *stream.Failure
	// canceled is set when the future's scope was canceled before its
	// result arrived: it then reports the cancellation for good.
	canceled bool
}

func (f *Future) resolve(value stream.Payload, failure *stream.Failure) {
	if f.ready || f.canceled {
		return
	}
	f.ready, f.value, f.failure = true, value, failure
}

func (f *Future) cancel() {
	if !f.ready {
		f.canceled = true
	}
}

// Ready reports whether Get would return without blocking, whatever
// scope it waits in: the result is in, or the future was canceled.
func (f *Future) Ready() bool { return f.ready || f.canceled }

// Get blocks the calling coroutine until the result is in, and returns
// it. It returns canceled instead when the future's own scope or the
// waiter's scope s is canceled before the result arrives; in the waiter's
// case, the future can still be waited for in another scope.
func (f *Future) Get(s *Scope) (value stream.Payload, failure *stream.Failure, canceled bool) {
	f.m.await(func() bool { return f.Ready() || s.Canceled() }, true)
	if !f.ready {
		return nil, nil, true
	}
	return f.value, f.failure, false
}
