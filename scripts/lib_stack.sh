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
LAUNCH_ENV=()

# launch NAME COMMAND...: runs COMMAND in its own session (a terminal's ctrl-c reaches only the
# script, which stops services in order), logs and pid under $ORDERFLOW_STATE_DIR/run.
launch() {
    local name="$1"; shift
    local run="$ORDERFLOW_STATE_DIR/run"
    mkdir -p "$run"
    log "starting $name (log: $run/$name.log)"
    # LAUNCH_ENV (NAME=value …) is exported in the child only: a database URL never appears in
    # a command line, where every user's `ps` could read it.
    (
        [ "${#LAUNCH_ENV[@]}" -eq 0 ] || export "${LAUNCH_ENV[@]}"
        exec setsid nohup "$@"
    ) >"$run/$name.log" 2>&1 &
    echo "$!" >"$run/$name.pid"
    STARTED_PIDS+=("$!")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

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
    local db databases
    databases="$(python3 "$ROOT/scripts/manifest.py" databases)" || die "the service manifest is broken (above)"
    for db in $databases; do
        psql "$ORDERFLOW_PG_ADMIN_URL" -qc "drop database if exists \"${ORDERFLOW_DB_PREFIX}_$db\" with (force)" >/dev/null
    done
}

# secret_file NAME VALUE: VALUE in $ORDERFLOW_STATE_DIR/secrets/NAME (mode 600); prints the path.
# Services are given secrets as files (`<SETTING>_FILE`), as the chart and compose give them.
secret_file() {
    local dir="$ORDERFLOW_STATE_DIR/secrets"
    mkdir -p "$dir" && chmod 700 "$dir"
    (umask 077 && printf '%s\n' "$2" >"$dir/$1")
    echo "$dir/$1"
}

# Every service of the manifest (ops/services.toml), in its order, each on its own database and
# ports (ORDERFLOW_PORT_BASE + the manifest's offset); ORDERFLOW_SKIP_SERVICES="a b" leaves some
# out (the drill starts its own payment instances). Exports each listener's url_env and each
# database's ORDERFLOW_<DATABASE>_DATABASE_URL_FILE for the tools.
start_stack() {
    local lines line name binary database database_env health listens env_list reads
    lines="$(python3 "$ROOT/scripts/manifest.py" shell)" || die "the service manifest is broken (above)"
    mapfile -t lines <<<"$lines"
    for line in "${lines[@]}"; do
        IFS='|' read -r name binary database database_env health listens env_list reads <<<"$line"
        if [[ " ${ORDERFLOW_SKIP_SERVICES:-} " == *" $name "* ]]; then
            log "not starting $name (ORDERFLOW_SKIP_SERVICES)"
            continue
        fi
        start_manifest_service "$name" "$binary" "$database" "$database_env" "$health" "$listens" "$env_list" "$reads"
    done
}

# start_manifest_service NAME BINARY DATABASE DATABASE_ENV HEALTH LISTENS ENV READS: one manifest
# line.
start_manifest_service() {
    local name="$1" binary="$2" database="$3" database_env="$4" health="$5" listens="$6" env_list="$7" reads="${8:-}"
    local vars=() listeners=() settings=() url listener env offset url_env port first_port="" setting read file
    if [ -n "$database" ]; then
        url="$(ensure_database "${ORDERFLOW_DB_PREFIX}_$database")"
        url="$(secret_file "$database-database-url" "$url")"
        export "ORDERFLOW_${database^^}_DATABASE_URL_FILE=$url"
        vars+=("${database_env}_FILE=$url")
    fi
    # The databases it reads: their owners, started before it, exported their URL files.
    IFS=',' read -ra settings <<<"$reads"
    for read in "${settings[@]}"; do
        file="ORDERFLOW_${read^^}_DATABASE_URL_FILE"
        [ -n "${!file:-}" ] && vars+=("$file=${!file}")
    done
    settings=()
    IFS=',' read -ra listeners <<<"$listens"
    for listener in "${listeners[@]}"; do
        IFS=':' read -r env offset url_env <<<"$listener"
        port=$((ORDERFLOW_PORT_BASE + offset))
        first_port="${first_port:-$port}"
        vars+=("$env=127.0.0.1:$port")
        [ -z "$url_env" ] || export "$url_env=http://127.0.0.1:$port"
    done
    if [ -n "$env_list" ]; then
        IFS=',' read -ra settings <<<"$env_list"
        for setting in "${settings[@]}"; do vars+=("$setting"); done
    fi
    if declare -F "before_start_${name//-/_}" >/dev/null; then "before_start_${name//-/_}"; fi
    LAUNCH_ENV=("${vars[@]}")
    start_service "$name" "http://127.0.0.1:$first_port$health" "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/$binary"
    LAUNCH_ENV=()
    if declare -F "after_start_${name//-/_}" >/dev/null; then "after_start_${name//-/_}"; fi
}

