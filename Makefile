# sitegrid: common tasks. `make test` is what CI runs (through .ci/run).

CARGO ?= cargo

.PHONY: build run test lint bench chaos demo fuzz audit

build:
	$(CARGO) build --release --bins --examples

run:
	$(CARGO) run --release --bin sitegrid

test:
	python3 -m pip install -r .ci/requirements.txt && $(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Two sites of two nodes each on loopback, and a simulated identity node per site that
# prints what it receives; prints the commands to try; Ctrl-C stops everything.
demo: build
	./target/release/sitegrid-demo

bench: build
	$(CARGO) run --release -p sitegrid-integration-tests --bin sitegrid-bench -- --output BENCHMARKS.md

# Every fuzz target (integration-tests/tests/fuzz.rs) for FUZZ_SECONDS each, two at a
# time; each prints how many cases it ran. `cargo test` runs them briefly.
FUZZ_SECONDS ?= 600

fuzz:
	SITEGRID_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test --release -p sitegrid-integration-tests \
		--test fuzz -- --test-threads 2 --nocapture

# Known advisories (RustSec) against Cargo.lock with the live database from github.com;
# installs cargo-audit if missing. Where github.com is out of reach, give a copy:
# `make audit AUDIT_ARGS="--db DIR --no-fetch --stale"`. `cargo test` audits offline
# too, against the snapshot in .ci/advisory-db (integration-tests/tests/advisories.rs);
# `.ci/advisories.sh DIR` refreshes it from a checkout of rustsec/advisory-db.
AUDIT_ARGS ?=

audit:
	$(CARGO) audit --version >/dev/null 2>&1 || $(CARGO) install cargo-audit --locked
	$(CARGO) audit $(AUDIT_ARGS)

# Long randomized fault-injection runs: `make chaos SEEDS=10 DURATION=30s [SEED=n]`.
SEEDS ?= 10
DURATION ?= 30s
SEED ?=

chaos: build
	$(CARGO) run --release -p sitegrid-integration-tests --bin sitegrid-chaos -- \
		--seeds $(SEEDS) --duration $(DURATION) $(if $(SEED),--seed $(SEED)) --output RELIABILITY.md
