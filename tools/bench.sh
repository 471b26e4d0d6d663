#!/usr/bin/env bash
# `make bench` (issue #14 item 5): end-to-end throughput, latency and memory of `etcdsync run`
# against raw etcd writes, for the pgx (PostgreSQL) and mysql (MariaDB) sources, in one run.
# Prints one table: figure | etcdsync | raw | ratio | goal | met?  Run by hand; not part of CI.
#
#   (a) snapshot of BENCH_SNAPSHOT_ROWS rows (id bigint PK + ~200-byte text), stale-key clean-up
#       included: `etcdsync run` start → the checkpoint key in etcd.            goal ratio ≥ 0.90
#   (b) one source transaction of BENCH_TXN_ROWS rows: commit → its last key (applied with the
#       checkpoint covering it).                                                 goal ratio ≥ 0.85
#   (c) catch-up over BENCH_CATCHUP_TXNS one-row transactions committed while etcdsync was
#       stopped (+1 marker row): `etcdsync run` start → the marker's key.        goal ratio ≥ 0.60
#   (d) pgx only: commit → `etcdctl watch` latency, pgbench -R BENCH_RATE one-row inserts for
#       BENCH_LATENCY_SECONDS; the row holds its clock_timestamp().             goal p99 ≤ 10 ms
#   (e) peak RSS (VmHWM) of etcdsync: BENCH_RSS_SNAPSHOT_ROWS-row snapshot, BENCH_RSS_TXN_ROWS-row
#       transaction, pgx also BENCH_TOAST_ROWS updates leaving a BENCH_TOAST_BYTES TOASTed
#       (STORAGE EXTERNAL) column unchanged.                                    goal ≤ 64 MiB each
#   raw: the same keys, key and value sizes written by plugins/etcd/examples/raw_writer.rs in
#   transactions of BENCH_RAW_OPS (128) puts, BENCH_RAW_IN_FLIGHT (4) in flight. ratio = raw time /
#   etcdsync time. Every figure gets two fresh etcd servers (etcdsync's, raw's) on free ports.
#
# Servers: PostgreSQL and MariaDB from tools/testenv.sh in their own state dir
# (BENCH_TESTENV_DIR, default target/bench-env; never target/testenv), stopped and wiped at exit;
# etcd servers under a temporary directory, removed at exit.
#
# Knobs (environment): BENCH_SNAPSHOT_ROWS=1000000 BENCH_TXN_ROWS=200000 BENCH_CATCHUP_TXNS=100000
#   BENCH_RATE=5000 BENCH_LATENCY_SECONDS=20 BENCH_RSS_SNAPSHOT_ROWS=2000000
#   BENCH_RSS_TXN_ROWS=1000000 BENCH_TOAST_ROWS=20000 BENCH_TOAST_BYTES=4096 BENCH_TOAST_TXNS=1
#   BENCH_PAYLOAD_BYTES=200 BENCH_RAW_OPS=128 BENCH_RAW_IN_FLIGHT=4 BENCH_WAIT_TIMEOUT=1800
#   BENCH_FIGURES="pgx:a pgx:b pgx:c pgx:d pgx:e1 pgx:e2 pgx:e3 mysql:a mysql:b mysql:c mysql:e1 mysql:e2"
#   BENCH_SINK_OPTIONS: extra keys for etcdsync's sink config (e.g. "stream_txns_in_flight: 1")
#   BENCH_OUT_DIR (default target/bench/<time>: report.md, etcdsync logs, /metrics summaries)
#   BENCH_KEEP_ENV=1 leaves the PostgreSQL/MariaDB environment running; BENCH_BUILD=0 skips the
#   cargo build and uses the binaries already built (etcdsync, examples/raw_writer).
# Quick run:  BENCH_SNAPSHOT_ROWS=20000 BENCH_TXN_ROWS=5000 BENCH_CATCHUP_TXNS=2000 BENCH_RATE=500 \
#   BENCH_LATENCY_SECONDS=5 BENCH_RSS_SNAPSHOT_ROWS=20000 BENCH_RSS_TXN_ROWS=10000 BENCH_TOAST_ROWS=500 tools/bench.sh
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd -- "$REPO_ROOT"
if [[ -f $HOME/.cargo/env ]] && ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

