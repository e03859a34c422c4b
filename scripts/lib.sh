#!/usr/bin/env bash
# Shared by scripts/demo.sh, test.sh, bench.sh, drill.sh and kafka.sh: install what is missing,
# start what is not running. Every function is safe to run twice; nothing already listening is
# clobbered. The defaults and logging are here; each job has a file of its own: lib_build.sh
# (target directory, workspace build), lib_install.sh (Debian packages, Python tools),
# lib_postgres.sh, lib_kafka.sh (Java, Maven, the Kafka jars, the broker), lib_stack.sh (the
# services).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# debug (fast to build) or release (what the benchmark measures).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-debug}"
export ORDERFLOW_STATE_DIR="${ORDERFLOW_STATE_DIR:-/var/tmp/orderflow}"
export ORDERFLOW_PG_PORT="${ORDERFLOW_PG_PORT:-55432}"
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_KAFKA_PORT:-19092}"
# Every service's local port is this plus its offset in ops/services.toml (order-api: +80).
export ORDERFLOW_PORT_BASE="${ORDERFLOW_PORT_BASE:-18000}"
# Database names are <prefix>_orders, <prefix>_payments, … (the benchmark uses its own).
export ORDERFLOW_DB_PREFIX="${ORDERFLOW_DB_PREFIX:-orderflow}"
# The broker's controller listener (KRaft); the broker itself is on ORDERFLOW_KAFKA_PORT.
export ORDERFLOW_KAFKA_CONTROLLER_PORT="${ORDERFLOW_KAFKA_CONTROLLER_PORT:-$((ORDERFLOW_KAFKA_PORT + 1))}"
# Apache Kafka's jars (ops/kafka/pom.xml) are fetched once into this cache, outside the clone.
export ORDERFLOW_CACHE="${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}"
STARTED_POSTGRES=0

log() { printf '\033[1m[orderflow]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[orderflow] error:\033[0m %s\n' "$*" >&2; exit 1; }

for part in build install postgres kafka stack; do
    # shellcheck source=/dev/null
    source "$ROOT/scripts/lib_$part.sh"
done
