# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= build/demo-lab
DEMO_TRIALS ?= 12

CLIS := build/clis
CLAUDE_CODE_VERSION := 2.1.328
CODEX_VERSION := 0.169.0
AIDER := build/aider
AIDER_VERSION := 0.86.2
WEB := build/web
VENDOR := overnight/web/static/vendor
# the command center's front-end files, committed in $(VENDOR) and credited in its THIRD_PARTY.toml
WEB_PACKAGES := @xterm/xterm@6.0.0 @xterm/addon-fit@0.11.0 htmx.org@2.0.11

.PHONY: demo test lint typecheck bench clean clis system-deps web-assets

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

## demo: install, then run the example lab end to end, offline, on the CPU
# The demo lab is made afresh each time, so it signs its audit chain with a key of its own
# (beside the lab, not in it): a signed head left by the last demo would otherwise say the
# new lab's empty chain had its records deleted.
DEMO_AUDIT_KEY := $(abspath $(DEMO_DIR)-audit/audit.key)

demo: $(VENV)/.installed
	rm -rf $(DEMO_DIR) $(DEMO_DIR)-audit
	$(BIN)/overnight example spirals $(DEMO_DIR)
	# the lab's `run = "python train.py"` must find the venv's python (numpy is there)
	PATH="$(abspath $(BIN)):$$PATH" OVERNIGHT_AUDIT_KEY=$(DEMO_AUDIT_KEY) \
		$(BIN)/overnight run $(DEMO_DIR) --trials $(DEMO_TRIALS)
	OVERNIGHT_AUDIT_KEY=$(DEMO_AUDIT_KEY) $(BIN)/overnight report $(DEMO_DIR)
	@echo "audit: OVERNIGHT_AUDIT_KEY=$(DEMO_AUDIT_KEY) $(BIN)/overnight audit verify $(DEMO_DIR)"

## system-deps: Debian packages the tests drive for real (tmux for terminal sessions,
## chromium for the command center's browser tests, bubblewrap for the sandbox)
system-deps:
	@command -v tmux >/dev/null || { apt-get update -qq && apt-get install -y -qq tmux; }
	@test -x /usr/bin/chromium || { apt-get update -qq && apt-get install -y -qq chromium; }
	@command -v bwrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap; }

## web-assets: refresh the committed front-end files (xterm.js, htmx) from npm at the pinned
## versions, with their licenses; then the checksums in $(VENDOR)/THIRD_PARTY.toml are checked.
## Only needed to change a version: every install serves the committed files.
web-assets: $(VENV)/.installed-dev
	rm -rf $(WEB) && mkdir -p $(WEB)
	npm install --prefix $(WEB) --no-audit --no-fund --loglevel=error $(WEB_PACKAGES)
	cp $(WEB)/node_modules/@xterm/xterm/lib/xterm.js $(WEB)/node_modules/@xterm/xterm/css/xterm.css \
		$(WEB)/node_modules/@xterm/addon-fit/lib/addon-fit.js $(WEB)/node_modules/htmx.org/dist/htmx.min.js \
		$(VENDOR)/
	cp $(WEB)/node_modules/@xterm/xterm/LICENSE $(VENDOR)/LICENSE.xterm
	cp $(WEB)/node_modules/@xterm/addon-fit/LICENSE $(VENDOR)/LICENSE.addon-fit
	cp $(WEB)/node_modules/htmx.org/LICENSE $(VENDOR)/LICENSE.htmx
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/web/test_wheel.py -k "not wheel_from"

## clis: the real Claude Code and Codex CLIs, for end-to-end tests against our gateway
$(CLIS)/.installed:
	mkdir -p $(CLIS)
	npm install --prefix $(CLIS) --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) @openai/codex@$(CODEX_VERSION)
	touch $@

## ... and aider, in a virtualenv of its own (its pinned dependencies are not ours)
$(AIDER)/.installed:
	$(PYTHON) -m venv $(AIDER)
	$(AIDER)/bin/pip install -q aider-chat==$(AIDER_VERSION)
	touch $@

clis: $(CLIS)/.installed $(AIDER)/.installed

## test: install with dev tools, lint, type-check, and run the whole suite
test: system-deps $(VENV)/.installed-dev $(CLIS)/.installed $(AIDER)/.installed lint typecheck
	$(BIN)/python -m pytest -q

## lint: ruff, and the import contract (pyproject.toml's [tool.importlinter]): the layers
## read bottom-up, no cycles, SQL only in the store
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check overnight tests benchmarks
	$(BIN)/ruff format --check overnight tests benchmarks
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

## bench: every benchmark, each printing its figures
bench: system-deps $(VENV)/.installed-dev
	$(BIN)/python benchmarks/lab_overhead.py
	$(BIN)/python benchmarks/failover.py
	$(BIN)/python benchmarks/agents_scale.py       # needs tmux; ~3 min
	$(BIN)/python benchmarks/gateway_overhead.py   # installs a pinned LiteLLM into build/bench on first use
	$(BIN)/python benchmarks/ui_scale.py           # needs chromium (system-deps)
	$(BIN)/python benchmarks/governance.py         # decisions, the hook's round trip, audit append/verify
	$(BIN)/python benchmarks/sandbox.py            # what the sandbox and the watchdog cost a trial; redaction rate
	$(BIN)/python benchmarks/peak_memory.py        # what measuring a trial's peak RSS costs, and how close it comes
	$(BIN)/python benchmarks/notify.py             # event -> webhook delivery p50/p95; trials/s with a dead sink vs none
	$(BIN)/python benchmarks/ray_cluster.py        # needs root (a network namespace): Ray vs local dispatch, slot use
	$(BIN)/python benchmarks/research.py           # the research loop on spirals and tsp: sharing, noise floor, slot use (~15 min)
	$(BIN)/python benchmarks/costs.py              # overnight costs / the Costs page on 1M attempts; the report on 10k trials

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
