// Package kv owns the engine's durable timers, kept in a JetStream
// key-value bucket: entries with a TTL, fired from their expiry markers.
// (Snapshots of sagas' state, in a bucket too, are package stream's.)
//
// A timer is one entry of the timers bucket, created with a TTL that ends
// at its due time. When the TTL removes the entry the server writes a
// delete marker (header Nats-Marker-Reason: MaxAge) on the key's subject;
// a durable consumer on the bucket's stream reads the markers, and Fired
// turns each into the timer it announces. Because the marker is stored in
// the stream, a timer that falls due while no consumer runs still fires
// when one starts, as long as the marker is kept (TimersConfig.MarkerTTL).
package kv
