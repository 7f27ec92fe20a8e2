# The two commands of the README are `make up` and `make test`; the rest are their parts.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export MT_HOME ?= $(CURDIR)/.local
UV = $(shell infra/bootstrap-uv.sh)
VENV_BIN := $(CURDIR)/.venv/bin
PYTEST_ARGS ?=

.PHONY: help install infra venv web web-perf surge-shots up down ps proto proto-check lint format test test-unit test-integration surge surge-ui capacity cost bulk chaos sim

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

infra:  ## install Kafka, Redis, etcd and Zipkin (idempotent)
	infra/install.sh

# Bytecode compiled once here: this machine's environment sets PYTHONDONTWRITEBYTECODE, so
# otherwise every process would compile its imports anew (~1 s of CPU per replica start).
venv:  ## create .venv from the lock file (the `minithreads` CLI lands in .venv/bin)
	$(UV) sync --locked --quiet --compile-bytecode
	$(VENV_BIN)/python -m compileall -q -j 0 services libs > /dev/null

# The web client (web/): npm ci from the lock, then Vite; both redone only when their inputs change.
WEB_SRC := $(shell find web/src web/public web/index.html web/control web/docs -type f 2>/dev/null)
web/node_modules/.ok: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.ok

web/dist/.ok: web/node_modules/.ok $(WEB_SRC) web/vite.config.ts web/tsconfig.json
	cd web && npx vite build --logLevel warn && touch dist/.ok

web: web/dist/.ok  ## build the web client (served by the gateway at its root)

install: infra venv web  ## everything `up` and `test` need

up: install  ## run the whole stack locally and print the URLs
	$(VENV_BIN)/minithreads up --no-install

down:  ## stop everything `up` started
	@if [[ -x $(VENV_BIN)/minithreads ]]; then $(VENV_BIN)/minithreads down; else echo "nothing to stop"; fi

ps:  ## what is running
	$(VENV_BIN)/minithreads ps

proto: venv  ## regenerate the mt_proto package from proto/*.proto
	$(VENV_BIN)/python proto/generate.py

proto-check: venv  ## fail if the generated package is stale
	$(VENV_BIN)/python proto/generate.py --check

format: venv  ## apply the formatter and the safe lint fixes
	$(VENV_BIN)/ruff format .
	$(VENV_BIN)/ruff check --fix .

lint: venv proto-check web/node_modules/.ok  ## ruff (lint + format check), mypy --strict and tsc (the web client)
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy
	cd web && npx tsc --noEmit

test-unit: venv web/node_modules/.ok  ## unit tests only (no services needed): Python's, then the web client's
	$(VENV_BIN)/pytest tests/unit $(PYTEST_ARGS)
	cd web && npx vitest run

test: install lint  ## lint, then every test: the web client's unit tests, then unit, integration and e2e against the real stack
	cd web && npx vitest run
	$(VENV_BIN)/pytest $(PYTEST_ARGS)

surge: install  ## replay the launch with Locust (SURGE_DURATION_S, SURGE_SCALE, SURGE_TARGET); report in loadtest/reports/
	$(VENV_BIN)/python loadtest/surge.py

capacity: install  ## open-loop capacity C, then 0.5C..4C with fixed vs adaptive admission; report in loadtest/reports/
	$(VENV_BIN)/python loadtest/capacity.py

# The base revision of "cheaper actions" (issue 17): what `make cost` compares this tree against.
COST_BASE ?= 4ef74de

cost: install  ## CPU per user action over every process, this tree vs COST_BASE (A/B, same run); report in loadtest/reports/
	$(VENV_BIN)/python loadtest/cost.py --base $(COST_BASE)

bulk: install  ## applied follows/s of a celebrity's join and of imports, this tree (and BULK_BASE); invariants checked
	$(VENV_BIN)/python loadtest/bulk.py $(if $(BULK_BASE),--base $(BULK_BASE))

web-perf: install  ## the web client's bundle sizes and first screen on a throttled phone (needs `make up`)
	$(VENV_BIN)/python loadtest/web_perf.py

surge-shots: install  ## make surge with a kill -9 of a primary, the control room screenshotted mid-surge and drained (docs/control-room/)
	$(VENV_BIN)/python loadtest/control_shots.py

surge-ui: venv  ## Locust's web UI against the running stack (http://127.0.0.1:8089; Ctrl-C stops)
	@echo "Locust UI: http://127.0.0.1:8089 against $${SURGE_TARGET:-http://127.0.0.1:8080} (Ctrl-C stops)"
	$(VENV_BIN)/locust -f loadtest/locustfile.py --host $${SURGE_TARGET:-http://127.0.0.1:8080} --web-host 127.0.0.1

SEEDS ?= 100
FIRST ?= 1
SIM_JOBS ?= 2

sim: venv  ## the KV's deterministic simulation: SEEDS seeds from FIRST on SIM_JOBS cores (BREAK=<rule> breaks one on purpose, UNTIL_FOUND=1 stops at the first failure); a failing seed prints its replay command
	PYTHONHASHSEED=0 $(VENV_BIN)/mt-kv-sim --seeds $(SEEDS) --first $(FIRST) --jobs $(if $(UNTIL_FOUND),1,$(SIM_JOBS)) $(if $(BREAK),--break $(BREAK)) $(if $(UNTIL_FOUND),--until-found)

chaos: install  ## the full fault suite (20+ primary kills, pauses, broker and worker kills); ends with its verdict line
	@summary=$$(mktemp); \
	MT_CHAOS_FULL=1 MT_CHAOS_SUMMARY=$$summary $(VENV_BIN)/pytest tests/chaos -m chaos $(PYTEST_ARGS); status=$$?; \
	cat $$summary; rm -f $$summary; exit $$status
