#!/usr/bin/env bash
# The main job: installs what is missing, brings the local stack up (Postgres, schema registry),
# registers the event schemas, and shows the registry live until ctrl-c, then stops what it
# started. Safe to run twice: running services are reused, never clobbered.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_apt_packages
ensure_tansu
ensure_postgres
build_workspace

BIN="$CARGO_TARGET_DIR/debug"
REGISTRY_URL="http://127.0.0.1:$ORDERFLOW_REGISTRY_PORT"
trap 'stop_started_services; log "stopped"; exit 0' INT TERM
trap 'stop_started_services' EXIT

ORDERFLOW_REGISTRY_DATABASE_URL="$(ensure_database orderflow_registry)" \
ORDERFLOW_REGISTRY_LISTEN="127.0.0.1:$ORDERFLOW_REGISTRY_PORT" \
    start_service registry "$REGISTRY_URL/healthz" "$BIN/orderflow-registry"

log "registering the event schemas"
(cd "$ROOT" && "$BIN/orderflow-schemas" register --registry "$REGISTRY_URL")
(cd "$ROOT" && "$BIN/orderflow-schemas" check --registry "$REGISTRY_URL")

log "stack is up: registry at $REGISTRY_URL, Postgres at 127.0.0.1:$ORDERFLOW_PG_PORT. ctrl-c stops."
while true; do
    if subjects="$(curl -fsS "$REGISTRY_URL/subjects")"; then
        printf '%s  registry healthy, %s subjects\n' "$(date +%T)" "$(tr ',' '\n' <<<"$subjects" | grep -c .)"
    else
        printf '%s  registry unreachable\n' "$(date +%T)"
    fi
    sleep 10
done
