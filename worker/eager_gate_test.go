package worker

import (
	"testing"
	"time"
)

// A type whose eager run passes eagerMaxRun stops running eagerly at
// once, while that run goes on, and stays out for eagerSlowFor after a
// long run ends; short runs keep it in.
func TestEagerGateKeepsLongRunsOffTheDispatcher(t *testing.T) {
	var g eagerGate
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	clock := func() time.Time { return now }
	if !g.short("a", now) {
		t.Fatal("a type never run is not short")
	}
	end := g.begin("a", clock)
	now = now.Add(eagerMaxRun / 2)
	if !g.short("a", now) {
		t.Fatal("a run within eagerMaxRun made the type slow")
	}
	now = now.Add(eagerMaxRun)
	if g.short("a", now) {
		t.Fatal("a run past eagerMaxRun, still running, left the type eager")
	}
	if !g.short("b", now) {
		t.Fatal("another type was taken for slow")
	}
	end()
	now = now.Add(eagerSlowFor / 2)
	if g.short("a", now) {
		t.Fatal("the type ran eagerly again within eagerSlowFor of its long run")
	}
	now = now.Add(eagerSlowFor)
	if !g.short("a", now) {
		t.Fatal("the type stayed slow after eagerSlowFor")
	}
	quick := g.begin("a", clock)
	now = now.Add(time.Second)
	quick()
	if !g.short("a", now) {
		t.Fatal("a short run made the type slow")
	}
}
