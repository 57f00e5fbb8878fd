// Package kv will own the engine's state in JetStream key-value buckets:
// durable timers (entries with a TTL, fired from the bucket's delete
// markers) and workflow snapshots. Nothing is built here yet; the engine
// core does not use timers or snapshots.
package kv
