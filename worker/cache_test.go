package worker

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jetsaga/saga"
	"github.com/jetsaga/saga/internal/replay"
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
	if n, b := c.sagasAndBytes(); n != 1 || b != 6000+eventOverhead {
		t.Fatalf("one saga: %d sagas, %d bytes", n, b)
	}
	big("b")
	if n, b := c.sagasAndBytes(); n != 1 || b != 6000+eventOverhead {
		t.Fatalf("past the byte bound: %d sagas, %d bytes, want the least recently used evicted", n, b)
	}
	if _, ok := c.entries["b"]; !ok {
		t.Fatal("the saga just used was evicted instead of the older one")
	}
	small := c.acquire("c")
	small.view.addEvents([]stream.Event{{Type: stream.TimerFired, Attrs: &stream.TimerFiredAttrs{}}})
	c.release(small, false)
	if n, b := c.sagasAndBytes(); n != 2 || b != 6000+2*eventOverhead {
		t.Fatalf("within both bounds: %d sagas, %d bytes", n, b)
	}
	// A saga that ends leaves with its bytes.
	done := c.acquire("b")
	c.release(done, true)
	if n, b := c.sagasAndBytes(); n != 1 || b != eventOverhead {
		t.Fatalf("after b ended: %d sagas, %d bytes", n, b)
	}
	// A saga larger than the bound alone goes alone; the others stay.
	huge := c.acquire("huge")
	huge.view.addEvents([]stream.Event{{Type: stream.ActivityTaskScheduled, Attrs: &stream.ActivityTaskScheduledAttrs{ActivityType: "a", Input: make(stream.Payload, 20_000)}}})
	c.release(huge, false)
	if _, ok := c.entries["c"]; !ok {
		t.Fatal("a saga larger than the bound emptied the cache")
	}
	if n, b := c.sagasAndBytes(); n != 1 || b != eventOverhead {
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
	if n, b := c.sagasAndBytes(); n != 2 || b != eventOverhead {
		t.Fatalf("after two holders: %d sagas, %d bytes, want the second holder's figure", n, b)
	}
	c.close()
	if n, b := c.sagasAndBytes(); n != 0 || b != 0 {
		t.Fatalf("closed: %d sagas, %d bytes", n, b)
	}
}

func (c *sagaCache) sagasAndBytes() (int, int64) {
	s := c.size()
	return s.sagas, s.bytes
}

// tallyWorkflow adds up n signals "add", recording the running sum as a
// side effect after each: every signal leads to a decision.
var tallyWorkflow = saga.NewWorkflow("tally", 1, func(ctx saga.Context, n int) (int, error) {
	add := saga.GetSignalChannel[int](ctx, "add")
	sum := 0
	for range n {
		v, err := add.Receive(ctx)
		if err != nil {
			return sum, err
		}
		sum += v
		if _, err := saga.SideEffect(ctx, func() (int, error) { return sum, nil }); err != nil {
			return sum, err
		}
	}
	return sum, nil
})

