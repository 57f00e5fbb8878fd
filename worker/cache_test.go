package worker

import (
	"testing"

	"github.com/jetsaga/saga/stream"
)

// The cache is bounded by the bytes its sagas hold as well as by their
// number: one long saga must not take a node's memory because few sagas
// are cached.
func TestCacheIsBoundedByBytes(t *testing.T) {
	c := newSagaCache(100, 10_000)
	big := func(id string) {
		e := c.acquire(id)
		e.view.addEvents([]stream.Event{{Type: stream.ActivityTaskScheduled, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "a", Input: make(stream.Payload, 6000)}}})
		c.release(e, false)
	}
	big("a")
	if n, b := c.size(); n != 1 || b != 6000+eventOverhead {
		t.Fatalf("one saga: %d sagas, %d bytes", n, b)
	}
	big("b")
	if n, b := c.size(); n != 1 || b != 6000+eventOverhead {
		t.Fatalf("past the byte bound: %d sagas, %d bytes, want the least recently used evicted", n, b)
	}
	if _, ok := c.entries["b"]; !ok {
		t.Fatal("the saga just used was evicted instead of the older one")
	}
	small := c.acquire("c")
	small.view.addEvents([]stream.Event{{Type: stream.TimerFired, Attrs: &stream.TimerFiredAttrs{}}})
	c.release(small, false)
	if n, b := c.size(); n != 2 || b != 6000+2*eventOverhead {
		t.Fatalf("within both bounds: %d sagas, %d bytes", n, b)
	}
	// A saga that ends leaves with its bytes.
	done := c.acquire("b")
	c.release(done, true)
	if n, b := c.size(); n != 1 || b != eventOverhead {
		t.Fatalf("after b ended: %d sagas, %d bytes", n, b)
	}
	// A saga larger than the bound alone goes alone; the others stay.
	huge := c.acquire("huge")
	huge.view.addEvents([]stream.Event{{Type: stream.ActivityTaskScheduled, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "a", Input: make(stream.Payload, 20_000)}}})
	c.release(huge, false)
	if _, ok := c.entries["c"]; !ok {
		t.Fatal("a saga larger than the bound emptied the cache")
	}
	if n, b := c.size(); n != 1 || b != eventOverhead {
		t.Fatalf("after the oversized saga: %d sagas, %d bytes", n, b)
	}
	// Two holders of one saga: the last to release counts what the view
	// holds then, not what it held when the first let go.
	x1 := c.acquire("x")
	x1.view.addEvents([]stream.Event{{Type: stream.TimerFired, Attrs: &stream.TimerFiredAttrs{}}})
	c.mu.Lock()
	x := c.entries["x"]
	x.refs++ // a second holder, waiting for the lock
	c.mu.Unlock()
	c.release(x1, false)
	x.mu.Lock()
	x.view.reset()
	c.release(x, false)
	if n, b := c.size(); n != 2 || b != eventOverhead {
		t.Fatalf("after two holders: %d sagas, %d bytes, want the second holder's figure", n, b)
	}
	c.close()
	if n, b := c.size(); n != 0 || b != 0 {
		t.Fatalf("closed: %d sagas, %d bytes", n, b)
	}
}