SNAPSHOT_ROWS=${BENCH_SNAPSHOT_ROWS:-1000000}
TXN_ROWS=${BENCH_TXN_ROWS:-200000}
CATCHUP_TXNS=${BENCH_CATCHUP_TXNS:-100000}
RATE=${BENCH_RATE:-5000}
LATENCY_SECONDS=${BENCH_LATENCY_SECONDS:-20}
RSS_SNAPSHOT_ROWS=${BENCH_RSS_SNAPSHOT_ROWS:-2000000}
RSS_TXN_ROWS=${BENCH_RSS_TXN_ROWS:-1000000}
TOAST_ROWS=${BENCH_TOAST_ROWS:-20000}
TOAST_BYTES=${BENCH_TOAST_BYTES:-4096}
TOAST_TXNS=${BENCH_TOAST_TXNS:-1}
PAYLOAD_BYTES=${BENCH_PAYLOAD_BYTES:-200}
RAW_OPS=${BENCH_RAW_OPS:-128}
RAW_IN_FLIGHT=${BENCH_RAW_IN_FLIGHT:-4}
WAIT_TIMEOUT=${BENCH_WAIT_TIMEOUT:-1800}
SINK_OPTIONS=${BENCH_SINK_OPTIONS:-}
FIGURES=${BENCH_FIGURES:-pgx:a pgx:b pgx:c pgx:d pgx:e1 pgx:e2 pgx:e3 mysql:a mysql:b mysql:c mysql:e1 mysql:e2}
ENV_DIR=${BENCH_TESTENV_DIR:-$REPO_ROOT/target/bench-env}
OUT_DIR=${BENCH_OUT_DIR:-$REPO_ROOT/target/bench/$(date +%Y%m%d-%H%M%S)}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
HELPER=$SCRIPT_DIR/bench/bench.py
PG_BIN=/usr/lib/postgresql/15/bin
GOAL_RSS_MIB=64

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    printf '[bench] ERROR: %s\n' "$*" >&2
    exit 1
}

for var in SNAPSHOT_ROWS TXN_ROWS CATCHUP_TXNS RATE LATENCY_SECONDS RSS_SNAPSHOT_ROWS RSS_TXN_ROWS \
    TOAST_ROWS TOAST_BYTES TOAST_TXNS PAYLOAD_BYTES RAW_OPS RAW_IN_FLIGHT WAIT_TIMEOUT; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$var must be a positive integer, not '${!var}'"
done
((TOAST_BYTES >= 32)) || die "BENCH_TOAST_BYTES must be at least 32"

# etcd and etcdctl read ETCD_* / ETCDCTL_* settings from the environment: none may leak in.
while read -r var; do
    case $var in ETCD_* | ETCDCTL_*) unset "$var" ;; esac
done < <(compgen -e)
export ETCDCTL_API=3

# ---------------------------------------------------------------------------------------------
# Prerequisites, build, servers
# ---------------------------------------------------------------------------------------------
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
[[ ${BENCH_BUILD:-1} != 1 ]] || need cargo "install Rust (https://rustup.rs)"
need python3 "apt-get install python3"
need awk "apt-get install gawk"

resolved_env_dir=$(mkdir -p -- "$ENV_DIR" && cd -- "$ENV_DIR" && pwd -P)
[[ $resolved_env_dir != "$(cd -- "$REPO_ROOT" && pwd -P)/target/testenv" ]] ||
    die "BENCH_TESTENV_DIR must not be target/testenv (the developers' test environment)"
ENV_DIR=$resolved_env_dir

# Installs what is missing (PostgreSQL 15 with pgbench, MariaDB, etcd, protoc); needs root then.
ETCDSYNC_TESTENV_DIR=$ENV_DIR "$SCRIPT_DIR/testenv.sh" install
need etcd "apt-get install etcd-server"
need etcdctl "apt-get install etcd-client"
need psql "apt-get install postgresql-client"
need mariadb "apt-get install mariadb-client"
PGBENCH=$PG_BIN/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$(command -v pgbench) || die "pgbench not found: it comes with postgresql-15 (apt-get install postgresql-15)"

mkdir -p -- "$OUT_DIR"
OUT_DIR=$(cd -- "$OUT_DIR" && pwd -P)
TMP_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/etcdsync-bench.XXXXXX")
PID_FILE=$TMP_ROOT/pids
: >"$PID_FILE"
RESULTS=$OUT_DIR/results.tsv
: >"$RESULTS"
ENV_STARTED=0

# Processes this script started are listed in PID_FILE; each is stopped at the end of its figure,
# and whatever is left at exit (a failure, Ctrl-C). A pid is only signalled while its command line
# still names TMP_ROOT (so a reused pid is never touched).
track() { echo "$1" >>"$PID_FILE"; }
untrack() {
    local rest
    rest=$(grep -vx -- "$1" "$PID_FILE" || true)
    printf '%s\n' "$rest" | sed '/^$/d' >"$PID_FILE"
}
ours() {
    local cmdline
    kill -0 "$1" 2>/dev/null || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $cmdline == *"$TMP_ROOT"* ]]
}
stop_pid() {
    local pid=$1 grace=${2:-30} i
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            ours "$pid" || break
            sleep 0.1
        done
        if ours "$pid"; then
            log "pid $pid did not stop in ${grace}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    untrack "$pid"
}
stop_tracked() {
    local pid
    while read -r pid; do
        if [[ -n $pid ]]; then stop_pid "$pid" 30; fi
    done < <(tac "$PID_FILE" 2>/dev/null || true)
}

# figure_running: true while the subshell of the current figure (run_figure) is alive.
figure_running() {
    local pid
    pid=$(cat "$TMP_ROOT/figure.pid" 2>/dev/null) || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(awk '{ print $4 }' "/proc/$pid/stat" 2>/dev/null) == "$$" ]]
}

