#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server on 127.0.0.1, e.g. for .ci/run:
#
#   scripts/with_postgres.sh .venv/bin/pytest -m postgres
#
# The server's URL is exported as AUTOML_TEST_POSTGRES_URL (the postgres tests use it). It
# runs from Debian's binaries (apt-get install -y postgresql) in a temporary directory with
# trust authentication, as the postgres user when run as root (PostgreSQL refuses root),
# and is stopped by its PID when the command ends. Without PostgreSQL binaries the command
# runs without a server and the postgres tests skip themselves, saying why.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

bindir=""
if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    bindir="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
else
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then bindir="$d"; break; fi
    done
fi
if [ -z "$bindir" ]; then
    echo "with_postgres: no PostgreSQL binaries found (apt-get install -y postgresql); running without a server" >&2
    exec "$@"
fi

base="$(mktemp -d /tmp/automl-pg-XXXXXX)"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$base"
    as_pg=(runuser -u postgres --)
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid"
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -rf "$base"
}
trap cleanup EXIT

"${as_pg[@]}" "$bindir/initdb" -D "$base/data" -A trust -U postgres --no-sync >"$base/initdb.log" 2>&1 \
    || { cat "$base/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$bindir/pg_ctl" -D "$base/data" -l "$base/server.log" -w \
    -o "-p $port -k $base -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { cat "$base/server.log" >&2; exit 1; }
pid="$(head -n 1 "$base/data/postmaster.pid")"
"${as_pg[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres automl

export AUTOML_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/automl"
echo "with_postgres: PostgreSQL (pid $pid) at $AUTOML_TEST_POSTGRES_URL" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
