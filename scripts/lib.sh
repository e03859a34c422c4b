#!/usr/bin/env bash
# Shared by scripts/demo.sh and scripts/test.sh: install what is missing, start what is not
# running. Every function is safe to run twice; nothing already listening is clobbered.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# debug (fast to build) or release (what the benchmark measures).
export ORDERFLOW_PROFILE="${ORDERFLOW_PROFILE:-debug}"
export ORDERFLOW_STATE_DIR="${ORDERFLOW_STATE_DIR:-/var/tmp/orderflow}"
export ORDERFLOW_PG_PORT="${ORDERFLOW_PG_PORT:-55432}"
export ORDERFLOW_REGISTRY_PORT="${ORDERFLOW_REGISTRY_PORT:-18081}"
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_KAFKA_PORT:-19092}"
export ORDERFLOW_API_PORT="${ORDERFLOW_API_PORT:-18080}"
export ORDERFLOW_SIMULATOR_PORT="${ORDERFLOW_SIMULATOR_PORT:-18090}"
export ORDERFLOW_SIMULATOR_ADMIN_PORT="${ORDERFLOW_SIMULATOR_ADMIN_PORT:-18089}"
export ORDERFLOW_NOTIFY_SIMULATOR_PORT="${ORDERFLOW_NOTIFY_SIMULATOR_PORT:-18091}"
export ORDERFLOW_ANALYTICS_PORT="${ORDERFLOW_ANALYTICS_PORT:-18082}"
# Database names are <prefix>_orders, <prefix>_payments, … (the benchmark uses its own).
export ORDERFLOW_DB_PREFIX="${ORDERFLOW_DB_PREFIX:-orderflow}"
# The broker's controller listener (KRaft); the broker itself is on ORDERFLOW_KAFKA_PORT.
export ORDERFLOW_KAFKA_CONTROLLER_PORT="${ORDERFLOW_KAFKA_CONTROLLER_PORT:-$((ORDERFLOW_KAFKA_PORT + 1))}"
# Apache Kafka's jars (ops/kafka/pom.xml) are fetched once into this cache, outside the clone.
export ORDERFLOW_CACHE="${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}"
STARTED_POSTGRES=0

log() { printf '\033[1m[orderflow]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[orderflow] error:\033[0m %s\n' "$*" >&2; exit 1; }

