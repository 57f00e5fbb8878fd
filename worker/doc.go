// Package worker is the node: it dispatches tasks from saga histories,
// replays and drives workflow code, runs activities, and serves the
// request/reply API.
//
// Every side effect of an event is derived from committed history and
// performed idempotently by a durable consumer that acks only after the
// effect is done, so a node may die between any two instructions:
//
//   - The dispatcher (durable "saga-dispatch", shared by all nodes)
//     receives every commit. It publishes an activity task for each
//     scheduled activity (de-duplicated by the scheduled event id) and,
//     when the commit holds inputs the workflow has not decided on,
//     decides on them if this node runs the workflow, or else publishes a
//     workflow task for the nodes that do.
//   - Workflow task consumers (one durable per workflow type) replay the
//     saga if needed and append the decision as one commit with
//     optimistic concurrency.
//   - Activity task consumers (one durable per activity type) run the
//     activity and append its result together with the workflow's next
//     decision, again as one commit. A redelivered task whose result is
//     already in history is acknowledged without running the activity
//     again.
//
// See docs/architecture.md for the message flow and its costs.
package worker
