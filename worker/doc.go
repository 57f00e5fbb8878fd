// Package worker is the node: it carries out the effects of saga
// histories, replays and drives workflow code, runs activities, fires
// timers, and serves the request/reply API.
//
// Every side effect of an event is derived from committed history and
// performed idempotently by a durable consumer that acks only after the
// effect is done, so a node may die between any two instructions. All
// consumers run on one loop (consumer.go: fetching, slots, heartbeats,
// panics, dead letters), each with its handler:
//
//   - the dispatcher (durable "saga-dispatch", shared by all nodes) gets
//     every commit, carries out each event's effects as the one table of
//     them says (effects.go: today an activity's task and its
//     schedule-to-start timer) and, when the commit holds inputs the
//     workflow has not decided on, decides on them if this node runs the
//     workflow, or else publishes a workflow task for the nodes that do;
//   - workflow task consumers (one durable per workflow type) decide;
//   - activity task consumers (one durable per activity type) run an
//     attempt, counted as it starts (attempts.go), and append its outcome
//     together with the workflow's next decision, as one commit;
//   - the timers consumer acts on fired durable timers: retries after a
//     backoff, schedule-to-start timeouts.
//
// Deciding goes through a saga's view (view.go: state, events and machine
// kept in step) and one optimistic-concurrency loop (advance.go). Views are
// cached (cache.go); a view whose machine made no decision for
// Options.IdleMachineTimeout drops the machine, which its next step
// rebuilds from the cached events.
//
// See docs/architecture.md for the message flow and its costs, and
// docs/failures.md for what goes wrong and what the node does.
package worker
