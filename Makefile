# `make demo` and `make test` work on a fresh machine: they create .venv and
# install the project into it. The rest comes with Debian (or is installed from
# it when missing, as root): Prometheus and promtool, Chromium for the browser
# tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-down test test-fast test-contended bench lint clean debian-tools debian-bench-tools bytecode

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Every agent starts through the launcher (python -m orchestrator.launch), and the daemons run for as long as
# supervisord does: their modules are compiled once here, not at each start (and not in each daemon's memory),
# even where PYTHONDONTWRITEBYTECODE is set.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q orchestrator

demo: $(STAMP) bytecode
	$(BIN)/orchestrator -m manifests validate
	$(BIN)/orchestrator -m manifests graph
	$(BIN)/orchestrator -m manifests up
	$(BIN)/orchestrator -m manifests status
	@echo
	@echo "The five trading agents are running under supervisord (state, logs, socket: .orchestrator/)."
	@echo "  see them:        $(BIN)/orchestrator status"
	@echo "  their logs:      ls .orchestrator/logs/"
	@echo "  stop everything: make demo-down   (or: $(BIN)/orchestrator down)"

demo-down: $(STAMP)
	$(BIN)/orchestrator -m manifests down --yes

test: $(STAMP) bytecode debian-tools
	$(BIN)/pytest -q

# The integration tests scrape the exporter with a real Prometheus, and promtool checks what we generate for it:
# Debian's `prometheus`, installed when missing (this needs root, as the rest of the Debian tools do).
debian-tools:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; fi
# The control room's browser tests drive Debian's headless Chromium through its chromedriver (selenium).
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# bench_exporter compares the exporter with Debian's prometheus-process-exporter on the same processes.
debian-bench-tools:
	@if ! command -v prometheus-process-exporter >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-process-exporter; fi

test-fast: $(STAMP)
	$(BIN)/pytest -q -x tests/unit

# The integration tests while both cores are kept busy by CPU burners (started and stopped by tests/contend.py).
test-contended: $(STAMP) bytecode debian-tools
	$(BIN)/python tests/contend.py -- $(BIN)/pytest -q tests/integration

# Every benchmark runs to the end; those that missed their goal (or failed) are named last, and the exit is 1.
bench: $(STAMP) bytecode debian-bench-tools
	@missed=""; for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || missed="$$missed $$b"; done; \
	if [ -n "$$missed" ]; then echo "missed their goal or failed:$$missed"; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .orchestrator build *.egg-info
