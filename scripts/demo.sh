#!/usr/bin/env bash
# The main job: installs what is missing, brings the whole local stack up (Postgres, the tansu
# broker, schema registry, the payment and email/SMS provider simulators, order-api, two outbox
# relays, payment, order-service, inventory, notifications and analytics), then pushes a steady stream of sample orders and prints progress every second
# until ctrl-c, and stops what it started. Safe to run twice: what already runs is reused.
#   ORDERFLOW_DEMO_RATE=50 ./scripts/demo.sh     (orders per second; default 20)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_apt_packages
ensure_tansu
build_workspace
trap 'exit 0' INT TERM
trap 'stop_started_services; log "stopped"' EXIT
ensure_postgres
# The demo's broker keeps its log in memory (object storage, as the drill's): tansu's SQLite
# engine stalls serving a backlog (README, "The drain drill"), and a demo that was stopped
# leaves one. A broker started afresh has no events, so the demo's databases start afresh too;
# a broker already running (another demo) is reused with everything it has.
export ORDERFLOW_TANSU_STORAGE="${ORDERFLOW_TANSU_STORAGE:-memory://tansu/}"
port_open "$ORDERFLOW_KAFKA_PORT" || drop_stack_databases
ensure_broker
start_stack

log "stack is up: order-api $ORDERFLOW_API_URL, registry $ORDERFLOW_REGISTRY_URL, broker $ORDERFLOW_KAFKA_BOOTSTRAP"
log "try: curl -s $ORDERFLOW_API_URL/orders/<order_id> | python3 -m json.tool"
log "     curl -s $ORDERFLOW_ANALYTICS_URL/funnel ; curl -s $ORDERFLOW_NOTIFY_PROVIDER_URL/ledger | head -c 400"
setsid "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-demo" --api "$ORDERFLOW_API_URL" --rate "${ORDERFLOW_DEMO_RATE:-20}" &
demo_pid=$!
STARTED_PIDS+=("$demo_pid")
wait "$demo_pid"
