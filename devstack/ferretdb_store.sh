#!/bin/bash
# The MongoDB-wire store of the local stack (devstack/servers.py start_ferretdb) and of the node's
# mongodb substitute image (images/substitutes/mongodb): FerretDB 1.24 on a PostgreSQL of its own,
# one process tree that starts and stops as one. Every wait is bounded.
#
#   STORE_PG_DATA   PostgreSQL's data folder (made by initdb on first start)
#   STORE_PG_PORT   PostgreSQL's port, on 127.0.0.1 only (no unix socket); default 5432
#   STORE_PG_BIN    the folder of initdb/postgres/psql/pg_isready; default the newest /usr/lib/postgresql/*/bin
#   STORE_PG_USER   run as root, PostgreSQL (which refuses root) runs as this user; default postgres
#   STORE_PG_LOG    PostgreSQL's log file; default stderr
#   STORE_SQL       applied at every start: devstack/ferretdb_postgresql.sql (why: see there)
#   STORE_FERRETDB  the ferretdb binary; its other flags come from FERRETDB_* as usual
set -u
: "${STORE_PG_DATA:?}" "${STORE_SQL:?}"
port=${STORE_PG_PORT:-5432}
bin=${STORE_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
# PostgreSQL's output goes to fd 3: its log file, or this script's own stderr (the container's log).
if [ -n "${STORE_PG_LOG:-}" ]; then exec 3>>"$STORE_PG_LOG"; else exec 3>&2; fi
log=${STORE_PG_LOG:-stderr}
say() { echo "ferretdb_store: $*" >&2; }
[ -x "$bin/postgres" ] || { say "no PostgreSQL server in '$bin' (Debian: apt-get install postgresql-15)"; exit 1; }

as_pg=()
if [ "$(id -u)" = 0 ]; then
    # setpriv execs in place (no su/runuser parent in between), so the PID waited on and
    # signalled below is the postmaster itself.
    user=${STORE_PG_USER:-postgres}
    as_pg=(setpriv "--reuid=$user" "--regid=$(id -g "$user")" --init-groups --)
    mkdir -p "$STORE_PG_DATA" && chown "$user:" "$STORE_PG_DATA" && chmod 0700 "$STORE_PG_DATA"
fi
if [ ! -s "$STORE_PG_DATA/PG_VERSION" ]; then
    # C locale and UTF8: what FerretDB checks for at connect. Trust on 127.0.0.1: only FerretDB,
    # beside it, connects; clients authenticate to FerretDB.
    "${as_pg[@]}" "$bin/initdb" --pgdata="$STORE_PG_DATA" --username=postgres --auth=trust \
        --encoding=UTF8 --locale=C >&3 2>&3 || { say "initdb failed (see $log)"; exit 1; }
fi

pg="" ferretdb=""
stop() {
    trap - TERM INT
    [ -n "$ferretdb" ] && kill -TERM "$ferretdb" 2>/dev/null && wait "$ferretdb"
    # Fast shutdown: committed transactions are in the WAL; open ones (none once FerretDB is gone) roll back.
    [ -n "$pg" ] && kill -INT "$pg" 2>/dev/null && wait "$pg"
}
trap 'stop; exit 0' TERM INT

# plan_cache_mode: see STORE_SQL. fsync and synchronous_commit stay on: a stored purchase is
# durable before the consumer commits its Kafka offset, as on SQLite.
"${as_pg[@]}" "$bin/postgres" -D "$STORE_PG_DATA" -c listen_addresses=127.0.0.1 -c port="$port" \
    -c unix_socket_directories= -c plan_cache_mode=force_custom_plan -c jit=off \
    >&3 2>&3 &
pg=$!
ready_by=$((SECONDS + 60))
until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 1; do
    kill -0 "$pg" 2>/dev/null || { say "PostgreSQL exited at start (see $log)"; exit 1; }
    [ "$SECONDS" -lt "$ready_by" ] || { say "PostgreSQL not ready within 60 s"; stop; exit 1; }
    sleep 0.1
done
PGOPTIONS="-c client_min_messages=warning" "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" \
    -U postgres -d postgres -f "$STORE_SQL" || { say "applying $STORE_SQL failed"; stop; exit 1; }

# Sort and limit pushdown (our patch of FerretDB, devstack/ferretdb-sort-limit-pushdown.patch):
# without it FerretDB reads every purchase of a user to sort them and return one page. A real
# MongoDB needs nothing of the kind: its (userId, timestamp, eventId) index serves sort and limit.
FERRETDB_TEST_ENABLE_SORT_LIMIT_PUSHDOWN=${FERRETDB_TEST_ENABLE_SORT_LIMIT_PUSHDOWN:-true} \
FERRETDB_HANDLER=pg FERRETDB_POSTGRESQL_URL="postgres://postgres@127.0.0.1:$port/postgres" \
    "${STORE_FERRETDB:-ferretdb}" 3>&- &
ferretdb=$!
# Either one ending ends the store (the orchestrator restarts it, or the stack reports it).
wait -n "$pg" "$ferretdb"
code=$?
say "$( kill -0 "$pg" 2>/dev/null && echo FerretDB || echo PostgreSQL ) exited ($code); stopping the store"
stop
exit "$code"
