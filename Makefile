# BACKBEAT developer commands. Every target prepares what it needs (virtualenv, npm tools).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
PYTEST_ARGS ?=

.PHONY: help run status tempo windows reports test test-fast chaos lint typecheck proto proto-check buf-lint buf-breaking bench infra-check lambda-package clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP)  ## run the whole system locally (embedded Redis x3 + NATS, pulse x2, reverb, agents)
	$(BIN)/backbeat up $(ARGS)

# Operator commands against a running `make run`, without activating the virtualenv. Other
# addresses: BACKBEAT_PULSE_ADDR / BACKBEAT_REVERB_ADDR, or ARGS="--pulse HOST:PORT".
status: $(STAMP)  ## leader, term, tempo, last beat; latest windows
	@$(BIN)/backbeat status $(ARGS)

tempo: $(STAMP)  ## change the tempo: make tempo BPM=126 TOKEN=<token> (or BACKBEAT_API_TOKEN)
	@test -n "$(BPM)" || { echo 'usage: make tempo BPM=126 TOKEN=<the token make run printed>' >&2; exit 2; }
	@$(BIN)/backbeat tempo $(BPM) $(if $(TOKEN),--token '$(TOKEN)') $(ARGS)

windows: $(STAMP)  ## list windows, or one: make windows ID=<id or unique prefix>
	@$(BIN)/backbeat windows $(ID) $(ARGS)

reports: $(STAMP)  ## follow bar reports (ARGS="--new": only new ones); Ctrl-C stops
	@$(BIN)/backbeat reports --follow $(ARGS)

test: lint  ## lint, type-check, the whole test suite, then the Terraform checks
	$(BIN)/pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory infra-check

test-fast: $(STAMP)  ## only the fast unit tests
	$(BIN)/pytest -m "not integration and not fault" $(PYTEST_ARGS)

# Random nemesis schedules against the real system (tests/nemesis/chaos.py): DURATION seconds,
# seeds from SEED (default: the time); failing runs' histories go to OUT/seed-<seed>/.
# REPLAY=<seed> runs that one seed again; SCENARIO=<name> runs a scripted schedule instead.
DURATION ?= 600
FAULTS   ?= 6
OUT      ?= chaos-runs
chaos: $(STAMP)  ## random fault schedules for DURATION s (SEED=, REPLAY=, SCENARIO=, FAULTS=, OUT=)
	$(BIN)/python -m tests.nemesis.chaos --duration $(DURATION) --faults $(FAULTS) --out $(OUT) \
		$(if $(SEED),--seed $(SEED)) $(if $(REPLAY),--replay $(REPLAY)) \
		$(if $(SCENARIO),--scenario $(SCENARIO))

test-stress: $(STAMP)  ## integration + fault tests with 2 CPU burners beside them (RUNS=5: in a row)
	$(BIN)/python tools/stress.py --runs $(or $(RUNS),1) -- $(PYTEST_ARGS)

lint: $(STAMP) $(NODE_STAMP) proto-check buf-lint buf-breaking  ## ruff, mypy --strict, buf lint + breaking, generated code fresh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

proto: $(STAMP)  ## regenerate control_plane/backbeat/v1 from proto/
	$(BIN)/python tools/protogen.py

proto-check: $(STAMP)
	$(BIN)/python tools/protogen.py --check

buf-lint: $(NODE_STAMP)
	npx --no-install buf lint

# Compared with the main branch of this repository (also from a git worktree); on main itself
# this is a no-op, on a feature branch it refuses wire-incompatible changes.
buf-breaking: $(NODE_STAMP)  ## compare proto/ with the main branch (FILE rules)
	@if git rev-parse --verify --quiet main >/dev/null; then \
		npx --no-install buf breaking --against "$$(git rev-parse --git-common-dir)#branch=main"; \
	else echo "buf breaking: no local main branch to compare with (skipped)"; fi

bench: $(STAMP)  ## run every benchmark in bench/ and write bench/results/
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache bench/results

infra-check:  ## fmt, validate, terraform test, checkov, then apply + destroy against a local AWS emulator
	bash infra/terraform/check.sh

lambda-package:  ## build build/reverb-rollup-lambda.zip, the rollup's AWS Lambda package
	$(PYTHON) infra/terraform/package_lambda.py --output build/reverb-rollup-lambda.zip