# The build goes outside the checkout, to $ORDERFLOW_CACHE/target, shared by checkouts so that
# dependencies build once. Cargo decides a workspace crate is up to date by file times, not
# contents, so a checkout whose files are older than another checkout's build would run that
# build. The directory therefore records the checkout that built in it last
# (.orderflow-checkout); another checkout first removes the workspace's own artifacts there
# (dependencies stay) and rebuilds them. A checkout holds the directory (a shared flock on fd 9,
# inherited by what it starts) while its script runs; a different checkout arriving meanwhile
# builds in a directory of its own, $ORDERFLOW_CACHE/target-<checkout hash>. A CARGO_TARGET_DIR
# set by the caller is used as it is.
choose_target_dir() {
    [ -n "${CARGO_TARGET_DIR:-}" ] && return
    local shared="$ORDERFLOW_CACHE/target" marker last
    marker="$shared/.orderflow-checkout"
    mkdir -p "$shared"
    exec 9>>"$shared/.orderflow-lock"
    flock -s 9
    if [ "$(cat "$marker" 2>/dev/null)" != "$ROOT" ]; then
        flock -u 9
        if ! flock -x -n 9; then
            export CARGO_TARGET_DIR="$ORDERFLOW_CACHE/target-$(printf %s "$ROOT" | sha256sum | cut -c1-12)"
            log "another checkout is using $shared; building this one in $CARGO_TARGET_DIR"
            return
        fi
        last="$(cat "$marker" 2>/dev/null || true)"
        if [ -n "$last" ] && [ "$last" != "$ROOT" ]; then
            log "$shared was last built from $last: removing the workspace's artifacts there (dependencies stay)"
            local members
            members="$(cd "$ROOT" && cargo metadata --no-deps --format-version 1 |
                python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')"
            # shellcheck disable=SC2086 # one -p per package
            (cd "$ROOT" && CARGO_TARGET_DIR="$shared" cargo clean --quiet $members)
            (cd "$ROOT" && CARGO_TARGET_DIR="$shared" cargo clean --quiet --release $members)
        fi
        printf '%s\n' "$ROOT" >"$marker"
        flock -s 9
    fi
    export CARGO_TARGET_DIR="$shared"
}
choose_target_dir

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# Debian packages the build and the local stack need.
ensure_apt_packages() {
    # prometheus: promtool checks the alert rules, and the dashboards are tested on a live server.
    # docker-compose: `docker-compose config` checks docker-compose.yml (no Docker engine needed).
    # python3-venv: the deployment tests' own Python environment (ensure_python_tools).
    local wanted=(build-essential pkg-config libssl-dev zlib1g-dev postgresql postgresql-client curl ca-certificates
        python3 python3-venv prometheus docker-compose)
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The deployment tests' Python packages, pinned, in a virtualenv of the project's own (Debian's
# Python refuses system-wide pip installs). Exports ORDERFLOW_PYTHON.
PYTHON_TOOLS=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.2)
ensure_python_tools() {
    local venv="${ORDERFLOW_VENV:-$HOME/.cache/orderflow/venv}"
    export ORDERFLOW_PYTHON="$venv/bin/python"
    if [ -x "$ORDERFLOW_PYTHON" ] && "$ORDERFLOW_PYTHON" - "${PYTHON_TOOLS[@]}" <<'PY' 2>/dev/null; then return; fi
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
    log "installing the deployment tests' Python packages into $venv"
    [ -x "$ORDERFLOW_PYTHON" ] || python3 -m venv "$venv" || die "cannot create a virtualenv (Debian: apt-get install python3-venv)"
    "$ORDERFLOW_PYTHON" -m pip install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$dir" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql"
    echo "$dir"
}

# From /, so the postgres user never trips over a caller's directory it cannot enter (/root/…).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# A project-local cluster on 127.0.0.1:$ORDERFLOW_PG_PORT (initdb refuses root, so it runs as
# the postgres user). Exports ORDERFLOW_PG_ADMIN_URL. Set it yourself to use another server.
ensure_postgres() {
    if [ -n "${ORDERFLOW_PG_ADMIN_URL:-}" ]; then
        psql "$ORDERFLOW_PG_ADMIN_URL" -Atqc 'select 1' >/dev/null || die "cannot reach ORDERFLOW_PG_ADMIN_URL"
        return
    fi
    local bin data owner
    bin="$(pg_bin)"
    data="${ORDERFLOW_PG_DIR:-/var/tmp/orderflow/pg}"
    owner="$(id -un)"; [ "$(id -u)" -eq 0 ] && owner=postgres
    export ORDERFLOW_PG_ADMIN_URL="postgres://$owner@127.0.0.1:$ORDERFLOW_PG_PORT/postgres"
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$ORDERFLOW_PG_PORT"; then
        psql "$ORDERFLOW_PG_ADMIN_URL" -Atqc 'select 1' >/dev/null \
            || die "something on port $ORDERFLOW_PG_PORT answers as Postgres but refuses $ORDERFLOW_PG_ADMIN_URL; set ORDERFLOW_PG_PORT or ORDERFLOW_PG_ADMIN_URL"
        log "reusing Postgres on 127.0.0.1:$ORDERFLOW_PG_PORT"
        return
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$ORDERFLOW_PG_PORT") 2>/dev/null; then
        die "port $ORDERFLOW_PG_PORT is taken by something that is not Postgres; set ORDERFLOW_PG_PORT"
    fi
    as_root mkdir -p "$ORDERFLOW_STATE_DIR"
    as_root chmod 755 "$ORDERFLOW_STATE_DIR"
    if [ ! -s "$data/PG_VERSION" ]; then
        log "creating a Postgres cluster in $data"
        as_root mkdir -p "$data"
        [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data"
        chmod 700 "$data"
        as_postgres "$bin/initdb" -D "$data" --auth=trust --username="$owner" -E UTF8 >/dev/null
    fi
    log "starting Postgres on 127.0.0.1:$ORDERFLOW_PG_PORT"
    STARTED_POSTGRES=1
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start \
        -o "-p $ORDERFLOW_PG_PORT -k $data -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB -c wal_level=logical" >/dev/null \
        || { tail -20 "$data/server.log" >&2; die "Postgres did not start"; }
}

stop_postgres() {
    local data="${ORDERFLOW_PG_DIR:-/var/tmp/orderflow/pg}"
    [ -s "$data/postmaster.pid" ] || return 0
    log "stopping Postgres ($data)"
    as_postgres "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
}

# Creates database $1 if missing; prints its URL.
ensure_database() {
    local name="$1"
    if ! psql "$ORDERFLOW_PG_ADMIN_URL" -Atqc "select 1 from pg_database where datname = '$name'" | grep -q 1; then
        psql "$ORDERFLOW_PG_ADMIN_URL" -qc "create database \"$name\"" >/dev/null
    fi
    echo "${ORDERFLOW_PG_ADMIN_URL%/*}/$name"
}

build_workspace() {
    log "building the workspace ($ORDERFLOW_PROFILE, target: $CARGO_TARGET_DIR)"
    local flags=(--workspace --bins --quiet)
    [ "$ORDERFLOW_PROFILE" = release ] && flags+=(--release)
    (cd "$ROOT" && cargo build "${flags[@]}")
}

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

source "$ROOT/scripts/lib_kafka.sh"

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
