// Package telemetry owns what a node tells operators besides its logs:
// its Prometheus metrics (one registry per node, never the global one),
// the consumer lag that both the metrics and `saga-node status` report,
// the HTTP server of /metrics and /healthz, and the OpenTelemetry spans of
// sagas (one trace per saga, its id derived from the saga id, carried on
// task messages as a W3C traceparent).
//
// Everything here is off unless configured: a nil *Metrics or *Tracer
// does nothing, so the node's hot path pays a nil check. See
// docs/observability.md for the metrics, the spans and the choices behind
// them.
package telemetry
