#!/usr/bin/env bash
# Benchmark of the etcd sink against raw etcd-client transactions, in one run (issue 2, item 8):
# prints rows/s of each and the ratio sink/raw for snapshot (4 txns in flight) and streaming
# (1 txn in flight, group commit).
#
# Usage: tools/bench-etcd-sink.sh [BENCH_ROWS]      (default 50000 rows per measurement)
#
# etcd: the test environment's (target/testenv/env) when it answers; otherwise
# tools/testenv.sh start (stopped again afterwards); otherwise a private etcd started here.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd "$REPO_ROOT"

export BENCH_ROWS=${1:-${BENCH_ROWS:-50000}}
ENV_FILE=${ETCDSYNC_TESTENV_DIR:-$REPO_ROOT/target/testenv}/env

log() { printf '[bench-etcd-sink] %s\n' "$*" >&2; }

etcd_answers() {
    [[ -n ${ETCDSYNC_TEST_ETCD:-} ]] || return 1
    ETCDCTL_API=3 etcdctl --endpoints="$ETCDSYNC_TEST_ETCD" --dial-timeout=2s --command-timeout=3s \
        endpoint health >/dev/null 2>&1
}

cleanup_actions=()
cleanup() {
    local action
    for action in "${cleanup_actions[@]}"; do eval "$action" || true; done
}
trap cleanup EXIT

command -v etcdctl >/dev/null 2>&1 || { log "etcdctl not found (apt-get install etcd-client)"; exit 1; }

if [[ -f $ENV_FILE ]]; then
    # shellcheck disable=SC1090
    . "$ENV_FILE"
fi
if ! etcd_answers; then
    unset ETCDSYNC_TEST_ETCD
    if [[ -x tools/testenv.sh ]] && tools/testenv.sh start >&2; then
        cleanup_actions+=("tools/testenv.sh stop >&2")
        # shellcheck disable=SC1090
        . "$ENV_FILE"
    fi
fi
if ! etcd_answers; then
    log "no test environment etcd; starting a private one"
    command -v etcd >/dev/null 2>&1 || { log "etcd not found (apt-get install etcd-server)"; exit 1; }
    dir=$(mktemp -d /tmp/etcdsync-bench-etcd.XXXXXX)
    port() {
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
            shuf -i 20000-45000 -n 1
    }
    client_port=$(port)
    peer_port=$(port)
    etcd --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "bench=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!
    cleanup_actions+=("kill $etcd_pid; wait $etcd_pid 2>/dev/null; rm -rf '$dir'")
    export ETCDSYNC_TEST_ETCD="http://127.0.0.1:$client_port"
    for _ in $(seq 1 100); do etcd_answers && break; sleep 0.1; done
    etcd_answers || { log "private etcd did not start:"; tail -20 "$dir/etcd.log" >&2; exit 1; }
fi

export ETCDSYNC_TEST_ETCD
log "etcd at $ETCDSYNC_TEST_ETCD, $BENCH_ROWS rows per measurement"
cargo bench -p etcdsync-etcd --features integration-tests --bench sink_vs_raw
