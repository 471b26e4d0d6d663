# Developer entry points; see tools/*.sh.
.PHONY: all test testenv testenv-stop demo bench lint fmt clippy

all: test

test:
	tools/test.sh

testenv:
	tools/testenv.sh start

testenv-stop:
	tools/testenv.sh stop

demo:
	tools/demo.sh

bench:
	tools/bench-etcd-sink.sh

lint: fmt clippy

fmt:
	cargo fmt --all -- --check

clippy:
	cargo clippy --workspace --all-targets --all-features -- -D warnings
