package worker

import (
	"container/list"
	"sync"
	"time"

	"github.com/jetsaga/saga/telemetry"
)

// sagaEntry is a saga in the node's cache. Its mutex serialises all work
// on the saga within the node; other nodes are kept out by the optimistic
// concurrency of appends.
type sagaEntry struct {
	mu   sync.Mutex
	view sagaView
	// deadlocks counts the deadlock verdicts this node reached on the saga;
	// it outlives resets of the view (every verdict drops the machine).
	deadlocks int
	// contendedUntil: this node lost an append race on the saga lately;
	// until then it records results without deciding (see advance).
	contendedUntil time.Time

	// guarded by the cache's mutex
	refs    int
	elem    *list.Element
	evicted bool
	// counted is the view's size as the cache's total counts it.
	counted int64
}

func (e *sagaEntry) id() string { return e.view.id }

// sagaCache keeps recently used sagas, bounded in number and in estimated
// bytes, so that the next step of a saga usually needs neither a read nor
// a replay.
type sagaCache struct {
	mu       sync.Mutex
	entries  map[string]*sagaEntry
	lru      *list.List // front: most recently used
	capacity int
	maxBytes int64
	bytes    int64 // the sum of the entries' counted sizes
	// metrics counts lookups; nil when the node has none.
	metrics *telemetry.Metrics
}

func newSagaCache(capacity int, maxBytes int64) *sagaCache {
	return &sagaCache{entries: map[string]*sagaEntry{}, lru: list.New(), capacity: capacity, maxBytes: maxBytes}
}

// acquire returns the saga's entry, locked.
func (c *sagaCache) acquire(id string) *sagaEntry {
	c.mu.Lock()
	e := c.entries[id]
	if e == nil {
		e = &sagaEntry{view: sagaView{id: id}}
		e.elem = c.lru.PushFront(e)
		c.entries[id] = e
	} else {
		c.lru.MoveToFront(e.elem)
	}
	e.refs++
	c.mu.Unlock()
	e.mu.Lock()
	c.metrics.CacheLookup(e.view.known())
	return e
}

// release unlocks the entry and evicts what exceeds the capacity. An
// entry marked done (a saga that ended) goes at once.
func (c *sagaCache) release(e *sagaEntry, done bool) {
	var closing []*sagaEntry
	if done {
		e.view.reset()
	}
	// Counted while the entry is still locked, so that another holder's
	// newer figure is never overwritten by this one's (nothing takes an
	// entry's lock while holding the cache's).
	c.mu.Lock()
	if !e.evicted {
		c.bytes += e.view.bytes - e.counted
		e.counted = e.view.bytes
	}
	e.mu.Unlock()
	e.refs--
	if done && e.refs == 0 && !e.evicted {
		c.remove(e)
	}
	if e.counted > c.maxBytes && e.refs == 0 && !e.evicted {
		// A saga larger than the bound alone goes alone: evicting every
		// other saga for it would not make it fit.
		c.remove(e)
		closing = append(closing, e)
	}
	for el := c.lru.Back(); (len(c.entries) > c.capacity || c.bytes > c.maxBytes) && el != nil; {
		old := el.Value.(*sagaEntry)
		el = el.Prev()
		if old.refs == 0 {
			c.remove(old)
			closing = append(closing, old)
		}
	}
	c.mu.Unlock()
	// Nobody holds these entries any more: closing needs no lock.
	for _, old := range closing {
		old.view.reset()
	}
}

func (c *sagaCache) remove(e *sagaEntry) {
	c.bytes -= e.counted
	e.counted = 0
	e.evicted = true
	c.lru.Remove(e.elem)
	delete(c.entries, e.id())
}

// close drops every entry; the node has stopped using them.
func (c *sagaCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		e.view.reset()
	}
	c.entries = map[string]*sagaEntry{}
	c.lru.Init()
	c.bytes = 0
}

// size reports the cache's sagas and their estimated bytes.
func (c *sagaCache) size() (sagas int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}
