# The two commands: `make up` runs the system, `make test` runs every test. Both set up what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.local/bin:$(PATH)
UV := uv
RUN := $(UV) run --frozen

.PHONY: help setup up demo drill down status test lint fmt

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

setup: ## install what is missing: Debian packages, Kafka jars (Maven), the Python environment (uv)
	@bash scripts/setup.sh

up: setup ## start the local stack and every service; Ctrl-C stops them
	$(RUN) orderly up

demo: setup ## against the running system (started when needed), prove each promise: PASS or FAIL with evidence
	$(RUN) orderly demo

drill: setup ## against the running system (started when needed), kill processes and restart servers under load: PASS or FAIL per pipeline
	$(RUN) orderly drill

down: setup ## stop every server of the local stack
	$(RUN) orderly stack down

status: setup ## every process, server and pipeline at a glance (`orderly status --watch` keeps it live)
	$(RUN) orderly status

test: setup ## lint, start the stack when needed, run every test against the real servers
	$(RUN) orderly stack up
	$(MAKE) --no-print-directory lint
	$(RUN) pytest

lint: ## ruff (lint + format check) and mypy --strict
	$(RUN) ruff check src tests bench
	$(RUN) ruff format --check src tests bench
	$(RUN) mypy

fmt: ## format and auto-fix
	$(RUN) ruff format src tests bench
	$(RUN) ruff check --fix src tests bench

# Each service adds its benchmark target (bench-<service>) in bench/<service>.mk.
-include bench/*.mk
BENCH_TARGETS := $(sort $(patsubst bench/%.mk,bench-%,$(wildcard bench/*.mk)))

.PHONY: bench-ab
bench-ab: setup ## A/B in one run: every bench-* target on BASE=<rev> and HEAD=<rev> (default HEAD) → bench/results/ab.md
	@test -n "$(BASE)" || { echo "usage: make bench-ab BASE=<rev> [HEAD=<rev>] [ONLY=ingest,sums,items,loms] [ROUNDS=N]"; exit 2; }
	$(RUN) python -m bench.ab --base "$(BASE)" --head "$(or $(HEAD),HEAD)" $(if $(ONLY),--only "$(ONLY)") $(if $(ROUNDS),--rounds "$(ROUNDS)")
	$(RUN) python bench/render.py

.PHONY: bench-ab-paired
bench-ab-paired: setup ## paired A/B of the HTTP hot paths: both revisions serving side by side, loaded together
	@test -n "$(BASE)" || { echo "usage: make bench-ab-paired BASE=<rev> [HEAD=<rev>] [PAIRS=N] [ALTERNATE=1] [TARGETS=hello,ingest,ingest-drain,items,items-uncached,items-mix,sums,loms,loms-relay]"; exit 2; }
	$(RUN) python -m bench.ab_paired --base "$(BASE)" --head "$(or $(HEAD),HEAD)" $(if $(PAIRS),--pairs "$(PAIRS)") \
		$(if $(ALTERNATE),--alternate) $(if $(TARGETS),--targets "$(TARGETS)")
	$(RUN) python bench/render.py

.PHONY: bench
bench: setup ## run every bench-* target, then render docs/benchmarks.md with one chart per pipeline
	@for target in $(BENCH_TARGETS); do $(MAKE) --no-print-directory $$target || exit 1; done
	$(RUN) python bench/render.py
