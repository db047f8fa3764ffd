# syntax=docker/dockerfile:1
# Images for the Weir operator and worker: one builder, two minimal non-root final targets.
#
# No Docker engine runs on the project's development machines, so this file is built in the
# user's CI or for a local kind cluster (the real-cluster suite in e2e/), e.g.:
#   docker build --target operator -t ghcr.io/weir-dev/weir-operator:0.1.0 .
#   docker build --target worker   -t ghcr.io/weir-dev/weir-worker:0.1.0 .
#   kind load docker-image ghcr.io/weir-dev/weir-operator:0.1.0 ghcr.io/weir-dev/weir-worker:0.1.0
# The Helm chart's defaults point at these names with the chart's appVersion as the tag.

FROM rust:1-bookworm AS builder
# rdkafka builds librdkafka from source: a C toolchain, cmake, pkg-config, and the headers of the
# libraries it may link (TLS, SASL, zlib).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libssl-dev libsasl2-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
# The distroless cc image has glibc, libgcc and libssl but no zlib: link zlib statically.
ENV LIBZ_SYS_STATIC=1
WORKDIR /src
COPY . .
# The ldd check fails the build here, not in the cluster, if a binary needs a shared library the
# final image lacks.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weir-operator -p weir-worker \
 && mkdir -p /out \
 && cp target/release/weir-operator target/release/weir-worker /out/ \
 && ! ldd /out/weir-operator /out/weir-worker | grep -E 'not found|libz\.|libsasl2|libcurl|libzstd|liblz4'

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
LABEL org.opencontainers.image.title="weir-operator" \
      org.opencontainers.image.description="Weir's Kubernetes operator for StreamingJobs" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/weir-operator /usr/local/bin/weir-operator
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/weir-operator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS worker
LABEL org.opencontainers.image.title="weir-worker" \
      org.opencontainers.image.description="Weir's streaming worker: runs one StreamingJob's micro-batches" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/weir-worker /usr/local/bin/weir-worker
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weir-worker"]
