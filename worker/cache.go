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
	// live is the entry's place among the entries whose view has a
	// machine, nil when it has none; machineUsed is that machine's last
	// use as the entry's last holder left it.
	live        *list.Element
	machineUsed time.Time
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
	// live lists the entries whose view has a machine, by the machine's
	// last use (front: most recent), so that releasing the idle ones
	// looks at those alone.
	live *list.List
	// released counts the machines releaseIdle dropped.
	released int64
	// metrics counts lookups; nil when the node has none.
	metrics *telemetry.Metrics
}

func newSagaCache(capacity int, maxBytes int64) *sagaCache {
	return &sagaCache{entries: map[string]*sagaEntry{}, lru: list.New(), live: list.New(), capacity: capacity, maxBytes: maxBytes}
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
		size := e.view.size()
		c.bytes += size - e.counted
		e.counted = size
		c.noteMachine(e)
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

// noteMachine keeps the entry's place among the live machines in step
// with its view, which the caller holds locked, as does the cache's lock.
func (c *sagaCache) noteMachine(e *sagaEntry) {
	used := e.view.machineUsed
	switch {
	case e.view.machine == nil:
		if e.live != nil {
			c.live.Remove(e.live)
			e.live = nil
		}
		return
	case e.live == nil:
	case used.After(e.machineUsed):
		c.live.Remove(e.live)
	default:
		return
	}
	e.machineUsed = used
	// Holders release in another order than they used their machines:
	// the entry goes after the ones used later, so that the list stays
	// sorted (usually at the front, at once).
	for el := c.live.Front(); el != nil; el = el.Next() {
		if !el.Value.(*sagaEntry).machineUsed.After(used) {
			e.live = c.live.InsertBefore(e, el)
			return
		}
	}
	e.live = c.live.PushBack(e)
}

func (c *sagaCache) remove(e *sagaEntry) {
	c.bytes -= e.counted
	e.counted = 0
	e.evicted = true
	c.lru.Remove(e.elem)
	if e.live != nil {
		c.live.Remove(e.live)
		e.live = nil
	}
	delete(c.entries, e.id())
}

// releaseIdle releases the machines unused since cutoff (their coroutines
// stop; the events and state stay, see sagaView.releaseMachine) and
// returns how many it released. It never waits for a saga: one held by
// a handler is in use, not idle, and its holder notes that use.
func (c *sagaCache) releaseIdle(cutoff time.Time) int {
	c.mu.Lock()
	var idle []*sagaEntry
	for el := c.live.Back(); el != nil; el = el.Prev() {
		e := el.Value.(*sagaEntry)
		if !e.machineUsed.Before(cutoff) {
			break // the rest were used later
		}
		if e.refs == 0 {
			e.refs++ // pinned: eviction leaves it alone until release
			idle = append(idle, e)
		}
	}
	c.mu.Unlock()
	released := 0
	for _, e := range idle {
		if !e.mu.TryLock() {
			// Taken since, by a handler about to use it: leave it. The
			// reference taken above keeps it from being evicted meanwhile.
			c.unpin(e)
			continue
		}
		if e.view.releaseMachine(cutoff) {
			released++
		}
		c.release(e, false)
	}
	c.mu.Lock()
	c.released += int64(released)
	c.mu.Unlock()
	return released
}

// unpin drops a reference taken without the entry's lock.
func (c *sagaCache) unpin(e *sagaEntry) {
	c.mu.Lock()
	e.refs--
	c.mu.Unlock()
}

// close drops every entry; the node has stopped using them.
func (c *sagaCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		e.view.reset()
		e.live = nil
	}
	c.entries = map[string]*sagaEntry{}
	c.lru.Init()
	c.live.Init()
	c.bytes = 0
}

// cacheSize is what the cache holds now.
type cacheSize struct {
	sagas int
	bytes int64
	// liveMachines: the sagas whose view has a machine, its coroutines
	// parked; releasedMachines: the machines released while idle, so far.
	liveMachines     int
	releasedMachines int64
}

// size reports the cache's sagas, their estimated bytes and machines.
func (c *sagaCache) size() cacheSize {
	c.mu.Lock()
	defer c.mu.Unlock()
	return cacheSize{sagas: len(c.entries), bytes: c.bytes, liveMachines: c.live.Len(), releasedMachines: c.released}
}
