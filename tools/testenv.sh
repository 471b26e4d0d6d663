#!/usr/bin/env bash
# Private test environment for etcdsync: PostgreSQL 15, MariaDB 10.11 and two
# etcd servers (plain, and TLS + auth), all on free 127.0.0.1 ports with their
# data under one state directory.  The stock system servers (5432/3306/2379)
# are never used or touched.
#
# Usage:
#   tools/testenv.sh [start]       fresh environment (stops/wipes a previous one
#                                  from the same state dir first)
#   tools/testenv.sh stop [--clean] stop all servers; --clean also removes data
#   tools/testenv.sh env           print the env file (path as a comment first)
#   tools/testenv.sh status        show which servers are running
#   tools/testenv.sh install       only apt-get what is missing (servers, protoc)
#   tools/testenv.sh cluster start|stop
#                                  a 3-member etcd cluster on loopback (HA tests); prints
#                                  ETCDSYNC_TEST_ETCD_CLUSTER=<endpoints> and adds it to the env file
#   tools/testenv.sh cluster kill|start-member N
#                                  SIGKILL member N (1-3) / start it again on its data
#
# State dir: ${ETCDSYNC_TESTENV_DIR:-<repo>/target/testenv}
# The env file <state dir>/env can be sourced (`. target/testenv/env`).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

STATE_DIR=${ETCDSYNC_TESTENV_DIR:-$REPO_ROOT/target/testenv}
WAIT_TIMEOUT=${ETCDSYNC_TESTENV_TIMEOUT:-60}

PG_BIN=/usr/lib/postgresql/15/bin
PG_OS_USER=postgres
MY_OS_USER=mysql

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C.UTF-8 LANG=C.UTF-8