# shellcheck disable=SC2317 # invoked from the EXIT trap
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    # An interrupted figure stops what it started itself (its EXIT trap): let it, then remove
    # what it used.
    if figure_running; then
        kill -TERM "$(cat "$TMP_ROOT/figure.pid")" 2>/dev/null || true
        for ((i = 0; i < 1200; i++)); do
            figure_running || break
            sleep 0.1
        done
    fi
    stop_tracked
    rm -rf -- "$TMP_ROOT"
    if ((ENV_STARTED)); then
        if [[ ${BENCH_KEEP_ENV:-0} == 1 ]]; then
            log "BENCH_KEEP_ENV=1: PostgreSQL/MariaDB left running (ETCDSYNC_TESTENV_DIR=$ENV_DIR tools/testenv.sh stop --clean)"
        else
            ETCDSYNC_TESTENV_DIR=$ENV_DIR "$SCRIPT_DIR/testenv.sh" stop --clean >/dev/null 2>&1 ||
                log "warning: could not stop the environment in $ENV_DIR"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ${BENCH_BUILD:-1} == 1 ]]; then
    log "building etcdsync and raw_writer (release; target dir $TARGET_DIR)"
    cargo build -q --release -p etcdsync-cli
    cargo build -q --release -p etcdsync-etcd --example raw_writer
else
    log "BENCH_BUILD=0: using the binaries already in $TARGET_DIR/release"
fi
ETCDSYNC_BIN=$TARGET_DIR/release/etcdsync
RAW_WRITER=$TARGET_DIR/release/examples/raw_writer
[[ -x $ETCDSYNC_BIN && -x $RAW_WRITER ]] || die "built binaries not found under $TARGET_DIR/release"

log "starting private PostgreSQL and MariaDB (tools/testenv.sh, state in $ENV_DIR)"
ENV_STARTED=1
ETCDSYNC_TESTENV_DIR=$ENV_DIR "$SCRIPT_DIR/testenv.sh" start
for var in $(compgen -e); do
    case $var in ETCDSYNC_TEST_* | ETCDSYNC_TESTENV_*) unset "$var" ;; esac
done
# shellcheck disable=SC1091
. "$ENV_DIR/env"
PG_URL=$ETCDSYNC_TEST_PG
MY_URL=$ETCDSYNC_TEST_MYSQL/
MY_PORT=${ETCDSYNC_TEST_MYSQL##*:}

pg() { PGOPTIONS='-c client_min_messages=warning' psql "$PG_URL" -X -q -At -v ON_ERROR_STOP=1 "$@"; }
my() { mariadb --no-defaults -h127.0.0.1 -P"$MY_PORT" -uetcdsync -petcdsync -N -B "$@"; }
my -e 'CREATE DATABASE IF NOT EXISTS benchdb'
my benchdb -e 'SELECT COUNT(*) FROM seq_1_to_3' >/dev/null 2>&1 ||
    die "MariaDB's SEQUENCE engine (seq_1_to_N) is not available; it is built in from 10.0"

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
port() { python3 "$HELPER" port; }

# ---------------------------------------------------------------------------------------------
# etcd servers, etcdsync, waiting
# ---------------------------------------------------------------------------------------------
# start_etcd NAME: a fresh etcd (empty data dir, free ports); sets ETCD_URL.
start_etcd() {
    local name=$1 dir cport pport pid i
    dir=$(mktemp -d "$TMP_ROOT/etcd-$name.XXXXXX")
    cport=$(port)
    pport=$(port)
    ETCD_URL=http://127.0.0.1:$cport
    etcd --name "$name" --data-dir "$dir/data" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "$name=http://127.0.0.1:$pport" --initial-cluster-state new \
        --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
        --logger zap --log-outputs stderr --log-level warn </dev/null >"$dir/etcd.log" 2>&1 &
    pid=$!
    track "$pid"
    for ((i = 0; i < 300; i++)); do
        etcdctl --endpoints="$ETCD_URL" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$dir/etcd.log" >&2 || true
    die "etcd ($name) did not start on $ETCD_URL"
}

# fresh_etcds: SYNC_ETCD for etcdsync, RAW_ETCD for the raw baseline, both empty.
fresh_etcds() {
    start_etcd sync
    SYNC_ETCD=$ETCD_URL
    start_etcd raw
    RAW_ETCD=$ETCD_URL
}

# write_config NAME SOURCE TABLE: the pipeline's YAML (fresh metrics port); sets CONFIG, METRICS_URL.
write_config() {
    local name=$1 source=$2 table=$3 metrics_port
    metrics_port=$(port)
    METRICS_URL=http://127.0.0.1:$metrics_port/metrics
    CONFIG=$TMP_ROOT/$name.yaml
    if [[ $source == pgx ]]; then
        printf 'source: { type: pgx, url: "%s", sslmode: disable, tables: { include: ["public.%s"] } }\n' \
            "$PG_URL" "$table" >"$CONFIG"
    else
        printf 'source: { type: mysql, url: "%s", tables: { include: ["benchdb.%s"] } }\n' \
            "$MY_URL" "$table" >"$CONFIG"
    fi
    cat >>"$CONFIG" <<YAML
name: $name
sink: { type: etcd, endpoints: ["$SYNC_ETCD"], prefix: /bench${SINK_OPTIONS:+, $SINK_OPTIONS} }
log: { level: info }
metrics: { listen: "127.0.0.1:$metrics_port" }
YAML
}

# start_etcdsync NAME: `etcdsync run` on CONFIG in the background; sets SYNC_PID, SYNC_T0.
start_etcdsync() {
    SYNC_LOG=$OUT_DIR/$1.log
    SYNC_T0=$(now)
    "$ETCDSYNC_BIN" run --config-file "$CONFIG" >>"$SYNC_LOG" 2>&1 &
    SYNC_PID=$!
    track "$SYNC_PID"
}

stop_etcdsync() {
    [[ -n ${SYNC_PID:-} ]] || return 0
    stop_pid "$SYNC_PID" 60
    SYNC_PID=""
}

# peak_rss_mib: VmHWM of the running etcdsync in MiB.
peak_rss_mib() {
    local kb
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SYNC_PID/status") || die "etcdsync (pid $SYNC_PID) is gone"
    calc "%.1f" "$kb / 1024"
}

# cpu_seconds PID: user + system CPU time the process has used so far.
cpu_seconds() {
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / tck }' "/proc/$1/stat" 2>/dev/null || echo "?"
}

