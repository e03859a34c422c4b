# The project-local Postgres cluster and its databases.
# Sourced by scripts/lib.sh (which sets ROOT, the ORDERFLOW_* defaults, log and die).

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
