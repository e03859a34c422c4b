#!/bin/sh
# Registers (or updates) one Debezium outbox connector per outbox database, from
# outbox-connector.json with ${OUTBOX_*} filled in. Idempotent: PUT
# /connectors/<name>/config creates or replaces. POSIX sh + sed + curl (the curl image has them).
#   CONNECT_URL=http://connect:8083 OUTBOX_DATABASES="orders payments inventory" \
#   OUTBOX_DB_HOST=postgres OUTBOX_DB_USER=orderflow OUTBOX_DB_PASSWORD=... ./register.sh
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONNECT_URL:?set CONNECT_URL, e.g. http://connect:8083}"
: "${OUTBOX_DB_HOST:?set OUTBOX_DB_HOST}" "${OUTBOX_DB_USER:?set OUTBOX_DB_USER}" "${OUTBOX_DB_PASSWORD:?set OUTBOX_DB_PASSWORD}"
OUTBOX_DB_PORT="${OUTBOX_DB_PORT:-5432}"
escape() { printf '%s' "$1" | sed -e 's/[\/&|]/\\&/g' -e 's/"/\\\\"/g'; }
for db in ${OUTBOX_DATABASES:-orders payments inventory}; do
    config="$(sed -e "s|\${OUTBOX_DB_HOST}|$(escape "$OUTBOX_DB_HOST")|g" \
                  -e "s|\${OUTBOX_DB_PORT}|$(escape "$OUTBOX_DB_PORT")|g" \
                  -e "s|\${OUTBOX_DB_USER}|$(escape "$OUTBOX_DB_USER")|g" \
                  -e "s|\${OUTBOX_DB_PASSWORD}|$(escape "$OUTBOX_DB_PASSWORD")|g" \
                  -e "s|\${OUTBOX_DATABASE}|$(escape "$db")|g" "$here/outbox-connector.json")"
    echo "registering orderflow-outbox-$db"
    printf '%s' "$config" | curl -fsS -X PUT -H 'Content-Type: application/json' --data-binary @- \
        "$CONNECT_URL/connectors/orderflow-outbox-$db/config" >/dev/null
done
echo "done: $(curl -fsS "$CONNECT_URL/connectors")"
