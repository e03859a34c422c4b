# syntax=docker/dockerfile:1.7
# One image for every orderflow binary: services, relays, simulators, the migration and schema
# hook commands and the operator tools. Pick the program with the container's command, e.g.
#   docker run ghcr.io/orderflow/orderflow:0.1.0 order-api
#
# Stages: chef (cargo-chef) → planner (dependency recipe) → build (dependencies in their own
# cached layer, then the workspace) → runtime (distroless, non-root, no shell).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/* \
 && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
ARG PROFILE=release
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: rebuilt only when Cargo.toml/Cargo.lock change, not on a source edit.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --profile "${PROFILE}" --workspace --recipe-path recipe.json
COPY . .
# Every binary of the workspace once (the test harness crate has none worth shipping), then the
# shared libraries they need that the distroless base lacks (zlib for librdkafka).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --profile "${PROFILE}" --workspace --bins --exclude orderflow-tests --locked \
 && mkdir -p /out/bin /out/lib \
 && dir="target/$([ "${PROFILE}" = dev ] && echo debug || echo "${PROFILE}")" \
 && find "$dir" -maxdepth 1 -type f -perm -u+x -exec cp {} /out/bin/ \; \
 && cp "$(gcc -print-file-name=libz.so.1)" /out/lib/ \
 && ls /out/bin

# gcr.io/distroless/cc: glibc, libgcc, libssl, CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="orderflow" \
      org.opencontainers.image.description="Kafka order-processing services: order-api, outbox relays, consumers, registry, lag exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/orderflow/orderflow"
COPY --from=build /out/lib/ /usr/local/lib/
COPY --from=build /out/bin/ /usr/local/bin/
# The Avro schemas `orderflow-schemas register` publishes (the chart's schema hook Job).
COPY schemas/avro /usr/share/orderflow/schemas/avro
ENV LD_LIBRARY_PATH=/usr/local/lib \
    ORDERFLOW_SCHEMAS_DIR=/usr/share/orderflow/schemas/avro \
    ORDERFLOW_LOG_FORMAT=json
# 65532 is distroless' "nonroot"; numeric, so runAsNonRoot can verify it without a passwd file.
USER 65532:65532
WORKDIR /tmp
# No ENTRYPOINT: the command names the program (order-api, payment, outbox-relay, …).
CMD ["order-api"]
