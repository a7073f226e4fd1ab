#!/usr/bin/env bash
# Install (Debian packages) and start a PostgreSQL server on loopback for the storage tests, then
# print the URL the tests read from DGKD_TEST_POSTGRES_URL. Idempotent.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGDATA=${DGKD_PGDATA:-/tmp/dgkd-pgdata}
PGPORT=${DGKD_PGPORT:-55432}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  rm -rf "$PGDATA"
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
fi
if ! runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k /tmp" start >/dev/null
fi
runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -U postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='dgkd_test'" | grep -q 1 ||
  runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qc "CREATE DATABASE dgkd_test" >/dev/null
echo "postgresql+psycopg2://postgres@127.0.0.1:$PGPORT/dgkd_test"
