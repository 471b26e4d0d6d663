#!/usr/bin/env bash
# The one command that runs every test:
#   0. tools/testenv.sh install (apt-get what is missing: servers, protoc)
#   1. (CI=true only) cargo fmt --check and clippy -D warnings
#   2. tools/testenv.sh start   (private PostgreSQL, MariaDB, etcd, etcd TLS+auth)
#   3. cargo test --workspace --all-features --no-fail-fast [extra args] (every failing test is
#      reported, not only the first test binary's)
#   4. tools/testenv.sh stop    (always, from an EXIT trap)
# Exits with cargo's status.
#
# Examples:
#   tools/test.sh
#   tools/test.sh -p etcdsync-core
#   tools/test.sh -p etcdsync-core some_test -- --nocapture
#
# ETCDSYNC_TESTENV_KEEP=1 leaves the environment running afterwards (then
# `. target/testenv/env` and run cargo yourself; `tools/testenv.sh stop`).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd -- "$REPO_ROOT"

# The test command; extra arguments to this script are appended.
CARGO_TEST=(cargo test --workspace --all-features --no-fail-fast)
CARGO_FMT=(cargo fmt --all -- --check)
CARGO_CLIPPY=(cargo clippy --workspace --all-targets --all-features -- -D warnings)
# A binary with only some built-in plugins (the cli's features) still builds.
CARGO_SOME_PLUGINS=(cargo check -p etcdsync-cli --no-default-features --features sink-etcd,source-pgx)

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

if [[ -f $HOME/.cargo/env ]] && ! command -v cargo >/dev/null 2>&1; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

say() { printf '[test] %s\n' "$*" >&2; }

# Packages first: the build itself needs protoc (etcd-client).
"$SCRIPT_DIR/testenv.sh" install

if [[ ${CI:-} == true ]]; then
    say "CI: ${CARGO_FMT[*]}"
    "${CARGO_FMT[@]}"
    say "CI: ${CARGO_CLIPPY[*]}"
    "${CARGO_CLIPPY[@]}"
    say "CI: ${CARGO_SOME_PLUGINS[*]}"
    "${CARGO_SOME_PLUGINS[@]}"
fi

# shellcheck disable=SC2317 # invoked from the EXIT trap
cleanup() {
    local rc=$?
    if [[ ${ETCDSYNC_TESTENV_KEEP:-0} == 1 ]]; then
        say "ETCDSYNC_TESTENV_KEEP=1: leaving the test environment running"
    else
        "$SCRIPT_DIR/testenv.sh" stop || say "warning: tools/testenv.sh stop failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
# Make Ctrl-C / termination go through the EXIT trap as well.
trap 'exit 130' INT
trap 'exit 143' TERM

"$SCRIPT_DIR/testenv.sh" start

ENV_FILE=${ETCDSYNC_TESTENV_DIR:-$REPO_ROOT/target/testenv}/env
# shellcheck disable=SC1090
. "$ENV_FILE"

# `--workspace` would override a package selection given on the command line
# (`tools/test.sh -p etcdsync-core`), so drop it in that case.
for arg in "$@"; do
    [[ $arg == -- ]] && break
    case $arg in
    -p | -p?* | --package | --package=*)
        filtered=()
        for word in "${CARGO_TEST[@]}"; do
            [[ $word == --workspace ]] || filtered+=("$word")
        done
        CARGO_TEST=("${filtered[@]}")
        break
        ;;
    esac
done

say "${CARGO_TEST[*]} $*"
status=0
"${CARGO_TEST[@]}" "$@" || status=$?
if ((status == 0)); then say "tests passed"; else say "tests FAILED (exit $status)"; fi
exit "$status"
