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
	c.close()
	if n, b := c.size(); n != 0 || b != 0 {
		t.Fatalf("closed: %d sagas, %d bytes", n, b)
	}
}
