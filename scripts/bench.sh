#!/usr/bin/env bash
# The intake and relay benchmark on the local stack (everything co-located, as on a laptop):
# prints accepted orders/s against a pgbench baseline of the same two inserts taken in the same
# run, the outbox lag, and relay events/s. Extra arguments go to orderflow-bench
# (e.g. --seconds 30 --concurrency 32 --relay-events 100000).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-release}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_apt_packages
ensure_tansu
build_workspace
trap 'exit 130' INT TERM
trap 'stop_started_services' EXIT
ensure_postgres
ensure_broker
start_stack
"$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-bench" --admin-url "$ORDERFLOW_PG_ADMIN_URL" "$@"