# metrics_summary LABEL: the etcdsync histograms from /metrics and the CPU time etcdsync (and a
# pgx pipeline's walsender) used, to the log and OUT_DIR/metrics.txt.
metrics_summary() {
    local walsender=""
    [[ $CONFIG != *_pgx_* ]] || walsender=$(pg -c "SELECT pid FROM pg_stat_replication LIMIT 1" 2>/dev/null || true)
    {
        echo "== $1"
        python3 "$HELPER" metrics "$METRICS_URL" || echo "(no /metrics at $METRICS_URL)"
        echo "CPU: etcdsync $(cpu_seconds "$SYNC_PID") s over $(calc "%.1f" "$(now) - $SYNC_T0") s wall${walsender:+; walsender $(cpu_seconds "$walsender") s}"
    } | tee -a "$OUT_DIR/metrics.txt" | sed 's/^/[bench]   /' >&2
}

# watch_key KEY [SLOT]: starts waiting for KEY in SYNC_ETCD (a put before the watch counts too);
# several keys can be awaited at once under different SLOT names (default: main).
declare -A WATCH_PID WATCH_OUT WATCH_KEY
watch_key() {
    local key=$1 slot=${2:-main}
    WATCH_OUT[$slot]=$(mktemp "$TMP_ROOT/seen.XXXXXX")
    python3 "$HELPER" wait-key "$SYNC_ETCD" "$key" "$WAIT_TIMEOUT" "${WATCH_OUT[$slot]}" &
    WATCH_PID[$slot]=$!
    track "${WATCH_PID[$slot]}"
    WATCH_KEY[$slot]=$key
    sleep 0.5 # the watch reaches etcd before the measured action starts
}

# seen_at [SLOT]: waits for watch_key's key; sets SEEN (epoch seconds). Fails when etcdsync exits
# first.
seen_at() {
    local slot=${1:-main}
    while kill -0 "${WATCH_PID[$slot]}" 2>/dev/null; do
        if [[ -n ${SYNC_PID:-} ]] && ! kill -0 "$SYNC_PID" 2>/dev/null; then
            tail -30 "$SYNC_LOG" >&2 || true
            die "etcdsync exited while waiting for ${WATCH_KEY[$slot]} (log: $SYNC_LOG)"
        fi
        sleep 0.1
    done
    wait "${WATCH_PID[$slot]}" || die "${WATCH_KEY[$slot]} did not appear in etcd within ${WAIT_TIMEOUT}s (log: ${SYNC_LOG:-})"
    untrack "${WATCH_PID[$slot]}"
    SEEN=$(<"${WATCH_OUT[$slot]}")
}

checkpoint_key() { echo "/etcdsync-meta/$1/checkpoint"; }

# start_and_wait_snapshot NAME: starts etcdsync on CONFIG and waits until its snapshot is finished.
start_and_wait_snapshot() {
    watch_key "$(checkpoint_key "$1")"
    start_etcdsync "$1"
    seen_at
}

expect_keys() { # ENDPOINT PREFIX COUNT
    local found
    found=$(python3 "$HELPER" count "$1" "$2")
    ((found == $3)) || die "expected $3 keys under $2 in $1, found $found"
}

# raw_time KEYS PREFIX VALUE_SIZE: seconds for raw_writer to write KEYS keys to RAW_ETCD.
raw_time() {
    "$RAW_WRITER" --endpoint "$RAW_ETCD" --keys "$1" --prefix "$2" --value-size "$3" \
        --ops-per-txn "$RAW_OPS" --in-flight "$RAW_IN_FLIGHT"
}

