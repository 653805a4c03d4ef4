#!/usr/bin/env bash
# The image's entrypoint (and tests/test_docker.py runs it as it is, without Docker).
# First start: initdb, password auth on the network, vector + bitpress created in the
# default database. Then run the server in the foreground.
# PGDATA and PGPORT as usual; BITPRESS_SOCKET_DIR (default /var/run/postgresql).
set -euo pipefail
sockets="${BITPRESS_SOCKET_DIR:-/var/run/postgresql}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    pwfile="$(mktemp)"; printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    printf "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories='$sockets'" -w start >/dev/null
    PGPASSWORD="$POSTGRES_PASSWORD" psql -q -U postgres -h "$sockets" -d postgres \
        -c "CREATE EXTENSION IF NOT EXISTS vector" -c "CREATE EXTENSION IF NOT EXISTS bitpress"
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories="$sockets"
