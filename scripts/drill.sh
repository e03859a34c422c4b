#!/usr/bin/env bash
# The drain drill (docs/failure-catalog.md §8) on its own stack: payments stopped, N orders accepted, K
# payment instances brought back at once against the provider's limit. Arguments go to
# orderflow-drill: --orders 50000 --instances 4 --limit 200 (the defaults).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-release}"
export ORDERFLOW_STATE_DIR="${ORDERFLOW_DRILL_STATE_DIR:-/var/tmp/orderflow-drill}"
export ORDERFLOW_DB_PREFIX=orderflow_drill
# Below the kernel's ephemeral ports (32768-60999 here): an outgoing connection took the drill's
# payment metrics port 38302 once, between two runs, when the stack sat at 38000.
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_DRILL_KAFKA_PORT:-23092}" ORDERFLOW_PORT_BASE="${ORDERFLOW_DRILL_PORT_BASE:-22000}"
# Stock for every order the drill places: the drain measures payments, not shortages.
export ORDERFLOW_STOCK_EACH="${ORDERFLOW_STOCK_EACH:-100000000}"
export ORDERFLOW_SKIP_SERVICES=payment
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

trap 'exit 130' INT TERM
trap 'stop_started_services' EXIT
start_fresh_stack
"$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-drill" --payment-bin "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/payment" \
    --metrics-port "$((ORDERFLOW_PORT_BASE + 300))" --log-dir "$ORDERFLOW_STATE_DIR/run" "$@"
