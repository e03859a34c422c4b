# The local stack: processes started, checked, reused and stopped in order; every service's
# database, port and environment.
# Sourced by scripts/lib.sh (which sets ROOT, the ORDERFLOW_* defaults, log and die).

# Waits until $1 answers HTTP 200, for at most $2 seconds.
wait_http() {
    local url="$1" limit="${2:-30}" i
    for ((i = 0; i < limit * 5; i++)); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

STARTED_PIDS=()

# launch NAME COMMAND...: runs COMMAND in its own session (a terminal's ctrl-c reaches only the
# script, which stops services in order), logs and pid under $ORDERFLOW_STATE_DIR/run.
launch() {
    local name="$1"; shift
    local run="$ORDERFLOW_STATE_DIR/run"
    mkdir -p "$run"
    log "starting $name (log: $run/$name.log)"
    setsid nohup "$@" >"$run/$name.log" 2>&1 &
    echo "$!" >"$run/$name.pid"
    STARTED_PIDS+=("$!")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_process NAME COMMAND...: a service without an HTTP health endpoint (relays, consumers).
# Reused when its pid file names a live process; otherwise started and checked to stay up.
start_process() {
    local name="$1"; shift
    local run="$ORDERFLOW_STATE_DIR/run"
    mkdir -p "$run"
    if [ -s "$run/$name.pid" ] && kill -0 "$(cat "$run/$name.pid")" 2>/dev/null; then
        log "reusing $name (pid $(cat "$run/$name.pid"))"
        return
    fi
    launch "$name" "$@"
    local pid="${STARTED_PIDS[-1]}"
    sleep 1
    kill -0 "$pid" 2>/dev/null || { tail -20 "$run/$name.log" >&2; die "$name exited at start"; }
}


# The bench's and the drill's own stack, from empty: installs what is missing, builds, drops
# the $ORDERFLOW_DB_PREFIX databases and the broker's log (unless a broker already runs on the
# port), then starts every service. The caller sets the EXIT trap that stops them.
start_fresh_stack() {
    ensure_apt_packages
    ensure_kafka
    build_workspace
    ensure_postgres
    drop_stack_databases
    port_open "$ORDERFLOW_KAFKA_PORT" || rm -rf "$ORDERFLOW_STATE_DIR/kafka"
    ensure_broker
    start_stack
}

# Drops the $ORDERFLOW_DB_PREFIX databases, so the stack starts from empty.
drop_stack_databases() {
    local db
    for db in orders payments registry simulator inventory notifications analytics notify_simulator; do
        psql "$ORDERFLOW_PG_ADMIN_URL" -qc "drop database if exists \"${ORDERFLOW_DB_PREFIX}_$db\" with (force)" >/dev/null
    done
}

# Every orderflow service, each on its own database; exports the URLs the tools need.
start_stack() {
    local bin="$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE"
    export ORDERFLOW_REGISTRY_URL="http://127.0.0.1:$ORDERFLOW_REGISTRY_PORT"
    export ORDERFLOW_API_URL="http://127.0.0.1:$ORDERFLOW_API_PORT"
    export ORDERFLOW_PROVIDER_URL="http://127.0.0.1:$ORDERFLOW_SIMULATOR_PORT"
    export ORDERFLOW_PROVIDER_ADMIN_URL="http://127.0.0.1:$ORDERFLOW_SIMULATOR_ADMIN_PORT"
    export ORDERFLOW_ORDERS_DATABASE_URL ORDERFLOW_PAYMENTS_DATABASE_URL
    ORDERFLOW_ORDERS_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_orders")"
    ORDERFLOW_PAYMENTS_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_payments")"

    ORDERFLOW_REGISTRY_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_registry")" \
    ORDERFLOW_REGISTRY_LISTEN="127.0.0.1:$ORDERFLOW_REGISTRY_PORT" \
        start_service registry "$ORDERFLOW_REGISTRY_URL/healthz" "$bin/orderflow-registry"
    (cd "$ROOT" && "$bin/orderflow-schemas" register --registry "$ORDERFLOW_REGISTRY_URL" >/dev/null)
    ORDERFLOW_SIMULATOR_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_simulator")" \
    ORDERFLOW_SIMULATOR_LISTEN="127.0.0.1:$ORDERFLOW_SIMULATOR_PORT" \
    ORDERFLOW_SIMULATOR_ADMIN_LISTEN="127.0.0.1:$ORDERFLOW_SIMULATOR_ADMIN_PORT" \
        start_service payment-simulator "$ORDERFLOW_PROVIDER_URL/healthz" "$bin/payment-simulator"
    ORDERFLOW_API_LISTEN="127.0.0.1:$ORDERFLOW_API_PORT" \
        start_service order-api "$ORDERFLOW_API_URL/readyz" "$bin/order-api"
    ORDERFLOW_OUTBOX_DATABASE_URL="$ORDERFLOW_ORDERS_DATABASE_URL" ORDERFLOW_OUTBOX_NAME=orders \
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 25))" start_process relay-orders "$bin/outbox-relay"
    ORDERFLOW_OUTBOX_DATABASE_URL="$ORDERFLOW_PAYMENTS_DATABASE_URL" ORDERFLOW_OUTBOX_NAME=payments \
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 26))" start_process relay-payments "$bin/outbox-relay"
    # The drill starts its own payment instances.
    if [ "${ORDERFLOW_START_PAYMENT:-1}" = 1 ]; then
        ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 21))" start_process payment "$bin/payment"
    fi
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 22))" start_process order-service "$bin/order-service"

    export ORDERFLOW_INVENTORY_DATABASE_URL ORDERFLOW_NOTIFICATIONS_DATABASE_URL ORDERFLOW_ANALYTICS_DATABASE_URL
    ORDERFLOW_INVENTORY_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_inventory")"
    ORDERFLOW_NOTIFICATIONS_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_notifications")"
    ORDERFLOW_ANALYTICS_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_analytics")"
    export ORDERFLOW_NOTIFY_PROVIDER_URL="http://127.0.0.1:$ORDERFLOW_NOTIFY_SIMULATOR_PORT"
    export ORDERFLOW_ANALYTICS_URL="http://127.0.0.1:$ORDERFLOW_ANALYTICS_PORT"
    # First start only: stock for every SKU the demo orders (later runs keep what is left).
    if [ -z "$("$bin/inventory" stock show)" ]; then
        "$bin/inventory" stock set "${ORDERFLOW_DEMO_STOCK[@]}" >/dev/null
    fi
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 23))" start_process inventory "$bin/inventory"
    # inventory's outbox (InventoryShortage) needs its relay like the other two.
    ORDERFLOW_OUTBOX_DATABASE_URL="$ORDERFLOW_INVENTORY_DATABASE_URL" ORDERFLOW_OUTBOX_NAME=inventory \
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 27))" start_process relay-inventory "$bin/outbox-relay"
    ORDERFLOW_NOTIFY_SIMULATOR_DATABASE_URL="$(ensure_database "${ORDERFLOW_DB_PREFIX}_notify_simulator")" \
    ORDERFLOW_NOTIFY_SIMULATOR_LISTEN="127.0.0.1:$ORDERFLOW_NOTIFY_SIMULATOR_PORT" \
        start_service notification-simulator "$ORDERFLOW_NOTIFY_PROVIDER_URL/healthz" "$bin/notification-simulator"
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 24))" start_process notifications "$bin/notifications"
    ORDERFLOW_ANALYTICS_LISTEN="127.0.0.1:$ORDERFLOW_ANALYTICS_PORT" \
        start_service analytics "$ORDERFLOW_ANALYTICS_URL/healthz" "$bin/analytics"
    # Lag per group and partition, read from the broker (demo: :18108/metrics).
    export ORDERFLOW_LAG_EXPORTER_URL="http://127.0.0.1:$((ORDERFLOW_API_PORT + 28))"
    ORDERFLOW_METRICS_LISTEN="127.0.0.1:$((ORDERFLOW_API_PORT + 28))" \
        start_service lag-exporter "$ORDERFLOW_LAG_EXPORTER_URL/healthz" "$bin/lag-exporter"
}

