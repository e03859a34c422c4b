#!/usr/bin/env bash
# The whole test suite on real parts: installs what is missing, starts a project-local Postgres
# and the suite's Apache Kafka, then runs every test in the workspace (each test makes its own
# database, and its own topics and consumer groups under a namespace on the shared broker) and
# the schema check.
# The suite's broker has its own port and state, apart from the demo's; a fresh log every run.
export ORDERFLOW_STATE_DIR="${ORDERFLOW_TEST_STATE_DIR:-/var/tmp/orderflow-test}"
export ORDERFLOW_KAFKA_PORT="${ORDERFLOW_TEST_KAFKA_PORT:-49092}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_apt_packages
ensure_python_tools
ensure_browser_tools
ensure_kafka
ensure_connect
trap stop_started_services EXIT
ensure_postgres

# Databases left by an earlier, interrupted run (and the replication slots a killed Kafka
# Connect worker of theirs left, which would keep them from being dropped).
psql "$ORDERFLOW_PG_ADMIN_URL" -Atqc "select pg_drop_replication_slot(slot_name) from pg_replication_slots
    where database like 'oft\_%' and not active" >/dev/null
psql "$ORDERFLOW_PG_ADMIN_URL" -Atqc "select datname from pg_database where datname like 'oft\_%'" |
    while read -r db; do psql "$ORDERFLOW_PG_ADMIN_URL" -qc "drop database if exists \"$db\" with (force)" >/dev/null; done

cd "$ROOT"
log "checking the event schemas (the PR workflow's check)"
cargo run --quiet -p orderflow-schemas -- check

# Tests that run a service as a process (the relay SIGKILL test) start its binary from the
# target directory; `cargo test` builds test harnesses, not the plain binaries.
log "building the service binaries"
cargo build --workspace --bins --quiet

port_open "$ORDERFLOW_KAFKA_PORT" || rm -rf "$ORDERFLOW_STATE_DIR/kafka"
ensure_broker

log "running the test suite"
export ORDERFLOW_TEST_PG_ADMIN_URL="$ORDERFLOW_PG_ADMIN_URL"
# Tests share this broker, each under its own namespace; a test that kills its broker starts
# one of its own from ORDERFLOW_KAFKA_LIBS with ORDERFLOW_JAVA.
export ORDERFLOW_TEST_KAFKA_BOOTSTRAP="$ORDERFLOW_KAFKA_BOOTSTRAP"
log_file="$(mktemp)"
set +e
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log_file"
status=${PIPESTATUS[0]}
# The deployment checks: the Helm chart (Helm's SDK, kubernetes-validate), docker-compose.yml,
# the Debezium connector. Python's unittest, counted in the same closing line.
log "checking the Helm chart, docker-compose.yml and the connector"
"$ORDERFLOW_PYTHON" -m unittest discover -s tests/deploy -v 2>&1 | grep -v 'WARN missing required values' | tee -a "$log_file"
deploy_status=${PIPESTATUS[0]}
# The scripts themselves: Kafka's cache fetched once and again when damaged; two checkouts
# sharing one build directory (a cold build of the schema crate: a few minutes).
log "checking the scripts' Kafka cache and checkouts sharing a build directory"
"$ORDERFLOW_PYTHON" -m unittest discover -s tests/scripts -v 2>&1 | tee -a "$log_file"
scripts_status=${PIPESTATUS[0]}
"$ORDERFLOW_PYTHON" -m unittest discover -s tests/checkouts -v 2>&1 | tee -a "$log_file"
checkouts_status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one "test result" per binary; unittest
# prints "Ran N tests" and then "OK" or "FAILED (failures=F, errors=E)").
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     /^Ran [0-9]+ tests? in/ { ran += $2 }
     /^FAILED \(/ { if (match($0, /failures=[0-9]+/)) uf += substr($0, RSTART + 9, RLENGTH - 9)
                    if (match($0, /errors=[0-9]+/)) uf += substr($0, RSTART + 7, RLENGTH - 7) }
     END { printf "orderflow: %d passed, %d failed\n", p + ran - uf, f + uf }' "$log_file"
rm -f "$log_file"
# A test binary that does not compile reports no "test result" line: say so rather than "0 failed".
[ "$status" -eq 0 ] || log "cargo test exited with status $status (a failure above, or a test binary that did not build)"
[ "$status" -eq 0 ] && [ "$deploy_status" -eq 0 ] && [ "$scripts_status" -eq 0 ] && [ "$checkouts_status" -eq 0 ]