# record FIGURE ETCDSYNC RAW RATIO GOAL MET
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"
    log "result: $(printf '%s | ' "$@")"
}

# throughput_row FIGURE UNIT COUNT SYNC_SECONDS RAW_SECONDS GOAL
throughput_row() {
    local figure=$1 unit=$2 count=$3 sync_s=$4 raw_s=$5 goal=$6 ratio met
    ratio=$(calc "%.2f" "$raw_s / $sync_s")
    met=$(awk -v r="$ratio" -v g="$goal" 'BEGIN { print (r >= g) ? "yes" : "no" }')
    record "$figure" \
        "$(calc "%.2f" "$sync_s") s, $(calc "%.0f" "$count / $sync_s") $unit/s" \
        "$(calc "%.2f" "$raw_s") s, $(calc "%.0f" "$count / $raw_s") keys/s" \
        "$ratio" "≥ $goal" "$met"
}

rss_row() { # FIGURE MIB
    record "$1" "$2 MiB" "–" "–" "≤ $GOAL_RSS_MIB MiB" "$(awk -v m="$2" -v g="$GOAL_RSS_MIB" 'BEGIN { print (m <= g) ? "yes" : "no" }')"
}

# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
schema_of() { if [[ $1 == pgx ]]; then echo public; else echo benchdb; fi; }
key_prefix() { echo "/bench/$(schema_of "$1")/$2/"; }

# make_table SOURCE TABLE ROWS [serial]: id + PAYLOAD_BYTES text, ROWS rows (ids 1..ROWS).
make_table() {
    local source=$1 table=$2 rows=$3 serial=${4:-}
    if [[ $source == pgx ]]; then
        local id="id bigint PRIMARY KEY"
        [[ -n $serial ]] && id="id bigserial PRIMARY KEY"
        pg -c "DROP TABLE IF EXISTS $table" -c "CREATE TABLE $table ($id, payload text NOT NULL)"
        if ((rows > 0)); then
            pg -c "INSERT INTO $table SELECT g, rpad(g::text, $PAYLOAD_BYTES, 'x') FROM generate_series(1, $rows) g" \
                -c "VACUUM ANALYZE $table"
        fi
    else
        local id="id BIGINT NOT NULL PRIMARY KEY"
        [[ -n $serial ]] && id="id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
        my benchdb -e "DROP TABLE IF EXISTS $table; CREATE TABLE $table ($id, payload VARCHAR($PAYLOAD_BYTES) NOT NULL) ENGINE=InnoDB"
        if ((rows > 0)); then
            my benchdb -e "INSERT INTO $table SELECT seq, RPAD(seq, $PAYLOAD_BYTES, 'x') FROM seq_1_to_$rows; ANALYZE TABLE $table" >/dev/null
        fi
    fi
}

# insert_txn SOURCE TABLE ROWS: ROWS rows (ids 1..ROWS) in one transaction; prints the commit time.
insert_txn() {
    local source=$1 table=$2 rows=$3
    if [[ $source == pgx ]]; then
        pg <<SQL
BEGIN;
INSERT INTO $table SELECT g, rpad(g::text, $PAYLOAD_BYTES, 'x') FROM generate_series(1, $rows) g;
COMMIT;
SELECT extract(epoch FROM clock_timestamp());
SQL
    else
        my benchdb -e "INSERT INTO $table SELECT seq, RPAD(seq, $PAYLOAD_BYTES, 'x') FROM seq_1_to_$rows; SELECT UNIX_TIMESTAMP(NOW(6))"
    fi
}

# finish_throughput SOURCE TABLE PREFIX COUNT SECONDS FIGURE UNIT GOAL: stops etcdsync, checks
# its COUNT keys, times raw writes of as many keys of the same sizes and records the row.
finish_throughput() {
    local source=$1 table=$2 prefix=$3 count=$4 seconds=$5 figure=$6 unit=$7 goal=$8 value_size raw
    stop_etcdsync
    expect_keys "$SYNC_ETCD" "$prefix" "$count"
    value_size=$(python3 "$HELPER" value-size "$SYNC_ETCD" "$prefix$(((count + 1) / 2))")
    raw=$(raw_time "$count" "$prefix" "$value_size")
    throughput_row "$figure" "$unit" "$count" "$seconds" "$raw" "$goal"
    drop_tables "$source" "$table"
}

# drop_tables SOURCE TABLE...: drops the tables, the pipelines' slots and old binlogs.
drop_tables() {
    local source=$1 table
    shift
    if [[ $source == pgx ]]; then
        for table in "$@"; do pg -c "DROP TABLE IF EXISTS $table"; done
        pg -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'etcdsync_bench%' AND NOT active" >/dev/null
        pg -c "CHECKPOINT"
    else
        for table in "$@"; do my benchdb -e "DROP TABLE IF EXISTS $table"; done
        my -e "FLUSH BINARY LOGS; PURGE BINARY LOGS BEFORE NOW()"
    fi
}