# Opening stock for the demo's SKUs (tools/src/lib.rs): enough for minutes of orders, not for
# ever, so a long demo shows shortages turning into cancellations and refunds.
# ORDERFLOW_STOCK_EACH=N gives every SKU N instead (the drill: payments, not shortages).
ORDERFLOW_DEMO_STOCK=(TEE-BLK-M=50000 TEE-WHT-L=50000 MUG-CLASSIC=50000 CAP-NAVY=50000 SOCK-3PK=50000
    HOODIE-GRY-S=50000 BAG-TOTE=5000 PIN-ENAMEL=1000)
if [ -n "${ORDERFLOW_STOCK_EACH:-}" ]; then
    ORDERFLOW_DEMO_STOCK=("${ORDERFLOW_DEMO_STOCK[@]/=*/=$ORDERFLOW_STOCK_EACH}")
fi

# start_service NAME HEALTH_URL COMMAND...: runs COMMAND in the background (log and pid under
# $ORDERFLOW_STATE_DIR/run), waits for HEALTH_URL. A healthy service already there is reused.
start_service() {
    local name="$1" health="$2"; shift 2
    if curl -fsS -o /dev/null "$health" 2>/dev/null; then
        log "reusing $name (healthy at $health)"
        return
    fi
    launch "$name" "$@"
    if ! wait_http "$health" 60; then
        tail -20 "$ORDERFLOW_STATE_DIR/run/$name.log" >&2
        die "$name did not become healthy at $health"
    fi
}

# Stops what this invocation started, newest first, one at a time (SIGTERM, wait up to 15 s
# for a clean exit, then SIGKILL), so consumers commit while the broker is still up.
stop_started_services() {
    local pid i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${STARTED_PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
    if [ "$STARTED_POSTGRES" = 1 ]; then stop_postgres; STARTED_POSTGRES=0; fi
}
