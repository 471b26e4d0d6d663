#!/usr/bin/env bash
# Commit-to-etcd latency of a running pgx → etcd pipeline: inserts one row at a time through a
# persistent psql session (synchronous_commit=on, as production servers run) and timestamps the
# moment `etcdctl watch` sees the key. Prints min / median / p95 / max in milliseconds.
#   tools/bench-latency.sh [ROWS]      (default 200; uses target/testenv/env if its servers answer)
# Note: with synchronous_commit=off the walsender waits for the WAL writer (wal_writer_delay,
# 200 ms by default) before it can decode a commit, so latency is bounded by that instead.
set -euo pipefail
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd -- "$REPO_ROOT"
ROWS=${1:-200}
[[ -f $HOME/.cargo/env ]] && ! command -v cargo >/dev/null 2>&1 && . "$HOME/.cargo/env"

started_env=0
env_file=${ETCDSYNC_TESTENV_DIR:-$REPO_ROOT/target/testenv}/env
# shellcheck disable=SC1090
if ! { [[ -f $env_file ]] && . "$env_file" && psql "$ETCDSYNC_TEST_PG" -qAtc 'select 1' >/dev/null 2>&1; }; then
    "$SCRIPT_DIR/testenv.sh" start
    started_env=1
    # shellcheck disable=SC1090
    . "$env_file"
fi
cargo build -q --release -p etcdsync-cli
name=bench-latency-$$
config=$(mktemp)
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    psql "$ETCDSYNC_TEST_PG" -q -c "DROP TABLE IF EXISTS bench_latency" \
        -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'etcdsync_bench_latency%' AND NOT active" >/dev/null 2>&1 || true
    etcdctl --endpoints="$ETCDSYNC_TEST_ETCD" del --prefix "/$name" >/dev/null 2>&1 || true
    etcdctl --endpoints="$ETCDSYNC_TEST_ETCD" del --prefix "/etcdsync-meta/$name" >/dev/null 2>&1 || true
    rm -f "$config"
    if ((started_env)); then "$SCRIPT_DIR/testenv.sh" stop; fi
}
trap cleanup EXIT
psql "$ETCDSYNC_TEST_PG" -q -c "DROP TABLE IF EXISTS bench_latency; CREATE TABLE bench_latency (id int PRIMARY KEY, payload text)"
cat >"$config" <<YAML
name: $name
source: { type: pgx, url: "$ETCDSYNC_TEST_PG", sslmode: disable, tables: { include: ["public.bench_latency"] } }
sink: { type: etcd, endpoints: ["$ETCDSYNC_TEST_ETCD"], prefix: /$name }
log: { level: warn }
YAML
target/release/etcdsync run --config-file "$config" &
pid=$!
python3 - "$ROWS" "$name" <<'PY'
import os, queue, subprocess, sys, threading, time
rows, name = int(sys.argv[1]), sys.argv[2]
env = os.environ
watch = subprocess.Popen(["etcdctl", "--endpoints", env["ETCDSYNC_TEST_ETCD"], "watch", "--prefix", f"/{name}/"],
                         stdout=subprocess.PIPE, text=True, bufsize=1)
seen = queue.Queue()
def read():
    for line in watch.stdout:
        if line.startswith(f"/{name}/"):
            seen.put((time.monotonic(), line.strip()))
threading.Thread(target=read, daemon=True).start()
psql = subprocess.Popen(["psql", env["ETCDSYNC_TEST_PG"], "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1)
psql.stdin.write("SET synchronous_commit = on;\n")
# Wait until the pipeline streams: the first row's arrival.
psql.stdin.write("INSERT INTO bench_latency VALUES (0, 'warm-up');\n"); psql.stdin.flush()
seen.get(timeout=120)
samples = []
for i in range(1, rows + 1):
    start = time.monotonic()
    psql.stdin.write(f"INSERT INTO bench_latency VALUES ({i}, repeat('x', 200));\n"); psql.stdin.flush()
    arrived, key = seen.get(timeout=30)
    samples.append((arrived - start) * 1000)
    time.sleep(0.02)
samples.sort()
pct = lambda p: samples[min(len(samples) - 1, int(p * len(samples)))]
print(f"commit → etcd watch latency over {rows} single-row transactions (ms): "
      f"min {samples[0]:.1f}  median {pct(0.5):.1f}  p95 {pct(0.95):.1f}  p99 {pct(0.99):.1f}  max {samples[-1]:.1f}")
psql.stdin.close(); watch.kill()
PY