# ---------------------------------------------------------------------------------------------
# Figures (each runs in a subshell of its own: see run_figure)
# ---------------------------------------------------------------------------------------------
fig_a() {
    local source=$1 table=bench_snap name=bench_${1}_a seconds
    log "$source (a): $SNAPSHOT_ROWS-row snapshot"
    make_table "$source" "$table" "$SNAPSHOT_ROWS"
    fresh_etcds
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    seconds=$(calc "%.6f" "$SEEN - $SYNC_T0")
    grep -E 'table copied|snapshot finished' "$SYNC_LOG" | sed 's/^/[bench]   /' >&2 || true
    metrics_summary "$source (a) snapshot"
    finish_throughput "$source" "$table" "$(key_prefix "$source" "$table")" "$SNAPSHOT_ROWS" "$seconds" \
        "$source (a) snapshot, $SNAPSHOT_ROWS rows" rows 0.90
}

fig_b() {
    local source=$1 table=bench_txn name=bench_${1}_b prefix committed seconds
    log "$source (b): one $TXN_ROWS-row transaction, streamed"
    make_table "$source" "$table" 0
    fresh_etcds
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    prefix=$(key_prefix "$source" "$table")
    watch_key "${prefix}1" first
    watch_key "$prefix$TXN_ROWS"
    committed=$(insert_txn "$source" "$table" "$TXN_ROWS")
    seen_at
    seconds=$(calc "%.6f" "$SEEN - $committed")
    seen_at first
    log "  commit → first key $(calc "%.2f" "$SEEN - $committed") s, → last key $(calc "%.2f" "$seconds") s"
    metrics_summary "$source (b) one $TXN_ROWS-row transaction"
    finish_throughput "$source" "$table" "$prefix" "$TXN_ROWS" "$seconds" \
        "$source (b) one $TXN_ROWS-row transaction" rows 0.85
}

# commit_one_row_txns SOURCE TABLE N: N single-row transactions, as fast as a client can.
commit_one_row_txns() {
    local source=$1 table=$2 n=$3 started
    started=$(now)
    if [[ $source == pgx ]]; then
        local clients=4 script=$TMP_ROOT/catchup.sql
        ((n % clients == 0)) || clients=1
        echo "INSERT INTO $table (payload) VALUES (repeat('x', $PAYLOAD_BYTES));" >"$script"
        "$PGBENCH" -n -f "$script" -c "$clients" -j 2 -t $((n / clients)) "$PG_URL" >"$OUT_DIR/pgbench-catchup.log" 2>&1 ||
            {
                cat "$OUT_DIR/pgbench-catchup.log" >&2
                die "pgbench failed"
            }
    else
        awk -v n="$n" -v t="$table" -v b="$PAYLOAD_BYTES" 'BEGIN {
                p = sprintf("%" b "s", ""); gsub(/ /, "x", p)
                for (i = 0; i < n; i++) print "INSERT INTO " t " (payload) VALUES (\047" p "\047);"
            }' | my benchdb
    fi
    log "  $n one-row transactions committed in $(calc "%.1f" "$(now) - $started") s"
}

fig_c() {
    local source=$1 table=bench_catchup name=bench_${1}_c prefix marker seconds total
    log "$source (c): catch-up over $CATCHUP_TXNS one-row transactions"
    make_table "$source" "$table" 0 serial
    fresh_etcds
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    stop_etcdsync
    commit_one_row_txns "$source" "$table" "$CATCHUP_TXNS"
    if [[ $source == pgx ]]; then
        marker=$(pg -c "INSERT INTO $table (payload) VALUES (repeat('x', $PAYLOAD_BYTES)) RETURNING id")
    else
        marker=$(my benchdb -e "INSERT INTO $table (payload) VALUES (REPEAT('x', $PAYLOAD_BYTES)); SELECT LAST_INSERT_ID()")
    fi
    total=$((CATCHUP_TXNS + 1))
    ((marker == total)) || die "the marker row got id $marker, expected $total"
    prefix=$(key_prefix "$source" "$table")
    watch_key "${prefix}1" first
    watch_key "$prefix$marker"
    start_etcdsync "$name"
    seen_at
    seconds=$(calc "%.6f" "$SEEN - $SYNC_T0")
    seen_at first
    log "  start → first key $(calc "%.2f" "$SEEN - $SYNC_T0") s, → marker $(calc "%.2f" "$seconds") s"
    metrics_summary "$source (c) catch-up"
    finish_throughput "$source" "$table" "$prefix" "$total" "$seconds" \
        "$source (c) catch-up, $total one-row txns" txns 0.60
}

