# Everything runs from the project's own virtualenv; nothing needs to be activated.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Infrastructure checks (checkov, pycep, actionlint) live apart: checkov's pinned dependencies
# conflict with requirements-dev.txt (see requirements-iac.txt).
IAC_VENV := .venv-iac

.PHONY: setup lint test emulator run bench soak package clean

# Re-created whenever a requirements file changes.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

$(IAC_VENV)/.installed: requirements-iac.txt
	$(PYTHON) -m venv $(IAC_VENV)
	$(IAC_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(IAC_VENV)/bin/python -m pip install --quiet -r requirements-iac.txt
	touch $@

# Azurite (the storage emulator) from npm; 3.35.0 is the last release that runs on Node 20.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Also Debian's Chromium, which the dashboard's browser test drives with Playwright (Playwright's
# own browser download is never used); installed only if missing, with sudo only when not root.
setup: $(VENV)/.installed $(IAC_VENV)/.installed node_modules/.installed
	@[ -x /usr/bin/chromium ] || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest

# With the workspace `make run` makes (devhost/run.py) and local.settings.example.json names:
# a managed identity may not use My workspace, in the emulator as in Power BI.
emulator: setup
	$(BIN)/python -m emulator --port 5300 --workspace Local=7c0ca1e5-0000-4000-8000-000000007071

# Azurite (10000-10002) + the Power BI emulator (5300) + the local functions host (7071);
# prints the URLs and a curl to try. Ctrl-C stops all three.
run: setup
	$(BIN)/python -m devhost.run

# Benchmarks (bench/): prints the figures with their targets and writes bench/results/latest.json.
# About twenty minutes on two cores; `make bench BENCH_ARGS=--quick` for a smaller run.
bench: setup
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Reliability soak (tests/reliability/soak.py): rounds of faults, SIGKILL crashes and Power BI
# outages with 100,000 rows each, then the hostile-input tests x5; prints the accounting and
# writes tests/reliability/results/latest.md. `make soak SOAK_MINUTES=30` for longer.
SOAK_MINUTES ?= 10
soak: setup
	$(BIN)/python -m tests.reliability.soak --minutes $(SOAK_MINUTES)

# The deployable zip (tools/package.py): the app files .funcignore lets through at the root and the
# requirements.txt dependencies as CPython 3.11 manylinux x86_64 wheels in
# .python_packages/lib/site-packages, for a deployment with remote build off. Prints size and file
# count. `make package PACKAGE_ARGS="--out /tmp/app.zip"` writes elsewhere.
package: $(VENV)/.installed
	$(BIN)/python -m tools.package $(PACKAGE_ARGS)

clean:
	rm -rf $(VENV) $(IAC_VENV) .pytest_cache .mypy_cache .ruff_cache dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
