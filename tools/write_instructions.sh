#!/usr/bin/env bash
# Instructions per write of one API write path, with and without opskit's phases: a figure that,
# unlike TPS or latency on a shared machine, is the same on every run (README, "Write cost").
#
# A throwaway PostgreSQL cluster gets `small` data (opskit seed) plus the path's setup rows (the
# unread messages to mark read, the pending intros to answer), and a clone with every phase
# (opskit migrate); then a single-user backend (`postgres --single`, under valgrind's callgrind)
# runs WRITES writes of the path (opskit.benchmarking.write_cost.write_path_statements: vote is
# the hot-key mix of `bench-writes --breakdown`), each its own transaction, on a fresh clone of
# each: without phases, with phases, with phases and one fold of the deltas afterwards (the
# daemon's job). Startup is taken out by a run of no statement.
#
#   tools/write_instructions.sh [vote|message|message_read|intro|intro_respond]
#                               # PG_BIN=/usr/lib/postgresql/15/bin WRITES=4000
#
# Needs valgrind and PostgreSQL's server binaries; as root, the servers run as user postgres.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
WRITE_PATH=${1:-vote}
WRITES=${WRITES:-4000}
PORT=${PORT:-5499}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OPSKIT="$ROOT/.venv/bin/opskit"
WORK=$(mktemp -d -t opskit-write-instructions.XXXXXX)
DATA="$WORK/data"
as_server_user() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
psql_admin() { psql -h 127.0.0.1 -p "$PORT" -U postgres -q -At "$@"; }
start() {
    as_server_user "$PG_BIN/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w start >/dev/null ||
        { cat "$WORK/server.log" >&2; return 1; }
}
stop() { as_server_user "$PG_BIN/pg_ctl" -D "$DATA" -w stop >/dev/null; }
cleanup() { stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 3; }
[ -x "$OPSKIT" ] || { echo "error: $OPSKIT missing; run \`make .venv/.installed\`" >&2; exit 3; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_server_user "$PG_BIN/initdb" -D "$DATA" -A trust -U postgres >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
start
psql_admin -c "CREATE DATABASE tpl_plain"
OPSKIT_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/tpl_plain" "$OPSKIT" seed --scale small >/dev/null 2>&1
"$ROOT/.venv/bin/python" -c 'import sys; from opskit.benchmarking.write_cost import write_path_statements
setup, measured = write_path_statements(sys.argv[1], sys.argv[2], int(sys.argv[3]))
open(sys.argv[4], "w").write("\n".join(setup) + "\n")
open(sys.argv[5], "w").write("\n".join(measured) + "\n")' \
    "postgresql://postgres@127.0.0.1:$PORT/tpl_plain" "$WRITE_PATH" "$WRITES" \
    "$WORK/setup.sql" "$WORK/writes.sql"
psql_admin -d tpl_plain -f "$WORK/setup.sql" >/dev/null
psql_admin -d tpl_plain -c "VACUUM ANALYZE"
psql_admin -c "CREATE DATABASE tpl_phased TEMPLATE tpl_plain"
OPSKIT_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/tpl_phased" "$OPSKIT" migrate >/dev/null 2>&1
WRITES=$(wc -l <"$WORK/writes.sql")
{ cat "$WORK/writes.sql"; echo "SELECT opskit_fold_user_dashboard_deltas(1000000);";
  echo "SELECT opskit_fold_intro_request_deltas(1000000);"; } >"$WORK/writes_fold.sql"
: >"$WORK/nothing.sql"
stop

# instructions <template> <script>: callgrind's total for one single-user run on a fresh clone
instructions() {
    start
    psql_admin -c "DROP DATABASE IF EXISTS run" -c "CREATE DATABASE run TEMPLATE $1"
    stop
    as_server_user valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$PG_BIN/postgres" --single -D "$DATA" run <"$2" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
plain_start=$(instructions tpl_plain "$WORK/nothing.sql")
plain=$(instructions tpl_plain "$WORK/writes.sql")
phased_start=$(instructions tpl_phased "$WORK/nothing.sql")
phased=$(instructions tpl_phased "$WORK/writes.sql")
phased_fold=$(instructions tpl_phased "$WORK/writes_fold.sql")
per_write() { echo $(( ($1 - $2) / WRITES )); }
a=$(per_write "$plain" "$plain_start")
b=$(per_write "$phased" "$phased_start")
c=$(per_write "$phased_fold" "$phased_start")
echo "instructions per $WRITE_PATH write ($WRITES writes, $("$PG_BIN/postgres" --version))"
echo "  no phases                      $a"
echo "  all phases                     $b   (ceiling $(( (200 * a / b + 1) / 2 ))% of baseline)"
echo "  all phases, with the fold      $c   (ceiling $(( (200 * a / c + 1) / 2 ))% of baseline)"
