// Package stream owns a saga's history log on JetStream: the event envelope
// and its msgpack encoding, the names of subjects and streams, stream
// set-up that creates what is missing and never weakens what exists,
// appends with optimistic concurrency, reads of one saga's history, the
// activity task messages derived from it, the dead-letter stream, a fold
// of events into a saga's current state, and the one mapping of JetStream
// errors to the log's (and of those that are worth a retry).
//
// One saga's history is one subject, <prefix>.h.<shard>.<sagaID>, in the
// history stream of its shard. Every message on it is a commit: one or more
// events written by one decision, appended atomically with
// Nats-Expected-Last-Subject-Sequence set to the sequence of the last commit
// the writer saw. See docs/architecture.md for the whole flow.
package stream
