#!/usr/bin/env bash
# The drain drill (docs/failure-catalog.md §8) on its own stack: payments stopped, N orders accepted, K
# payment instances brought back at once against the provider's limit. Arguments go to
# orderflow-drill: --orders 50000 --instances 4 --limit 200 (the defaults).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-release}"
export ORDERFLOW_STATE_DIR="${ORDERFLOW_DRILL_STATE_DIR:-/var/tmp/orderflow-drill}"
export ORDERFLOW_DB_PREFIX=orderflow_drill
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_DRILL_KAFKA_PORT:-39092}" ORDERFLOW_API_PORT="${ORDERFLOW_DRILL_API_PORT:-38080}"
export ORDERFLOW_REGISTRY_PORT="${ORDERFLOW_DRILL_REGISTRY_PORT:-38081}" ORDERFLOW_SIMULATOR_PORT="${ORDERFLOW_DRILL_SIMULATOR_PORT:-38090}"
export ORDERFLOW_SIMULATOR_ADMIN_PORT="${ORDERFLOW_DRILL_SIMULATOR_ADMIN_PORT:-38089}"
export ORDERFLOW_NOTIFY_SIMULATOR_PORT="${ORDERFLOW_DRILL_NOTIFY_SIMULATOR_PORT:-38091}" ORDERFLOW_ANALYTICS_PORT="${ORDERFLOW_DRILL_ANALYTICS_PORT:-38082}"
# Stock for every order the drill places: the drain measures payments, not shortages.
export ORDERFLOW_STOCK_EACH="${ORDERFLOW_STOCK_EACH:-100000000}"
export ORDERFLOW_START_PAYMENT=0
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap 'exit 130' INT TERM
trap 'stop_started_services' EXIT
start_fresh_stack
"$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-drill" --payment-bin "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/payment" \
    --metrics-port "$((ORDERFLOW_API_PORT + 220))" --log-dir "$ORDERFLOW_STATE_DIR/run" "$@"
