"""What each entry point imports, read from a fresh interpreter's ``sys.modules``.

The CLI answers in well under a second and the idle daemon stays small only
while ADK (a second of imports, tens of MB) loads where a run needs it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .daemon_harness import ROOT


def _loaded(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _adk(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith("google.adk"))


@pytest.mark.parametrize("module", ["supervisor", "supervisor.client", "supervisor.cli"])
def test_client_and_cli_load_neither_adk_nor_the_daemon(module: str) -> None:
    loaded = _loaded(f"import {module}")
    assert _adk(loaded) == []
    assert not {"supervisor.daemon", "supervisor.process.spawners"} & loaded
    # The gateway's web stack loads for `adk-supervisor gateway` alone.
    assert not {"fastapi", "uvicorn", "starlette", "supervisor.gateway"} & loaded


def test_help_loads_neither_redis_nor_pydantic() -> None:
    loaded = _loaded(
        "import contextlib, io\nfrom supervisor.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    )
    assert not {m.split(".")[0] for m in loaded} & {"redis", "pydantic", "pydantic_settings"}


def test_the_daemon_loads_adk_only_to_seal_a_session() -> None:
    assert _adk(_loaded("import supervisor.daemon")) == []
    assert _adk(_loaded("import agent_runtime.task_store, agent_runtime.abort_feed")) == []