# The registry's one writer on the local stack: schema-admin, with a password made once under
# $ORDERFLOW_STATE_DIR/auth (registry-password, mode 600) and its bcrypt hash in registry-users.
# Only the schema workflow gets it; the services read schemas without credentials.
before_start_registry() {
    make_login registry-password registry-users orderflow-registry --user schema-admin
    export ORDERFLOW_REGISTRY_USERS_FILE="$ORDERFLOW_STATE_DIR/auth/registry-users"
}

# make_login PASSWORD_FILE USERS_FILE BINARY ARGS...: once, a random password in
# $ORDERFLOW_STATE_DIR/auth/PASSWORD_FILE and its users-file line (`BINARY hash-password ARGS`)
# in USERS_FILE, both mode 600.
make_login() {
    local auth="$ORDERFLOW_STATE_DIR/auth" password="$1" users="$2" binary="$3"
    shift 3
    mkdir -p "$auth"
    if [ ! -s "$auth/$users" ] || [ ! -s "$auth/$password" ]; then
        (umask 077
         head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$auth/$password"
         "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/$binary" hash-password "$@" <"$auth/$password" >"$auth/$users")
    fi
}

# The stack's two set-up steps: every event schema once the registry is up (as its one writer);
# opening stock before inventory first starts (later runs keep what is left).
after_start_registry() {
    (cd "$ROOT" && ORDERFLOW_REGISTRY_USER=schema-admin ORDERFLOW_REGISTRY_PASSWORD_FILE="$ORDERFLOW_STATE_DIR/auth/registry-password" \
        "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-schemas" register --registry "$ORDERFLOW_REGISTRY_URL" >/dev/null)
}

# order-api trusts a development issuer on the local stack: a signing key made once under
# $ORDERFLOW_STATE_DIR/auth (orderflow-token keygen) whose JWKS order-api reads; the demo, bench
# and drill mint their tokens with it (ORDERFLOW_API_TOKEN_KEY). For curl:
#   export TOKEN=$(orderflow-token sign --key $ORDERFLOW_STATE_DIR/auth/issuer.pem --issuer orderflow-local --subject me --scope "orders:write orders:read")
before_start_order_api() {
    local auth="$ORDERFLOW_STATE_DIR/auth"
    "$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/orderflow-token" keygen --dir "$auth" >/dev/null
    export ORDERFLOW_API_JWKS_FILE="$auth/jwks.json" ORDERFLOW_API_JWT_ISSUER=orderflow-local
    export ORDERFLOW_API_TOKEN_KEY="$auth/issuer.pem"
}

# The payment provider's API key on the local stack: made once, handed as a file to the simulator
# (which then refuses callers without it) and to payment (which sends it).
before_start_payment_simulator() {
    local file="$ORDERFLOW_STATE_DIR/secrets/provider-api-key"
    [ -s "$file" ] || secret_file provider-api-key "sk_local_$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >/dev/null
    export ORDERFLOW_SIMULATOR_API_KEY_FILE="$file" ORDERFLOW_PROVIDER_API_KEY_FILE="$file"
}

# The console's one operator on the local stack: oncall, with a password made once under
# $ORDERFLOW_STATE_DIR/auth (console-password, mode 600) and its bcrypt hash in
# console-operators. Reading the console needs nothing; replay, triage and rewind sign in.
before_start_console() {
    make_login console-password console-operators orderflow-console --user oncall --cost 10
    export ORDERFLOW_CONSOLE_OPERATORS_FILE="$ORDERFLOW_STATE_DIR/auth/console-operators"
}

before_start_inventory() {
    local inventory="$CARGO_TARGET_DIR/$ORDERFLOW_PROFILE/inventory"
    if [ -z "$("$inventory" stock show)" ]; then
        "$inventory" stock set "${ORDERFLOW_DEMO_STOCK[@]}" >/dev/null
    fi
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
    # A second ctrl-c (or TERM) while stopping would abandon what is still running.
    trap '' INT TERM
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid="${STARTED_PIDS[$i]}"
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
    if [ "$STARTED_POSTGRES" = 1 ]; then stop_postgres; STARTED_POSTGRES=0; fi
}
