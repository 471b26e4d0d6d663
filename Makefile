# Developer entry points; see tools/*.sh.
.PHONY: all test testenv testenv-stop demo bench bench-sink lint fmt clippy

all: test

test:
	tools/test.sh

testenv:
	tools/testenv.sh start

testenv-stop:
	tools/testenv.sh stop

demo:
	tools/demo.sh

# By hand only (never from tools/test.sh or CI): sizes from BENCH_* variables, see tools/bench.sh.
bench:
	tools/bench.sh

bench-sink:
	tools/bench-etcd-sink.sh

lint: fmt clippy

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets --all-features -- -D warnings