// Sagas step concurrently through a small cache, as handlers do, while
// their machines are released as idle over and over and the least
// recently used sagas are evicted: no decision is lost or made on a
// machine that another goroutine dropped, the view's invariant holds at
// every step, and every saga ends with the right sum. Run with -race.
func TestIdleReleaseNeverLosesADecision(t *testing.T) {
	const sagas, steps, capacity = 8, 40, 6
	reg := saga.NewRegistry()
	reg.MustRegister(tallyWorkflow)
	rw, _ := reg.Workflow("tally")
	c := newSagaCache(capacity, 1<<30)
	defer c.close()
	ctx := context.Background()
	var builds atomic.Int64

	// history is each saga's log, as the stream would hold it: an evicted
	// saga is loaded from it again.
	type history struct {
		mu      sync.Mutex
		commits []stream.StoredCommit
	}
	histories := make([]*history, sagas)
	stepSaga := func(i, step int) error {
		id := fmt.Sprintf("tally-%d", i)
		h := histories[i]
		e := c.acquire(id)
		defer c.release(e, false)
		v := &e.view
		if !v.known() {
			h.mu.Lock()
			commits := slices.Clone(h.commits)
			h.mu.Unlock()
			if err := v.load(ctx, commits); err != nil {
				return err
			}
		}
		if v.machine == nil {
			builds.Add(1)
			if err := v.buildMachine(ctx, replay.Config{SagaID: id, WorkflowType: rw.Name, Workflow: rw.Func, DeadlockTimeout: time.Minute}); err != nil {
				return fmt.Errorf("rebuild: %w", err)
			}
		}
		v.machineUsed = time.Now()
		next := v.state.NextEventID
		signal, err := stream.Marshal(step + 1)
		if err != nil {
			return err
		}
		inputs := []stream.Event{{ID: next, SagaID: id, Type: stream.SignalReceived, Category: stream.CategoryOf(stream.SignalReceived), Time: time.Now(),
			Attrs: &stream.SignalReceivedAttrs{Name: "add", Input: signal}}}
		if err := v.feedSpeculative(ctx, inputs); err != nil {
			return fmt.Errorf("step %d: %w", step, err)
		}
		proposal := v.machine.Propose(next+1, time.Now())
		// The sum of 1..step+1, recorded; the last step also completes.
		want := (step + 1) * (step + 2) / 2
		if len(proposal) == 0 {
			return fmt.Errorf("step %d: the decision was lost", step)
		}
		var sum int
		if m, ok := proposal[0].Attrs.(*stream.MarkerRecordedAttrs); !ok || stream.Unmarshal(m.Data, &sum) != nil || sum != want {
			return fmt.Errorf("step %d: decided %v, want a marker of %d", step, proposal[0], want)
		}
		commit := &stream.Commit{SagaID: id, WorkflowType: rw.Name, Decided: true, Events: append(inputs, proposal...)}
		h.mu.Lock()
		seq := uint64(len(h.commits) + 1)
		h.commits = append(h.commits, stream.StoredCommit{Seq: seq, Commit: commit})
		h.mu.Unlock()
		if err := v.committed(ctx, commit, seq, len(inputs)); err != nil {
			return err
		}
		return v.check()
	}
	for i := range histories {
		id := fmt.Sprintf("tally-%d", i)
		input, err := stream.Marshal(steps)
		if err != nil {
			t.Fatal(err)
		}
		start := &stream.Commit{SagaID: id, WorkflowType: rw.Name, Events: []stream.Event{{ID: 0, SagaID: id, Type: stream.WorkflowExecutionStarted,
			Category: stream.CategoryOf(stream.WorkflowExecutionStarted), Time: time.Now(),
			Attrs: &stream.WorkflowExecutionStartedAttrs{WorkflowType: rw.Name, Version: 1, Input: input}}}}
		histories[i] = &history{commits: []stream.StoredCommit{{Seq: 1, Commit: start}}}
	}

	stop := make(chan struct{})
	var sweeper sync.WaitGroup
	released := 0
	sweeper.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			// Every machine counts as idle: released whenever no one holds it.
			released += c.releaseIdle(time.Now().Add(time.Hour))
			runtime.Gosched()
		}
	})
	var steppers sync.WaitGroup
	for i := range sagas {
		steppers.Go(func() {
			for step := range steps {
				if err := stepSaga(i, step); err != nil {
					t.Errorf("saga %d: %v", i, err)
					return
				}
				runtime.Gosched() // a handler's next message takes a while
			}
		})
	}
	steppers.Wait()
	close(stop)
	sweeper.Wait()
	if t.Failed() {
		return
	}
	if released == 0 || builds.Load() <= sagas {
		t.Fatalf("%d machines released, %d built: the release never raced the steps", released, builds.Load())
	}
	for i, h := range histories {
		last := h.commits[len(h.commits)-1].Commit.Events
		end, ok := last[len(last)-1].Attrs.(*stream.WorkflowExecutionCompletedAttrs)
		var sum int
		if !ok || stream.Unmarshal(end.Output, &sum) != nil || sum != steps*(steps+1)/2 {
			t.Errorf("saga %d ended with %v", i, last[len(last)-1])
		}
	}
	t.Logf("%d steps, %d machines released while idle, %d built", sagas*steps, released, builds.Load())
}

// releaseIdle releases the machines unused since the cutoff, whatever the
// order their holders let them go in, skips a saga a handler holds, and
// keeps every saga cached: the byte count drops by the machines' share.
func TestReleaseIdleMachines(t *testing.T) {
	reg := saga.NewRegistry()
	reg.MustRegister(memoryWorkflow, memoryStep)
	rw, _ := reg.Workflow("memory")
	c := newSagaCache(10, 1<<30)
	defer c.close()
	t0 := time.Now()
	// Sagas whose machines were used at t0+1s … t0+4s, let go in another
	// order than used.
	for _, i := range []int{3, 1, 4, 2} {
		id := fmt.Sprintf("s%d", i)
		e := c.acquire(id)
		built := parkedView(t, replay.Config{SagaID: id, WorkflowType: rw.Name, Workflow: rw.Func, DeadlockTimeout: time.Minute}, id, 3)
		e.view = *built
		e.view.machineUsed = t0.Add(time.Duration(i) * time.Second)
		c.release(e, false)
	}
	withMachines := c.size()
	if withMachines.liveMachines != 4 {
		t.Fatalf("%d live machines, want 4", withMachines.liveMachines)
	}
	held := c.acquire("s1") // a handler holds s1
	if n := c.releaseIdle(t0.Add(2500 * time.Millisecond)); n != 1 {
		t.Fatalf("released %d machines, want 1 (s2; s1 is held)", n)
	}
	c.release(held, false)
	released := func(id string) bool { return c.entries[id].view.machine == nil }
	if !released("s2") || released("s1") || released("s3") || released("s4") {
		t.Fatalf("released s1 %v s2 %v s3 %v s4 %v, want s2 alone", released("s1"), released("s2"), released("s3"), released("s4"))
	}
	if n := c.releaseIdle(t0.Add(3500 * time.Millisecond)); n != 2 {
		t.Fatalf("released %d machines, want 2 (s1, s3)", n)
	}
	after := c.size()
	perMachine := int64(machineOverhead + machineEventOverhead*len(c.entries["s1"].view.events))
	if after.sagas != 4 || after.liveMachines != 1 || after.releasedMachines != 3 || after.bytes != withMachines.bytes-3*perMachine {
		t.Fatalf("after the releases: %+v, want 4 sagas, 1 live machine, 3 released, %d bytes", after, withMachines.bytes-3*perMachine)
	}
	for id, e := range c.entries {
		if err := e.view.check(); err != nil || !e.view.known() {
			t.Fatalf("%s: %v, known %v", id, err, e.view.known())
		}
	}
}
