#!/usr/bin/env bash
# The benchmark on the local stack (everything co-located, as on a laptop): relay events/s
# against a plain producer, accepted orders/s against a pgbench baseline of the same two inserts,
# and events/s per consumer group (inventory, notifications, analytics) against a plain consumer
# reading the same records — each baseline taken in the same run. Extra arguments go to
# orderflow-bench (e.g. --phases consumers --consumer-events 100000, or --seconds 30).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-release}"
# Its own stack (ports, broker data, databases), so it never disturbs the demo's and starts clean.
export ORDERFLOW_STATE_DIR="${ORDERFLOW_BENCH_STATE_DIR:-/var/tmp/orderflow-bench}"
export ORDERFLOW_DB_PREFIX=orderflow_bench
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_BENCH_KAFKA_PORT:-29092}" ORDERFLOW_PORT_BASE="${ORDERFLOW_BENCH_PORT_BASE:-28000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap 'exit 130' INT TERM
trap 'stop_started_services' EXIT
ensure_connect   # the cdc phase's Kafka Connect and Debezium
start_fresh_stack
"$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-bench" "$@"   # ORDERFLOW_PG_ADMIN_URL from the environment (a secret: never argv)