fig_d() {
    local source=$1 table=bench_lat name=bench_${1}_d dir script out tps rows i
    [[ $source == pgx ]] || die "(d) is measured for pgx only"
    log "$source (d): commit → etcdctl watch latency at $RATE txn/s for ${LATENCY_SECONDS}s"
    pg -c "DROP TABLE IF EXISTS $table" \
        -c "CREATE TABLE $table (id bigserial PRIMARY KEY, ts float8 NOT NULL, payload text NOT NULL)"
    start_etcd sync
    SYNC_ETCD=$ETCD_URL
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    dir=$(mktemp -d "$TMP_ROOT/latency.XXXXXX")
    python3 "$HELPER" latency "$SYNC_ETCD" "$(key_prefix "$source" "$table")" "$dir" $((LATENCY_SECONDS + 300)) &
    local watcher=$!
    track "$watcher"
    sleep 0.5
    local insert="INSERT INTO $table (ts, payload) VALUES (extract(epoch FROM clock_timestamp()), repeat('x', $PAYLOAD_BYTES));"
    pg -c "$insert"
    for ((i = 0; i < 300; i++)); do
        [[ -f $dir/ready ]] && break
        kill -0 "$watcher" 2>/dev/null || die "the latency watcher exited"
        sleep 0.1
    done
    [[ -f $dir/ready ]] || die "the warm-up row did not reach etcd in 30 s"
    script=$TMP_ROOT/latency.sql
    echo "$insert" >"$script"
    out=$OUT_DIR/pgbench-latency.log
    "$PGBENCH" -n -f "$script" -R "$RATE" -T "$LATENCY_SECONDS" -c 8 -j 2 "$PG_URL" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "pgbench failed"
        }
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
    tps=$(calc "%.0f" "${tps:-0}")
    rows=$(pg -c "SELECT count(*) FROM $table")
    echo "$rows" >"$dir/expect"
    wait "$watcher" || die "the latency watcher failed"
    untrack "$watcher"
    metrics_summary "$source (d) latency"
    stop_etcdsync
    local p50 p99 max seen
    read -r p50 p99 max seen < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%.1f %.1f %.1f %d" % (r["p50_ms"], r["p99_ms"], r["max_ms"], r["rows"]))' "$dir/latency.json")
    ((seen == rows - 1)) || log "warning: the watch saw $seen of $((rows - 1)) rows"
    record "$source (d) latency, pgbench -R $RATE, ${LATENCY_SECONDS}s" \
        "p50 $p50 ms, p99 $p99 ms (max $max ms); $tps txn/s achieved, $seen rows seen" \
        "–" "–" "p99 ≤ 10 ms" "$(awk -v p="$p99" 'BEGIN { print (p <= 10) ? "yes" : "no" }')"
}

fig_e1() {
    local source=$1 table=bench_rss_snap name=bench_${1}_e1 mib
    log "$source (e1): peak RSS, $RSS_SNAPSHOT_ROWS-row snapshot"
    make_table "$source" "$table" "$RSS_SNAPSHOT_ROWS"
    start_etcd sync
    SYNC_ETCD=$ETCD_URL
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    mib=$(peak_rss_mib)
    log "  snapshot took $(calc "%.1f" "$SEEN - $SYNC_T0") s"
    metrics_summary "$source (e1) snapshot"
    stop_etcdsync
    expect_keys "$SYNC_ETCD" "$(key_prefix "$source" "$table")" "$RSS_SNAPSHOT_ROWS"
    rss_row "$source (e) peak RSS, $RSS_SNAPSHOT_ROWS-row snapshot" "$mib"
    drop_tables "$source" "$table"
}

fig_e2() {
    local source=$1 table=bench_rss_txn name=bench_${1}_e2 mib prefix committed
    log "$source (e2): peak RSS, one $RSS_TXN_ROWS-row transaction"
    make_table "$source" "$table" 0
    start_etcd sync
    SYNC_ETCD=$ETCD_URL
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    prefix=$(key_prefix "$source" "$table")
    watch_key "$prefix$RSS_TXN_ROWS"
    committed=$(insert_txn "$source" "$table" "$RSS_TXN_ROWS")
    seen_at
    mib=$(peak_rss_mib)
    log "  commit → last key: $(calc "%.1f" "$SEEN - $committed") s"
    metrics_summary "$source (e2) one $RSS_TXN_ROWS-row transaction"
    stop_etcdsync
    expect_keys "$SYNC_ETCD" "$prefix" "$RSS_TXN_ROWS"
    rss_row "$source (e) peak RSS, one $RSS_TXN_ROWS-row txn" "$mib"
    drop_tables "$source" "$table"
}

