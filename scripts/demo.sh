#!/usr/bin/env bash
# The main job: installs what is missing, brings the whole local stack up (Postgres, Apache
# Kafka, the schema registry, the payment and email/SMS provider simulators, order-api, three
# outbox relays, payment, order-service, inventory, notifications, analytics and the lag
# exporter), then pushes a steady stream of sample orders and prints progress every second
# until ctrl-c, and stops what it started. Safe to run twice: what already runs is reused, and
# a stopped demo's orders, events and offsets are all still there on the next start.
#   ORDERFLOW_DEMO_RATE=50 ./scripts/demo.sh     (orders per second; default 20)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_apt_packages
ensure_kafka
build_workspace
trap 'exit 0' INT TERM
trap 'stop_started_services; log "stopped"' EXIT
ensure_postgres
ensure_broker
start_stack

log "stack is up: order-api $ORDERFLOW_API_URL, registry $ORDERFLOW_REGISTRY_URL, broker $ORDERFLOW_KAFKA_BOOTSTRAP"
log "ops console: $ORDERFLOW_CONSOLE_URL (lag, outboxes, dead letters, an order's story; replay and triage sign in as"
log "     oncall, password in $ORDERFLOW_STATE_DIR/auth/console-password)"
log "try: TOKEN=\$($CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-token sign --key $ORDERFLOW_API_TOKEN_KEY --issuer orderflow-local --subject you --scope orders:read)"
log "     curl -s -H \"Authorization: Bearer \$TOKEN\" $ORDERFLOW_API_URL/orders/<order_id> | python3 -m json.tool"
log "     curl -s $ORDERFLOW_ANALYTICS_URL/funnel ; curl -s $ORDERFLOW_NOTIFY_PROVIDER_ADMIN_URL/ledger | head -c 400"
setsid "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-demo" --api "$ORDERFLOW_API_URL" --rate "${ORDERFLOW_DEMO_RATE:-20}" &
demo_pid=$!
STARTED_PIDS+=("$demo_pid")
wait "$demo_pid"
