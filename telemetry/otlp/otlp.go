// Package otlp builds the tracer provider that sends a node's spans to an
// OpenTelemetry collector over OTLP/HTTP (protobuf), with the ids that
// give each saga's trace its root span (telemetry.IDGenerator). It is apart
// from package telemetry so that programs that do not export traces this
// way do not link the exporter.
package otlp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/jetsaga/saga/telemetry"
)

// Options configures NewTracerProvider.
type Options struct {
	// Endpoint is the collector's HOST:PORT (OTLP/HTTP listens on 4318).
	Endpoint string
	// Insecure sends plain HTTP instead of HTTPS.
	Insecure bool
	// ServiceName and ServiceInstance name the process in its spans
	// (service.name, service.instance.id). ServiceName defaults to
	// "saga-node".
	ServiceName     string
	ServiceInstance string
}

// Provider is a tracer provider that exports over OTLP. Shutdown flushes
// the spans not yet sent.
type Provider struct {
	*sdktrace.TracerProvider
	transport *http.Transport
}

// NewTracerProvider returns a provider that batches spans and sends them to
// o.Endpoint. Headers and compression follow the OTEL_EXPORTER_OTLP_*
// environment variables; TLS settings and the timeout do not (the
// exporter ignores them beside an HTTP client of its own, which Shutdown
// needs): the system's CAs verify the collector, and a collector behind a
// private CA or mutual TLS is reached through a local collector.
func NewTracerProvider(ctx context.Context, o Options) (*Provider, error) {
	if o.Endpoint == "" {
		return nil, errors.New("otlp: no endpoint")
	}
	// A transport of its own, so that Shutdown can close its idle
	// connections (and their goroutines).
	transport := http.DefaultTransport.(*http.Transport).Clone()
	opts := []otlptracehttp.Option{
		otlptracehttp.WithEndpoint(o.Endpoint),
		otlptracehttp.WithHTTPClient(&http.Client{Transport: transport, Timeout: 10 * time.Second}),
	}
	if o.Insecure {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp: trace exporter: %w", err)
	}
	if o.ServiceName == "" {
		o.ServiceName = "saga-node"
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", o.ServiceName)}
	if o.ServiceInstance != "" {
		attrs = append(attrs, attribute.String("service.instance.id", o.ServiceInstance))
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attrs...)),
		sdktrace.WithIDGenerator(telemetry.IDGenerator{}),
	)
	return &Provider{TracerProvider: tp, transport: transport}, nil
}

// Shutdown sends the spans not yet sent, within ctx, and stops the
// provider.
func (p *Provider) Shutdown(ctx context.Context) error {
	err := p.TracerProvider.Shutdown(ctx)
	p.transport.CloseIdleConnections()
	return err
}
