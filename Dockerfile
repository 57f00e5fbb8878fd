# syntax=docker/dockerfile:1

# The build stage uses the Go release named by go.mod's go directive
# (cli/compose_test.go checks they agree).
FROM golang:1.26 AS build
WORKDIR /src
# Modules first: a source change then reuses the downloaded modules' layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static, so the final stage needs none of the build image's libraries;
# -trimpath keeps the build machine's paths out of the binary.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/saga-node ./cmd/saga-node

# Alpine rather than distroless: busybox wget serves the health checks.
FROM alpine:3.22
RUN addgroup -S -g 10001 saga \
 && adduser -S -D -H -u 10001 -G saga saga \
 && mkdir -p /var/lib/saga \
 && chown saga:saga /var/lib/saga
COPY --from=build /out/saga-node /usr/local/bin/saga-node
# Numeric, so that runtimes enforcing a non-root user can verify it.
USER 10001:10001
WORKDIR /var/lib/saga
# 9090: metrics and /healthz (--metrics-listen). The embedded nats-server
# of the default command has no authentication, so it listens inside the
# container only (admin commands: docker exec ... saga-node describe ...);
# a fleet joins an authenticated NATS with --nats-url.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/saga-node"]
# Alone, the image runs the whole engine with an embedded nats-server;
# docker-compose.yml replaces this command to join its NATS cluster.
CMD ["run", "--data", "/var/lib/saga", "--listen", "127.0.0.1:4222", "--metrics-listen", "0.0.0.0:9090"]
