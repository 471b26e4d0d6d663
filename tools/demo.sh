#!/usr/bin/env bash
# Self-contained etcdsync demo on a fresh machine:
#   1. private PostgreSQL + etcd from tools/testenv.sh (state in target/demo; installs what is missing)
#   2. a sample schema with a few rows
#   3. `etcdsync run --config-file examples/quickstart.yaml` in the background
#   4. `etcdctl get --prefix /etcdsync` once the snapshot is in etcd
#   5. live changes in PostgreSQL, seen arriving by `etcdctl watch`
#   6. SIGTERM: etcdsync stops cleanly; the checkpoint it left is shown
# DEMO_KEEP=1 leaves the servers running (tools/testenv.sh stop with ETCDSYNC_TESTENV_DIR=target/demo).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd -- "$REPO_ROOT"
export ETCDSYNC_TESTENV_DIR=${ETCDSYNC_TESTENV_DIR:-$REPO_ROOT/target/demo}
[[ -f $HOME/.cargo/env ]] && ! command -v cargo >/dev/null 2>&1 && . "$HOME/.cargo/env"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

etcdsync_pid=""
watch_pid=""
cleanup() {
    local rc=$?
    [[ -n $watch_pid ]] && kill "$watch_pid" 2>/dev/null || true
    [[ -n $etcdsync_pid ]] && kill "$etcdsync_pid" 2>/dev/null || true
    if [[ ${DEMO_KEEP:-0} != 1 ]]; then "$SCRIPT_DIR/testenv.sh" stop >/dev/null 2>&1 || true; fi
    exit "$rc"
}
trap cleanup EXIT

step "Starting private PostgreSQL and etcd (tools/testenv.sh, state in $ETCDSYNC_TESTENV_DIR)"
"$SCRIPT_DIR/testenv.sh" start
# shellcheck disable=SC1091
. "$ETCDSYNC_TESTENV_DIR/env"
export ETCDCTL_API=3
etcdctl() { command etcdctl --endpoints="$ETCDSYNC_TEST_ETCD" "$@"; }
sql() { psql "$ETCDSYNC_TEST_PG" -v ON_ERROR_STOP=1 -q -c "$1"; }

step "Building etcdsync"
cargo build -q -p etcdsync-cli
bin=$REPO_ROOT/target/debug/etcdsync

step "Creating a sample schema"
sql "CREATE TABLE services (name text PRIMARY KEY, port int NOT NULL, tags text[], meta jsonb, updated_at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE settings (service text, name text, value text, PRIMARY KEY (service, name));
     INSERT INTO services (name, port, tags, meta) VALUES
       ('billing', 8080, '{payments,eu}', '{\"owner\": \"team-a\"}'),
       ('search', 9200, '{}', NULL);
     INSERT INTO settings VALUES ('billing', 'timeout', '30s'), ('billing', 'retries', '3'), ('search', 'shards/replicas', '5/1');"
psql "$ETCDSYNC_TEST_PG" -c "TABLE services" -c "TABLE settings"

step "etcdsync run --config-file examples/quickstart.yaml"
sed -n '1,200p' examples/quickstart.yaml
export ETCDSYNC_DEMO_PG=$ETCDSYNC_TEST_PG ETCDSYNC_DEMO_ETCD=$ETCDSYNC_TEST_ETCD
log=$ETCDSYNC_TESTENV_DIR/etcdsync.log
"$bin" run --config-file examples/quickstart.yaml >"$log" 2>&1 &
etcdsync_pid=$!

for _ in $(seq 1 300); do
    [[ $(etcdctl get --prefix /etcdsync/public/ --keys-only | grep -c .) -ge 5 ]] && break
    kill -0 "$etcdsync_pid" 2>/dev/null || { cat "$log"; die "etcdsync exited"; }
    sleep 0.1
done
step "Snapshot in etcd: etcdctl get --prefix /etcdsync/"
etcdctl get --prefix /etcdsync/

step "Live changes: UPDATE, INSERT, DELETE in PostgreSQL; etcdctl watch --prefix /etcdsync/ sees them"
watch_out=$ETCDSYNC_TESTENV_DIR/watch.out
etcdctl watch --prefix /etcdsync/ >"$watch_out" 2>&1 &
watch_pid=$!
sleep 0.5
sql "UPDATE services SET port = 8443, updated_at = now() WHERE name = 'billing';
     INSERT INTO settings VALUES ('search', 'timeout', '2s');
     DELETE FROM settings WHERE service = 'billing' AND name = 'retries';"
for _ in $(seq 1 100); do
    [[ $(grep -c '^DELETE' "$watch_out") -ge 1 && $(grep -c '^PUT' "$watch_out") -ge 2 ]] && break
    sleep 0.05
done
cat "$watch_out"
grep -q '^DELETE' "$watch_out" || die "the live changes did not arrive (log: $log)"

step "Stopping etcdsync with SIGTERM (finishes the in-flight transaction, then exits)"
kill -TERM "$etcdsync_pid"
status=0
wait "$etcdsync_pid" || status=$?
etcdsync_pid=""
echo "etcdsync exited with status $status"
tail -n 5 "$log"
step "The checkpoint stored with the data"
etcdctl get /etcdsync-meta/quickstart/checkpoint --print-value-only
[[ $status == 0 ]] || die "etcdsync did not exit cleanly"
echo
echo "Demo complete."
