package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/jetsaga/saga/telemetry"
	"github.com/jetsaga/saga/telemetry/otlp"
)

// observabilityFlags turn on a node's metrics and traces (see
// docs/observability.md).
type observabilityFlags struct {
	metricsListen string
	otlpEndpoint  string
	otlpInsecure  bool
}

func (o *observabilityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics at /metrics and the node's health at /healthz on HOST:PORT; off when empty")
	fs.StringVar(&o.otlpEndpoint, "otlp-endpoint", "", "send traces over OTLP/HTTP to the collector at HOST:PORT (4318); off when empty")
	fs.BoolVar(&o.otlpInsecure, "otlp-insecure", false, "send OTLP traces over plain HTTP instead of HTTPS")
}

func (o *observabilityFlags) validate() error {
	for flagName, addr := range map[string]string{"metrics-listen": o.metricsListen, "otlp-endpoint": o.otlpEndpoint} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%w: --%s must be HOST:PORT: %v", errUsage, flagName, err)
		}
	}
	if o.otlpInsecure && o.otlpEndpoint == "" {
		return fmt.Errorf("%w: --otlp-insecure needs --otlp-endpoint", errUsage)
	}
	return nil
}

// registry returns the node's own metrics registry, with the process's
// Go runtime and resource metrics; nil when metrics are off.
func (o *observabilityFlags) registry() *prometheus.Registry {
	if o.metricsListen == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// tracerProvider returns the OTLP tracer provider and the function that
// flushes and stops it; nil when tracing is off.
func (o *observabilityFlags) tracerProvider(ctx context.Context, nodeName string, log *slog.Logger) (trace.TracerProvider, func(), error) {
	if o.otlpEndpoint == "" {
		return nil, func() {}, nil
	}
	tp, err := otlp.NewTracerProvider(ctx, otlp.Options{Endpoint: o.otlpEndpoint, Insecure: o.otlpInsecure, ServiceInstance: nodeName})
	if err != nil {
		return nil, nil, err
	}
	log.Info("sending traces", "otlp_endpoint", o.otlpEndpoint)
	return tp, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			log.Warn("traces not all sent", "err", err)
		}
	}, nil
}

// serve serves the metrics and health until the returned stop; nothing
// when metrics are off.
func (o *observabilityFlags) serve(reg *prometheus.Registry, health func() error, log *slog.Logger) (func(), error) {
	if reg == nil {
		return func() {}, nil
	}
	srv, err := telemetry.Serve(o.metricsListen, reg, health, log)
	if err != nil {
		return nil, err
	}
	log.Info("serving metrics", "url", "http://"+srv.Addr()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Close(ctx)
	}, nil
}