fig_e3() {
    local source=$1 table=bench_toast name=bench_${1}_e3 mib prefix k value
    [[ $source == pgx ]] || die "(e3) TOAST is PostgreSQL only"
    log "$source (e3): peak RSS, $TOAST_ROWS updates leaving a $TOAST_BYTES-byte TOASTed column unchanged"
    pg -c "DROP TABLE IF EXISTS $table" \
        -c "CREATE TABLE $table (id bigint PRIMARY KEY, n int NOT NULL, big text NOT NULL)" \
        -c "ALTER TABLE $table ALTER COLUMN big SET STORAGE EXTERNAL" \
        -c "INSERT INTO $table SELECT g, 0, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, $((TOAST_BYTES / 32))) WHERE g IS NOT NULL) FROM generate_series(1, $TOAST_ROWS) g" \
        -c "VACUUM ANALYZE $table"
    local toasted
    toasted=$(pg -c "SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE relname = '$table'")
    ((toasted > TOAST_ROWS * TOAST_BYTES / 2)) || die "the big column is not stored out of line (TOAST size $toasted)"
    start_etcd sync
    SYNC_ETCD=$ETCD_URL
    write_config "$name" "$source" "$table"
    start_and_wait_snapshot "$name"
    stop_etcdsync
    # A fresh process for the measurement: the snapshot's peak does not count.
    write_config "$name" "$source" "$table"
    start_etcdsync "$name"
    prefix=$(key_prefix "$source" "$table")
    for ((k = 0; k < TOAST_TXNS; k++)); do
        pg -c "UPDATE $table SET n = n + 1 WHERE id % $TOAST_TXNS = $k"
    done
    pg -c "INSERT INTO $table VALUES (0, 0, 'marker')"
    watch_key "${prefix}0"
    seen_at
    mib=$(peak_rss_mib)
    metrics_summary "$source (e3) TOAST updates"
    stop_etcdsync
    value=$(etcdctl --endpoints="$SYNC_ETCD" get --print-value-only "${prefix}1")
    [[ $value == *'"n":1,'* && ${#value} -gt $TOAST_BYTES ]] ||
        die "the updated row 1 in etcd is not as expected: ${value:0:120}…"
    rss_row "$source (e) peak RSS, $TOAST_ROWS updates, unchanged ${TOAST_BYTES}-byte TOAST" "$mib"
    drop_tables "$source" "$table"
}

# run_figure SOURCE:FIGURE: one figure in a subshell whose EXIT trap stops what it started (its
# etcd servers, etcdsync) and removes their data; a failure is recorded and the run goes on.
# (An asynchronous subshell ignores SIGINT: Ctrl-C interrupts this script, whose EXIT trap sends
# the figure SIGTERM.)
run_figure() {
    local source=${1%%:*} figure=${1#*:} rc=0
    declare -F "fig_$figure" >/dev/null || die "unknown figure '$1' in BENCH_FIGURES"
    [[ $source == pgx || $source == mysql ]] || die "unknown source '$source' in BENCH_FIGURES"
    set +e
    (
        set -e
        # shellcheck disable=SC2317 # invoked from the EXIT trap
        figure_cleanup() {
            stop_tracked
            rm -rf -- "$TMP_ROOT"/etcd-* "$TMP_ROOT"/latency.*
            # A failed figure leaves its replication slot behind: it would hold WAL.
            pg -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'etcdsync_bench%' AND NOT active" >/dev/null 2>&1 || true
        }
        trap figure_cleanup EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        "fig_$figure" "$source"
    ) &
    # In the background so that a signal to this script interrupts the `wait` at once; the EXIT
    # trap then stops the figure (which stops what it started) before anything else.
    echo "$!" >"$TMP_ROOT/figure.pid"
    wait "$!"
    rc=$?
    set -e
    ((rc != 130 && rc != 143)) || exit "$rc"
    if ((rc != 0)); then
        record "$source ($figure)" "FAILED (exit $rc; see the log above and $OUT_DIR)" "–" "–" "–" "no"
    fi
}

# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
machine="$(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), \
$(awk '/^MemTotal:/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo); \
etcd $(etcd --version | sed -n 's/^etcd Version: //p') (fsync on, defaults), \
PostgreSQL $(pg -c 'SHOW server_version') (fsync off), \
MariaDB $(my -e 'SELECT VERSION()') (flush_log_at_trx_commit=2, sync_binlog=0)"
sizes="snapshot $SNAPSHOT_ROWS rows, txn $TXN_ROWS rows, catch-up $CATCHUP_TXNS txns, rate $RATE/s for ${LATENCY_SECONDS}s, \
RSS $RSS_SNAPSHOT_ROWS/$RSS_TXN_ROWS rows, TOAST $TOAST_ROWS×$TOAST_BYTES B in $TOAST_TXNS txn(s), payload $PAYLOAD_BYTES B${SINK_OPTIONS:+, sink options: $SINK_OPTIONS}"
log "machine: $machine"
log "sizes: $sizes"
log "output: $OUT_DIR"

for figure in $FIGURES; do
    run_figure "$figure"
done
if [[ " $FIGURES " != *" mysql:d "* && " $FIGURES " == *" mysql:"* ]]; then
    log "mysql (d) is not measured: the latency figure is defined for pgx (a pgbench -R rate-limited load); no MariaDB client here paces transactions like it"
fi

{
    echo "etcdsync benchmark ($(date -u +%Y-%m-%d), $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "machine: $machine"
    echo "sizes: $sizes"
    echo
    python3 "$HELPER" table "$RESULTS"
} | tee "$OUT_DIR/report.md"
log "report, etcdsync logs and /metrics summaries: $OUT_DIR"
if grep -q 'FAILED' "$RESULTS"; then
    die "some figures failed (see above)"
fi
