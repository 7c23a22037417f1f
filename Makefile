# The two commands of the README's quick start. Both install what they need
# into .venv first, so a fresh clone on a fresh machine needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest verify-unit host-tools bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
		echo "cannot create $(VENV) with $(PYTHON) (3.11+ needed; on Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

# The daemon and the HTTP gateway (ADK's web UI at http://127.0.0.1:8000/dev-ui/) with
# the example agents, on an embedded Redis in ./state. Ctrl-C reaches both (they are in
# the terminal's process group and handle SIGINT themselves); SIGTERM to the recipe's
# shell, or either one stopping, stops the other. The gateway waits for the daemon to
# say where its Redis is.
run: $(STAMP)
	@export PYTHONPATH=$(CURDIR) ADK_SUPERVISOR_CONFIG=examples/config.toml; \
	trap 'stopping=1' INT; \
	trap 'stopping=1; kill -TERM $$gateway $$daemon 2>/dev/null' TERM; \
	$(BIN)/adk-supervisor run & daemon=$$!; \
	$(BIN)/adk-supervisor gateway & gateway=$$!; \
	echo "adk-supervisor: daemon and gateway starting; once the gateway says ready, open http://127.0.0.1:8000/dev-ui/ (ADK web UI) and http://127.0.0.1:8000/console (operator console); Ctrl-C stops both"; \
	while kill -0 $$daemon 2>/dev/null && kill -0 $$gateway 2>/dev/null; do sleep 0.5; done; \
	[ -n "$$stopping" ] || kill -TERM $$gateway $$daemon 2>/dev/null; \
	wait $$gateway; wait $$daemon

test: lint typecheck verify-unit pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy agent_runtime supervisor

pytest: $(STAMP) host-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/system boots Debian's systemd in a systemd-nspawn container built with
# debootstrap; the gateway's browser test drives headless chromium. As root with
# apt-get, they are installed when missing; otherwise the test fails saying what to
# install.
HOST_TOOLS_PKGS := debootstrap systemd-container
host-tools:
	@if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing $(HOST_TOOLS_PKGS) (for tests/system)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(HOST_TOOLS_PKGS) \
				|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
					apt-get install -y -q --no-install-recommends $(HOST_TOOLS_PKGS); }; \
		else \
			echo "tests/system needs $(HOST_TOOLS_PKGS): apt-get install -y --no-install-recommends $(HOST_TOOLS_PKGS) (as root)"; \
		fi; \
	fi
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing chromium (the gateway's browser test drives ADK's web UI with it)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
				|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
					apt-get install -y -q --no-install-recommends chromium; }; \
		else \
			echo "tests/integration/test_gateway_browser.py needs chromium: apt-get install -y chromium (as root)"; \
		fi; \
	fi

# systemd-analyze checks the unit file (with ExecStart pointed at this checkout's binary,
# since /opt/adk-supervisor does not exist here). Without systemd's tools it says so.
verify-unit: $(STAMP)
	@if command -v systemd-analyze >/dev/null; then \
		dir=$$(mktemp -d) && \
		sed 's|/opt/adk-supervisor/.venv/bin/adk-supervisor|$(CURDIR)/$(BIN)/adk-supervisor|g' \
			systemd/adk-supervisor.service > $$dir/adk-supervisor.service && \
		systemd-analyze verify $$dir/adk-supervisor.service && rm -r $$dir && \
		echo "systemd/adk-supervisor.service: systemd-analyze verify OK"; \
	else \
		echo "systemd-analyze not installed: unit file not verified (apt-get install -y systemd)"; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/session_bench.py
	$(BIN)/python bench/seal_bench.py
	$(BIN)/python bench/abort_latency.py
	$(BIN)/python bench/abort_latency.py --mechanism pgroup
	$(BIN)/python bench/abort_under_load.py --mechanism pgroup
	$(BIN)/python bench/spawn_latency.py
	$(BIN)/python bench/reconcile_bench.py
	$(BIN)/python bench/retention_bench.py
	$(BIN)/python bench/plugin_abort_latency.py
	$(BIN)/python bench/cli_latency.py
	$(BIN)/python bench/stream_latency.py
	$(BIN)/python bench/gateway_latency.py
	$(BIN)/python bench/resume_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
