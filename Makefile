# FerroLB developer tasks. `make` lists them.
.DEFAULT_GOAL := help
CARGO ?= cargo

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

build: ## Build every binary (controller, speaker, test API server, lab)
	$(CARGO) build --workspace --bins

# `make test` is self-contained: every API server it talks to is the embedded test API
# server (KUBECONFIG is ignored), and the tests that need a real server are left to
# `make test-k8s`.
test: build ## The full suite: unit, integration and the netns lab (lab needs root)
	env -u KUBECONFIG $(CARGO) nextest run --workspace --no-fail-fast \
		-E 'not test(differential_against_real_server) and not test(leader_chaos_on_real_server)'

test-k8s: build ## The suite against a real kube-apiserver: install, controller, differential, lab (root)
	tests/k8s/suite

unit: ## Unit and property tests only (no API server, no root)
	$(CARGO) nextest run --workspace --lib

# promtool comes with Debian's `prometheus` package. The PrometheusRule's spec becomes a
# plain rules file (its body, two spaces less indented) next to copies of the tests.
ALERTS_DIR := target/alerts
test-alerts: ## Alert rules: promtool check + unit tests on synthetic series (needs promtool)
	@command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus" >&2; exit 1; }
	rm -rf $(ALERTS_DIR) && mkdir -p $(ALERTS_DIR)
	awk 'f { sub(/^  /, ""); print } /^spec:/ { f = 1 }' deploy/prometheus/prometheusrule.yaml > $(ALERTS_DIR)/ferrolb.rules.yaml
	cp deploy/prometheus/tests/*.yaml $(ALERTS_DIR)/
	promtool check rules $(ALERTS_DIR)/ferrolb.rules.yaml
	cd $(ALERTS_DIR) && promtool test rules $(notdir $(wildcard deploy/prometheus/tests/*.yaml))

lint: fmt-check clippy crds-check ## Everything CI checks besides tests

fmt-check: ## Formatting
	$(CARGO) fmt --all -- --check

clippy: ## Lints, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

crds: ## Regenerate deploy/crds from the Rust types
	$(CARGO) run -q -p ferrolb-crds --bin crdgen

crds-check: crds ## Fail when deploy/crds differs from the Rust types
	git diff --exit-code -- deploy/crds

# Fuzzing (fuzz/, cargo-fuzz on stable Rust: `--sanitizer none` needs no nightly flag, and
# the parsers are safe Rust, which AddressSanitizer would add nothing to). Each target starts
# from its committed seeds (fuzz/corpus/<target>, read only) and writes what it finds to
# fuzz/target/corpus/<target>; a crash stops the run and lands in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 30
FUZZ_BUILD := --sanitizer none --debug-assertions
FUZZ_ARGS := -max_len=1600 -timeout=10 -print_final_stats=1
fuzz: ## Build the fuzz targets, run each for FUZZ_SECONDS (default 30) (needs cargo-fuzz)
	@$(CARGO) fuzz --version >/dev/null 2>&1 || { echo "cargo-fuzz not found: cargo install cargo-fuzz --locked" >&2; exit 1; }
	cd fuzz && $(CARGO) fuzz build $(FUZZ_BUILD)
	@cd fuzz && mkdir -p target/logs && summary= && targets=$$($(CARGO) fuzz list) && \
	{ [ -n "$$targets" ] || { echo "FAIL: cargo fuzz list found no fuzz target" >&2; exit 1; }; } && \
	for t in $$targets; do \
		mkdir -p target/corpus/$$t; log=target/logs/$$t.log; \
		echo "--- fuzz $$t for $(FUZZ_SECONDS) s (log: fuzz/$$log)"; \
		if ! $(CARGO) fuzz run $(FUZZ_BUILD) $$t target/corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) >$$log 2>&1; then \
			grep -q 'panicked at' $$log && sed -n '/panicked at/,$$p' $$log | head -n 100 || tail -n 60 $$log; \
			echo "FAIL: fuzz target $$t failed (crash, timeout or out of memory); reproducer: fuzz/$$(ls -t artifacts/$$t/* 2>/dev/null | head -1)" >&2; \
			echo "      (cd fuzz && cargo fuzz run $(FUZZ_BUILD) $$t <reproducer>) replays it" >&2; \
			exit 1; \
		fi; \
		execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log); \
		rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log); \
		summary="$$summary$$(printf '  %-20s %12s execs %9s exec/s' $$t $$execs $$rate)\n"; \
	done && printf "fuzz: %s s per target\n$$summary" $(FUZZ_SECONDS)

bench: ## Allocator and election benchmarks (prints figures)
	$(CARGO) bench -p ferrolb-controller
	$(CARGO) bench -p ferrolb-speaker

demo: build ## Live demo in network namespaces: a pool, a Service, a client, a failover (root)
	$(CARGO) run -q -p ferrolb-lab --bin demo

figures: build ## Lab figures: failover p50/p99, ARP/NDP latency, speaker RSS, API writes (root)
	$(CARGO) run -q --release -p ferrolb-lab --bin figures

.PHONY: help build test test-k8s test-alerts unit lint fmt-check clippy crds crds-check fuzz bench demo figures