log() { printf '[testenv] %s\n' "$*" >&2; }
die() {
    printf '[testenv] ERROR: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------
# Paths (STATE_DIR is made absolute in resolve_paths)
# ---------------------------------------------------------------------------
resolve_paths() {
    mkdir -p -- "$STATE_DIR"
    STATE_DIR=$(cd -- "$STATE_DIR" && pwd -P)
    ENV_FILE=$STATE_DIR/env
    SERVER_DIR_FILE=$STATE_DIR/server-dir

    # The database servers run as their own users (postgres, mysql), which must be able to reach
    # their data directories.  A clone under a private home (root's is mode 0700) is not
    # traversable for them, so their state then lives in a directory of its own under /var/tmp,
    # named after the state dir (one per clone); `start` records the choice for `stop`.
    if [[ -s $SERVER_DIR_FILE ]]; then
        SERVER_BASE=$(<"$SERVER_DIR_FILE")
    elif servers_can_reach "$STATE_DIR"; then
        SERVER_BASE=$STATE_DIR
    else
        SERVER_BASE=/var/tmp/etcdsync-testenv-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)
    fi

    PG_DIR=$SERVER_BASE/pg
    PG_DATA=$PG_DIR/data
    PG_LOG=$PG_DIR/postgres.log

    MY_DIR=$SERVER_BASE/mysql
    MY_DATA=$MY_DIR/data
    MY_LOG=$MY_DIR/mariadb.log
    MY_PID=$MY_DIR/mariadb.pid
    MY_INSTALL_LOG=$MY_DIR/install-db.log

    ETCD_DIR=$STATE_DIR/etcd
    ETCD_TLS_DIR=$STATE_DIR/etcd-tls
    TLS_DIR=$STATE_DIR/tls

    # Unix socket paths are limited to ~107 bytes.  Keep them under the server dir when it is
    # short enough, otherwise use a per-state-dir dir in /tmp.
    local sock_base=$SERVER_BASE
    if ((${#SERVER_BASE} > 70)); then
        sock_base=/tmp/etcdsync-testenv-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)
    fi
    SOCK_BASE=$sock_base
    PG_SOCK_DIR=$SOCK_BASE/pgsock
    MY_SOCK_DIR=$SOCK_BASE/mysock
    MY_SOCK=$MY_SOCK_DIR/mysql.sock
}

# True when both server users exist and can traverse into dir (every parent searchable).
servers_can_reach() {
    local dir=$1 user
    for user in "$PG_OS_USER" "$MY_OS_USER"; do
        id -u "$user" >/dev/null 2>&1 || return 1
        as_user "$user" test -x "$dir" 2>/dev/null || return 1
    done
}

# ---------------------------------------------------------------------------
# Packages
# ---------------------------------------------------------------------------
ensure_packages() {
    local -a missing=()
    command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
    command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
    command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
    # etcd-client's protos import the well-known types, which Debian ships apart from protoc.
    [[ -f /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
    [[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl ]] || missing+=(postgresql-15)
    [[ -f /usr/lib/postgresql/15/lib/hstore.so ]] || missing+=(postgresql-contrib)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
    command -v mariadb-install-db >/dev/null 2>&1 || missing+=(mariadb-server)
    command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
    command -v setsid >/dev/null 2>&1 || missing+=(util-linux)
    ((${#missing[@]} == 0)) && return 0

    # de-duplicate
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]}) and not root; install them with apt-get"
    log "installing missing packages: ${missing[*]}"
    local -a apt_opts=(-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    apt-get "${apt_opts[@]}" update -qq </dev/null
    apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# Print the last lines of a log file to stderr.
log_tail() {
    local f=$1
    if [[ -f $f ]]; then
        printf '[testenv] ---- last lines of %s ----\n' "$f" >&2
        tail -n 40 -- "$f" >&2 || true
        printf '[testenv] ---- end of %s ----\n' "$f" >&2
    else
        log "(no log file $f)"
    fi
}

# wait_for <what> <logfile> <command...>: retry command until it succeeds or
# WAIT_TIMEOUT seconds pass (then show the log and fail).
wait_for() {
    local what=$1 logf=$2
    shift 2
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${WAIT_TIMEOUT}s waiting for $what"
            log_tail "$logf"
            exit 1
        fi
        sleep 0.2
    done
}

port_in_use() {
    # Anything accepting connections?
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        return 0
    fi
    # Anything bound (listening or otherwise) to that local port?
    if command -v ss >/dev/null 2>&1; then
        ss -Htan "sport = :$1" 2>/dev/null | grep -q . && return 0
    fi
    return 1
}

# Pick N distinct free ports below the ephemeral range (so that outgoing
# connections' source ports cannot collide with them later).
pick_ports() {
    local n=$1 lo=20000 hi=32000 eph_lo
    if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
        read -r eph_lo _ </proc/sys/net/ipv4/ip_local_port_range
        if ((eph_lo > lo + 2000 && eph_lo - 1 < hi)); then hi=$((eph_lo - 1)); fi
    fi
    local -a ports=()
    local p tries=0
    while ((${#ports[@]} < n)); do
        ((++tries < 5000)) || die "could not find $n free TCP ports"
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo)))
        case $p in 2379 | 2380 | 3306 | 5432) continue ;; esac
        [[ " ${ports[*]} " == *" $p "* ]] && continue
        port_in_use "$p" && continue
        ports+=("$p")
    done
    echo "${ports[@]}"
}

# True if pid is alive and its command line mentions the state dir (guards
# against killing an unrelated process that reused a stale pid).
our_pid_alive() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$STATE_DIR"* || $cmdline == *"$SERVER_BASE"* ]]
}

# stop_pidfile <name> <pidfile>: SIGTERM, wait up to 30s, then SIGKILL.
stop_pidfile() {
    local name=$1 pidfile=$2 pid
    [[ -f $pidfile ]] || return 0
    pid=$(tr -dc '0-9' <"$pidfile" || true)
    if [[ -n $pid ]] && our_pid_alive "$pid"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "$name did not stop in 30s; killing"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.1
        done
    fi
    rm -f -- "$pidfile"
}

as_user() {
    local user=$1
    shift
    (cd / && runuser -u "$user" -- "$@")
}

# Run etcdctl with no ETCDCTL_* settings leaking in from the caller.
etcdctl_clean() {
    local v
    (
        for v in $(compgen -e); do
            case $v in ETCDCTL_* | ETCD_*) unset "$v" ;; esac
        done
        ETCDCTL_API=3 exec etcdctl --dial-timeout=3s --command-timeout=10s "$@"
    )
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
pg_start() {
    local port=$1
    log "PostgreSQL 15: initdb + start on 127.0.0.1:$port"
    mkdir -p -- "$PG_DIR" "$PG_SOCK_DIR"
    chown "$PG_OS_USER:" "$PG_DIR" "$PG_SOCK_DIR"
    chmod 0700 "$PG_DIR"
    chmod 0755 "$PG_SOCK_DIR"
    as_user "$PG_OS_USER" test -w "$PG_DIR" ||
        die "user $PG_OS_USER cannot write $PG_DIR; check the permissions of its parent directories"

    as_user "$PG_OS_USER" "$PG_BIN/initdb" -D "$PG_DATA" -U postgres \
        --auth-local=trust --auth-host=trust --encoding=UTF8 --locale=C.UTF-8 \
        --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
        {
            log_tail "$PG_DIR/initdb.log"
            die "initdb failed"
        }

    cat >>"$PG_DATA/postgresql.conf" <<EOF

# ---- etcdsync testenv ----
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_SOCK_DIR'
max_connections = 200
wal_level = logical
max_replication_slots = 50
max_wal_senders = 50
max_worker_processes = 16
wal_sender_timeout = 60s
# fsync off keeps tests fast; synchronous_commit stays on so that a commit's WAL is flushed
# (and so decodable by the walsender) at once, as on production servers.
fsync = off
ssl = on
ssl_cert_file = 'server.pem'
ssl_key_file = 'server-key.pem'
full_page_writes = off
shared_buffers = 64MB
log_min_messages = warning
log_connections = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    cat >"$PG_DATA/pg_hba.conf" <<EOF
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   trust
host    replication  all   127.0.0.1/32   trust
host    all          all   ::1/128        trust
host    replication  all   ::1/128        trust
EOF
    # TLS with the throwaway CA's server certificate (verify-full against 127.0.0.1/localhost).
    install -o "$PG_OS_USER" -m 0644 "$TLS_DIR/server.pem" "$PG_DATA/server.pem"
    install -o "$PG_OS_USER" -m 0600 "$TLS_DIR/server-key.pem" "$PG_DATA/server-key.pem"
    chown "$PG_OS_USER:" "$PG_DATA/postgresql.conf" "$PG_DATA/pg_hba.conf"

    if ! as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" \
        -w -t "$WAIT_TIMEOUT" start >"$PG_DIR/pg_ctl.log" 2>&1; then
        log_tail "$PG_DIR/pg_ctl.log"
        log_tail "$PG_LOG"
        die "PostgreSQL failed to start"
    fi
    wait_for "PostgreSQL on port $port" "$PG_LOG" \
        psql -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc 'select 1'

    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK_DIR" -p "$port" -U postgres -d postgres <<'EOF' >/dev/null
CREATE ROLE etcdsync LOGIN REPLICATION SUPERUSER PASSWORD 'etcdsync';
CREATE DATABASE etcdsync_test OWNER etcdsync;
EOF
}

pg_stop() {
    [[ -f $PG_DATA/postmaster.pid ]] || return 0
    if as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        log "stopping PostgreSQL"
        as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 ||
            log "warning: could not stop PostgreSQL in $PG_DATA"
    fi
}

pg_running() {
    [[ -f $PG_DATA/postmaster.pid ]] &&
        as_user "$PG_OS_USER" "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

# ---------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------
my_start() {
    local port=$1
    log "MariaDB: install-db + start on 127.0.0.1:$port"
    mkdir -p -- "$MY_DIR" "$MY_SOCK_DIR"
    chown "$MY_OS_USER:" "$MY_DIR" "$MY_SOCK_DIR"
    chmod 0750 "$MY_DIR"
    chmod 0755 "$MY_SOCK_DIR"
    as_user "$MY_OS_USER" test -w "$MY_DIR" ||
        die "user $MY_OS_USER cannot write $MY_DIR; check the permissions of its parent directories"

    if ! (cd / && mariadb-install-db --no-defaults --user="$MY_OS_USER" \
        --datadir="$MY_DATA" --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve >"$MY_INSTALL_LOG" 2>&1); then
        log_tail "$MY_INSTALL_LOG"
        die "mariadb-install-db failed"
    fi

    # TLS is offered (not required): the TLS tests use ssl-mode, the rest connect in clear.
    install -o "$MY_OS_USER" -m 0644 "$TLS_DIR/server.pem" "$MY_DIR/server.pem"
    install -o "$MY_OS_USER" -m 0600 "$TLS_DIR/server-key.pem" "$MY_DIR/server-key.pem"
    install -o "$MY_OS_USER" -m 0644 "$TLS_DIR/ca.pem" "$MY_DIR/ca.pem"
    # Its own temporary files: not the system's /tmp, shared with other servers and cleaners
    # (an internal temporary table vanished there once, failing a query).
    install -d -o "$MY_OS_USER" -m 0700 "$MY_DIR/tmp"

    (
        cd /
        exec setsid nohup mariadbd --no-defaults \
            --user="$MY_OS_USER" \
            --datadir="$MY_DATA" \
            --tmpdir="$MY_DIR/tmp" \
            --socket="$MY_SOCK" \
            --port="$port" \
            --bind-address=127.0.0.1 \
            --pid-file="$MY_PID" \
            --log-error="$MY_LOG" \
            --log-bin="$MY_DATA/mysql-bin" \
            --binlog-format=ROW \
            --binlog-row-image=FULL \
            --binlog-row-metadata=FULL \
            --server-id=1 \
            --log-slave-updates \
            --innodb-flush-log-at-trx-commit=2 \
            --sync-binlog=0 \
            --innodb-doublewrite=0 \
            --innodb-buffer-pool-size=128M \
            --max-connections=500 \
            --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_general_ci \
            --ssl-cert="$MY_DIR/server.pem" \
            --ssl-key="$MY_DIR/server-key.pem" \
            --ssl-ca="$MY_DIR/ca.pem" \
            --skip-name-resolve
    ) </dev/null >>"$MY_DIR/mariadbd.out" 2>&1 &
    local launcher=$!

    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until mariadb-admin --no-defaults --socket="$MY_SOCK" -uroot ping >/dev/null 2>&1; do
        if ! kill -0 "$launcher" 2>/dev/null; then
            log "mariadbd exited during startup"
            log_tail "$MY_DIR/mariadbd.out"
            log_tail "$MY_LOG"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "timed out after ${WAIT_TIMEOUT}s waiting for MariaDB"
            log_tail "$MY_LOG"
            exit 1
        fi
        sleep 0.2
    done
    # pid file is written by mariadbd itself (it is the process we started)
    [[ -s $MY_PID ]] || echo "$launcher" >"$MY_PID"

    mariadb --no-defaults --socket="$MY_SOCK" -uroot <<'EOF'
CREATE USER 'etcdsync'@'%' IDENTIFIED BY 'etcdsync';
CREATE USER 'etcdsync'@'localhost' IDENTIFIED BY 'etcdsync';
CREATE USER 'etcdsync'@'127.0.0.1' IDENTIFIED BY 'etcdsync';
GRANT ALL PRIVILEGES ON *.* TO 'etcdsync'@'%' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'etcdsync'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'etcdsync'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
EOF
    wait_for "MariaDB TCP login as etcdsync on port $port" "$MY_LOG" \
        mariadb --no-defaults -h127.0.0.1 -P"$port" -uetcdsync -petcdsync -e 'select 1'
}

my_stop() {
    stop_pidfile MariaDB "$MY_PID"
}

my_running() {
    [[ -f $MY_PID ]] && our_pid_alive "$(cat "$MY_PID")"
}

# ---------------------------------------------------------------------------
# TLS material for the second etcd
# ---------------------------------------------------------------------------
gen_tls() {
    log "generating throwaway CA + server/client certificates"
    mkdir -p -- "$TLS_DIR"
    local d=$TLS_DIR
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
            -keyout "$d/ca-key.pem" -out "$d/ca.pem" \
            -subj "/CN=etcdsync-testenv-ca" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"

        cat >"$d/server-ext.cnf" <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
EOF
        openssl req -new -newkey rsa:2048 -nodes -sha256 \
            -keyout "$d/server-key.pem" -out "$d/server.csr" -subj "/CN=localhost"
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
            -CAcreateserial -days 3650 -sha256 -extfile "$d/server-ext.cnf" -out "$d/server.pem"

        cat >"$d/client-ext.cnf" <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
        openssl req -new -newkey rsa:2048 -nodes -sha256 \
            -keyout "$d/client-key.pem" -out "$d/client.csr" -subj "/CN=etcdsync"
        openssl x509 -req -in "$d/client.csr" -CA "$d/ca.pem" -CAkey "$d/ca-key.pem" \
            -CAcreateserial -days 3650 -sha256 -extfile "$d/client-ext.cnf" -out "$d/client.pem"
    } >"$d/openssl.log" 2>&1 || {
        log_tail "$d/openssl.log"
        die "certificate generation failed"
    }
    chmod 0644 "$d"/*.pem
}

# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------
# etcd_start <dir> <name> <client_port> <peer_port> <scheme> [extra etcd flags...]
etcd_start() {
    local dir=$1 name=$2 cport=$3 pport=$4 scheme=$5
    shift 5
    local curl="$scheme://127.0.0.1:$cport" purl="http://127.0.0.1:$pport"
    log "etcd ($name): start on $curl"
    mkdir -p -- "$dir"
    (
        cd /
        for v in $(compgen -e); do
            case $v in ETCD_* | ETCDCTL_*) unset "$v" ;; esac
        done
        exec setsid nohup etcd \
            --name "$name" \
            --data-dir "$dir/data" \
            --listen-client-urls "$curl" \
            --advertise-client-urls "$curl" \
            --listen-peer-urls "$purl" \
            --initial-advertise-peer-urls "$purl" \
            --initial-cluster "$name=$purl" \
            --initial-cluster-state new \
            --initial-cluster-token "etcdsync-testenv-$name" \
            --logger zap --log-outputs stderr \
            "$@"
    ) </dev/null >>"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
}

etcd_wait() {
    local dir=$1 what=$2
    shift 2
    local pid
    pid=$(cat "$dir/etcd.pid")
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    until etcdctl_clean "$@" endpoint health >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$what exited during startup"
            log_tail "$dir/etcd.log"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "timed out after ${WAIT_TIMEOUT}s waiting for $what"
            log_tail "$dir/etcd.log"
            exit 1
        fi
        sleep 0.2
    done
}

etcd_setup_auth() {
    local -a c=("$@")
    {
        etcdctl_clean "${c[@]}" user add root:rootpw
        etcdctl_clean "${c[@]}" user grant-role root root || true # automatic on some versions
        etcdctl_clean "${c[@]}" user add etcdsync:etcdsync
        etcdctl_clean "${c[@]}" role add etcdsync-rw
        etcdctl_clean "${c[@]}" role grant-permission etcdsync-rw --prefix=true readwrite /
        # ...and every other key as well (key "" with --prefix = whole keyspace),
        # so tests are free to use keys that do not start with "/".
        etcdctl_clean "${c[@]}" role grant-permission etcdsync-rw --prefix=true readwrite ''
        etcdctl_clean "${c[@]}" user grant-role etcdsync etcdsync-rw
        etcdctl_clean "${c[@]}" auth enable
    } >"$ETCD_TLS_DIR/auth-setup.log" 2>&1 || {
        log_tail "$ETCD_TLS_DIR/auth-setup.log"
        die "enabling etcd auth failed"
    }
}

etcd_stop_all() {
    stop_pidfile etcd "$ETCD_DIR/etcd.pid"
    stop_pidfile "etcd (TLS)" "$ETCD_TLS_DIR/etcd.pid"
    CLUSTER_DIR=$STATE_DIR/etcd-cluster
    if [[ -d $CLUSTER_DIR ]]; then cluster_stop; fi
}

# ---------------------------------------------------------------------------
# 3-member etcd cluster (on demand, for the HA tests)
# ---------------------------------------------------------------------------
CLUSTER_SIZE=3

cluster_paths() {
    resolve_paths
    CLUSTER_DIR=$STATE_DIR/etcd-cluster
}

# cluster_member_start N: starts member N on the ports recorded by `cluster start`.
cluster_member_start() {
    local n=$1 state=${2:-existing}
    local -a ports
    read -r -a ports <"$CLUSTER_DIR/ports"
    local initial="" i
    for ((i = 1; i <= CLUSTER_SIZE; i++)); do
        initial+="${initial:+,}m$i=http://127.0.0.1:${ports[$((2 * i - 1))]}"
    done
    local dir=$CLUSTER_DIR/m$n cport=${ports[$((2 * n - 2))]} pport=${ports[$((2 * n - 1))]}
    mkdir -p -- "$dir"
    (
        cd /
        for v in $(compgen -e); do
            case $v in ETCD_* | ETCDCTL_*) unset "$v" ;; esac
        done
        exec setsid nohup etcd \
            --name "m$n" \
            --data-dir "$dir/data" \
            --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$initial" \
            --initial-cluster-state "$state" \
            --initial-cluster-token "etcdsync-testenv-cluster" \
            --heartbeat-interval 50 --election-timeout 500 \
            --logger zap --log-outputs stderr
    ) </dev/null >>"$dir/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
}

cluster_endpoints() {
    local -a ports
    read -r -a ports <"$CLUSTER_DIR/ports"
    local out="" i
    for ((i = 1; i <= CLUSTER_SIZE; i++)); do
        out+="${out:+,}http://127.0.0.1:${ports[$((2 * i - 2))]}"
    done
    echo "$out"
}

cluster_stop() {
    local i
    for ((i = 1; i <= CLUSTER_SIZE; i++)); do
        stop_pidfile "etcd cluster member $i" "$CLUSTER_DIR/m$i/etcd.pid"
    done
}

cmd_cluster() {
    local action=${1:-} n=${2:-}
    cluster_paths
    case $action in
    start)
        cluster_stop
        rm -rf -- "$CLUSTER_DIR"
        mkdir -p -- "$CLUSTER_DIR"
        pick_ports $((2 * CLUSTER_SIZE)) >"$CLUSTER_DIR/ports"
        local i
        for ((i = 1; i <= CLUSTER_SIZE; i++)); do cluster_member_start "$i" new; done
        local endpoints
        endpoints=$(cluster_endpoints)
        for ((i = 1; i <= CLUSTER_SIZE; i++)); do
            etcd_wait "$CLUSTER_DIR/m$i" "etcd cluster member $i" --endpoints="$(cut -d, -f"$i" <<<"$endpoints")"
        done
        if [[ -f $ENV_FILE ]]; then
            grep -v '^export ETCDSYNC_TEST_ETCD_CLUSTER=' "$ENV_FILE" >"$ENV_FILE.tmp" || true
            echo "export ETCDSYNC_TEST_ETCD_CLUSTER='$endpoints'" >>"$ENV_FILE.tmp"
            mv -f -- "$ENV_FILE.tmp" "$ENV_FILE"
        fi
        log "etcd cluster of $CLUSTER_SIZE members: $endpoints"
        echo "ETCDSYNC_TEST_ETCD_CLUSTER=$endpoints"
        ;;
    stop)
        cluster_stop
        rm -rf -- "$CLUSTER_DIR"
        ;;
    kill)
        [[ $n =~ ^[1-3]$ ]] || die "cluster kill: member number 1-3 expected"
        local pid
        pid=$(cat "$CLUSTER_DIR/m$n/etcd.pid")
        our_pid_alive "$pid" || die "cluster member $n is not running"
        kill -KILL "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        log "killed etcd cluster member $n (pid $pid)"
        ;;
    start-member)
        [[ $n =~ ^[1-3]$ ]] || die "cluster start-member: member number 1-3 expected"
        cluster_member_start "$n"
        etcd_wait "$CLUSTER_DIR/m$n" "etcd cluster member $n" --endpoints="$(cut -d, -f"$n" <<<"$(cluster_endpoints)")"
        log "started etcd cluster member $n"
        ;;
    *) die "usage: $0 cluster start|stop|kill N|start-member N" ;;
    esac
}

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
cmd_stop() {
    local clean=${1:-}
    resolve_paths
    pg_stop
    my_stop
    etcd_stop_all
    if [[ $clean == --clean ]]; then
        wipe_state
        log "stopped; state removed"
    else
        log "stopped (data left in $STATE_DIR; 'stop --clean' removes it)"
    fi
}

wipe_state() {
    # Only remove what this script creates; never the state dir itself (it
    # may be a user-chosen directory holding other things).
    rm -rf -- "$PG_DIR" "$MY_DIR" "$ETCD_DIR" "$ETCD_TLS_DIR" "$TLS_DIR" "$ENV_FILE" "$STATE_DIR/ports" "$STATE_DIR/etcd-cluster"
    rm -rf -- "$PG_SOCK_DIR" "$MY_SOCK_DIR"
    if [[ $SOCK_BASE != "$STATE_DIR" && $SOCK_BASE != "$SERVER_BASE" ]]; then rmdir -- "$SOCK_BASE" 2>/dev/null || true; fi
    if [[ $SERVER_BASE != "$STATE_DIR" ]]; then rmdir -- "$SERVER_BASE" 2>/dev/null || true; fi
    rm -f -- "$SERVER_DIR_FILE"
}

cmd_start() {
    local t0=$SECONDS
    ensure_packages
    resolve_paths

    # Always start from scratch: stop whatever a previous run left behind
    # and wipe its data, so every test run sees a clean environment.
    pg_stop
    my_stop
    etcd_stop_all
    wipe_state
    # Choose afresh where the servers' state goes (the recorded choice was wiped).
    resolve_paths
    mkdir -p -- "$STATE_DIR" "$SERVER_BASE" "$SOCK_BASE"
    chmod 0755 "$STATE_DIR" "$SERVER_BASE" "$SOCK_BASE"
    printf '%s\n' "$SERVER_BASE" >"$SERVER_DIR_FILE"
    if [[ $SERVER_BASE != "$STATE_DIR" ]]; then
        log "the database users cannot reach $STATE_DIR; their data goes to $SERVER_BASE"
    fi

    local -a ports
    read -r -a ports <<<"$(pick_ports 6)"
    local pg_port=${ports[0]} my_port=${ports[1]}
    local etcd_c=${ports[2]} etcd_p=${ports[3]} etcds_c=${ports[4]} etcds_p=${ports[5]}
    printf 'pg=%s mysql=%s etcd=%s etcd_peer=%s etcd_tls=%s etcd_tls_peer=%s\n' \
        "$pg_port" "$my_port" "$etcd_c" "$etcd_p" "$etcds_c" "$etcds_p" >"$STATE_DIR/ports"

    # If anything below fails, do not leave half an environment running.
    trap 'rc=$?; if ((rc != 0)); then log "start failed; stopping what was started"; pg_stop; my_stop; etcd_stop_all; fi' EXIT

    gen_tls
    # The etcds start in the background and come up while the databases
    # are being initialised.
    etcd_start "$ETCD_DIR" testenv "$etcd_c" "$etcd_p" http
    # NB: no --trusted-ca-file: etcd 3.4 then *requires* a verified client
    # certificate even with --client-cert-auth=false.  Without it client
    # certificates are optional (accepted and ignored); auth is user/password.
    etcd_start "$ETCD_TLS_DIR" testenv-tls "$etcds_c" "$etcds_p" https \
        --cert-file "$TLS_DIR/server.pem" --key-file "$TLS_DIR/server-key.pem" \
        --client-cert-auth=false

    pg_start "$pg_port"
    my_start "$my_port"

    local -a tls_flags=(--endpoints="https://127.0.0.1:$etcds_c" --cacert="$TLS_DIR/ca.pem")
    etcd_wait "$ETCD_DIR" "etcd on port $etcd_c" --endpoints="http://127.0.0.1:$etcd_c"
    etcd_wait "$ETCD_TLS_DIR" "etcd (TLS) on port $etcds_c" "${tls_flags[@]}"
    etcd_setup_auth "${tls_flags[@]}"
    # sanity check: the etcdsync user can write over TLS
    etcdctl_clean "${tls_flags[@]}" --user etcdsync:etcdsync put /testenv/ready 1 >/dev/null ||
        die "etcd (TLS): etcdsync user cannot write"
    etcdctl_clean "${tls_flags[@]}" --user etcdsync:etcdsync del /testenv/ready >/dev/null || true

    # MariaDB root over TCP (no password) -> admin URL, only if it works.
    local my_admin=""
    if mariadb --no-defaults -h127.0.0.1 -P"$my_port" -uroot -e 'select 1' >/dev/null 2>&1; then
        my_admin="mysql://root@127.0.0.1:$my_port"
    fi

    local tmp=$ENV_FILE.tmp
    {
        echo "# etcdsync test environment ($(date -u +%Y-%m-%dT%H:%M:%SZ)); source this file"
        echo "export ETCDSYNC_TESTENV_DIR='$STATE_DIR'"
        echo "export ETCDSYNC_TEST_PG='postgres://etcdsync:etcdsync@127.0.0.1:$pg_port/etcdsync_test'"
        echo "export ETCDSYNC_TEST_PG_ADMIN='postgres://postgres@127.0.0.1:$pg_port/postgres'"
        echo "export ETCDSYNC_TEST_PG_BIN='$PG_BIN'"
        echo "export ETCDSYNC_TEST_PG_DATA='$PG_DATA'"
        echo "export ETCDSYNC_TEST_PG_TLS_CA='$TLS_DIR/ca.pem'"
        echo "export ETCDSYNC_TEST_MYSQL_TLS_CA='$TLS_DIR/ca.pem'"
        echo "export ETCDSYNC_TEST_MYSQL='mysql://etcdsync:etcdsync@127.0.0.1:$my_port'"
        if [[ -n $my_admin ]]; then
            echo "export ETCDSYNC_TEST_MYSQL_ADMIN='$my_admin'"
        fi
        echo "export ETCDSYNC_TEST_ETCD='http://127.0.0.1:$etcd_c'"
        echo "export ETCDSYNC_TEST_ETCD_TLS='https://127.0.0.1:$etcds_c'"
        echo "export ETCDSYNC_TEST_ETCD_TLS_CA='$TLS_DIR/ca.pem'"
        echo "export ETCDSYNC_TEST_ETCD_TLS_CERT='$TLS_DIR/client.pem'"
        echo "export ETCDSYNC_TEST_ETCD_TLS_KEY='$TLS_DIR/client-key.pem'"
        echo "export ETCDSYNC_TEST_ETCD_USER='etcdsync'"
        echo "export ETCDSYNC_TEST_ETCD_PASSWORD='etcdsync'"
    } >"$tmp"
    mv -f -- "$tmp" "$ENV_FILE"
    trap - EXIT

    cat >&2 <<EOF
[testenv] ready in $((SECONDS - t0))s  (state: $STATE_DIR)
[testenv]   PostgreSQL 15  127.0.0.1:$pg_port   data $PG_DATA  log $PG_LOG
[testenv]   MariaDB        127.0.0.1:$my_port   data $MY_DATA  log $MY_LOG  socket $MY_SOCK
[testenv]   etcd           http://127.0.0.1:$etcd_c   log $ETCD_DIR/etcd.log
[testenv]   etcd TLS+auth  https://127.0.0.1:$etcds_c  log $ETCD_TLS_DIR/etcd.log  (root:rootpw, etcdsync:etcdsync)
[testenv]   env file       $ENV_FILE   (. $ENV_FILE)
EOF
}

cmd_env() {
    resolve_paths
    [[ -f $ENV_FILE ]] || die "no env file at $ENV_FILE; run '$0 start' first"
    echo "# $ENV_FILE"
    cat -- "$ENV_FILE"
}

cmd_status() {
    resolve_paths
    local rc=0
    if pg_running; then echo "postgresql: running"; else
        echo "postgresql: stopped"
        rc=1
    fi
    if my_running; then echo "mariadb: running"; else
        echo "mariadb: stopped"
        rc=1
    fi
    local d
    for d in "$ETCD_DIR" "$ETCD_TLS_DIR"; do
        if [[ -f $d/etcd.pid ]] && our_pid_alive "$(cat "$d/etcd.pid")"; then
            echo "$(basename "$d"): running"
        else
            echo "$(basename "$d"): stopped"
            rc=1
        fi
    done
    return "$rc"
}

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-start}
    (($# > 0)) && shift
    case $cmd in
    start) cmd_start ;;
    install) ensure_packages ;;
    cluster) cmd_cluster "$@" ;;
    stop) cmd_stop "${1:-}" ;;
    env) cmd_env ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
