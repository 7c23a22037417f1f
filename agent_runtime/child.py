"""Entry point of a supervised run's child process: ``python -m agent_runtime.child``.

The daemon passes the run as a JSON spec file named by ``$ADK_SUPERVISOR_RUN``
(the fork server hands it over directly). The child builds an ADK Runner on
:class:`RedisSessionService`, creates the session if it does not exist, runs one
invocation with the new message (text or a whole ``Content``, with its
``state_delta``, ``invocation_id`` and run options), appends every event ADK
yields to the run's events stream, and exits 0; if the agent raises,
it writes the error to the task record (``error``) and exits 1. The daemon owns
the record's state: the child never moves it. It records the ADK app name
(``adk_app``) and the invocation id (``invocation_id``), which the daemon needs
to seal the session after it killed the run. The invocation runs inside an
``adk-supervisor.run`` span whose parent is the submitter's ``traceparent``,
if any (see :mod:`agent_runtime.trace_context`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from .keys import KeySchema
from .run_spec import RUN_ENV, RunSpec
from .trace_context import configure_from_env, flush_spans, run_span

EXIT_AGENT_ERROR = 1
EXIT_BAD_SPEC = 2


def _run_config(options: dict[str, Any] | None) -> Any:
    from google.adk.agents._streaming_mode import StreamingMode
    from google.adk.agents.run_config import RunConfig

    options = options or {}
    config: dict[str, Any] = {
        "streaming_mode": StreamingMode.SSE
        if options.get("streaming") == "sse"
        else StreamingMode.NONE
    }
    if options.get("max_llm_calls") is not None:
        config["max_llm_calls"] = options["max_llm_calls"]
    if options.get("custom_metadata") is not None:
        config["custom_metadata"] = options["custom_metadata"]
    return RunConfig(**config)


def _new_message(spec: RunSpec) -> Any:
    from google.genai import types

    if spec.content is not None:
        return types.Content.model_validate(spec.content)
    if spec.invocation_id and not spec.message:
        return None  # resuming a paused invocation with no new input
    return types.Content(role="user", parts=[types.Part(text=spec.message)])


async def run(spec: RunSpec) -> None:
    """Runs one ADK invocation of ``spec`` to completion, each event to its stream."""
    from google.adk.errors.already_exists_error import AlreadyExistsError
    from google.adk.runners import Runner

    from ._event_writer import EventWriter
    from .app_loader import load_app
    from .sessions.service import RedisSessionService
    from .task_store import TaskStore

    loaded = load_app(spec.app_ref, spec.app_name)
    keys = KeySchema(spec.key_prefix)
    fence = (keys.task_epoch(spec.task_id), spec.epoch) if spec.durable else None
    async with RedisSessionService(
        spec.redis_url, spec.key_prefix, spec.session_ttl, fence=fence
    ) as sessions:
        store = TaskStore(sessions.redis, spec.key_prefix)
        if spec.app_name is None:
            # Before anything touches the session: a run killed later can be sealed. (An
            # [apps] name is already there: the daemon wrote it with `starting`.)
            await _set_fields(sessions.redis, spec, {"adk_app": loaded.name})
        app = loaded.app
        if spec.durable and app is not None:
            from .durable import JournalPlugin

            workspace = Path(spec.workspace) if spec.workspace else None
            if workspace is not None and spec.epoch > 0:
                # Before the agent runs again: its tools find the files of the last boundary.
                from .durable import restore_workspace

                restored = await restore_workspace(
                    sessions.redis, keys, spec.task_id, workspace, spec.snapshot_max_bytes
                )
                print(
                    f"workspace restored: {restored} entries"
                    if restored is not None
                    else "workspace: no snapshot to restore",
                    file=sys.stderr,
                    flush=True,
                )
            journal = JournalPlugin(
                sessions.redis,
                keys,
                spec.task_id,
                spec.epoch,
                workspace=workspace,
                snapshot_max_bytes=spec.snapshot_max_bytes,
            )
            app = app.model_copy(update={"plugins": [journal, *app.plugins]})
        if app is not None:
            runner = Runner(app=app, app_name=loaded.name, session_service=sessions)
        else:
            runner = Runner(agent=loaded.agent, app_name=loaded.name, session_service=sessions)
        # Created at once (one round trip), not looked up first: most runs start a session.
        with contextlib.suppress(AlreadyExistsError):
            await sessions.create_session(
                app_name=loaded.name, user_id=spec.user_id, session_id=spec.session_id
            )
        new_message, invocation_id, state_delta = _new_message(spec), None, spec.state_delta
        if spec.durable and spec.epoch > 0 and spec.invocation_id:
            if await _resume(spec, sessions, loaded.name, keys):
                new_message, state_delta = None, None  # both are in the session already
                invocation_id = spec.invocation_id
        elif spec.invocation_id:
            invocation_id = spec.invocation_id
        writer = EventWriter(
            sessions.redis,
            store.keys,
            spec.task_id,
            maxlen=spec.events_maxlen,
            epoch=spec.epoch if spec.durable else None,
        )
        seen_invocation = None
        try:
            # ADK opens its invocation span under whatever context is current here.
            with run_span(spec.task_id, spec.traceparent):
                async for event in runner.run_async(
                    user_id=spec.user_id,
                    session_id=spec.session_id,
                    new_message=new_message,
                    invocation_id=invocation_id,
                    state_delta=state_delta,
                    run_config=_run_config(spec.run_config),
                    yield_user_message=True,  # its invocation id is known before any agent runs
                ):
                    if seen_invocation is None and event.invocation_id:
                        seen_invocation = event.invocation_id
                        await _set_fields(sessions.redis, spec, {"invocation_id": seen_invocation})
                    await writer.add(event)
        finally:
            await writer.close()
        await runner.close()


async def _resume(spec: RunSpec, sessions: Any, app_name: str, keys: KeySchema) -> bool:
    """Readies the session to continue ``spec.invocation_id``; False if that invocation never
    reached the session (the run then starts afresh with its message).

    Raises :class:`SessionIntegrityError` (the run fails with it as its reason, and exits
    on its own, so it is not resumed again) if the session's integrity chain is broken:
    continuing an altered or truncated history would run the agent on a past that never
    happened, or run again calls whose answers were lost."""
    from .durable import prepare_resume
    from .redis_connection import as_text
    from .session_integrity import SessionIntegrityError

    report = await sessions.verify(app_name, spec.user_id, spec.session_id)
    if not report.ok and report.problem != "not_found":
        raise SessionIntegrityError(
            f"not resumed: session {spec.session_id!r} fails its integrity check: {report.detail}"
        )
    if report.problem == "unchained":
        print(f"resuming from an unchained session: {report.detail}", file=sys.stderr, flush=True)
    session = await sessions.get_session(
        app_name=app_name, user_id=spec.user_id, session_id=spec.session_id
    )
    if session is None:
        return False
    raw = await sessions.redis.hgetall(keys.tool_journal(spec.task_id))
    journal = {as_text(k): as_text(v) for k, v in raw.items()}
    assert spec.invocation_id is not None
    plan = await prepare_resume(
        sessions, session, spec.invocation_id, journal, spec.idempotent_tools or ()
    )
    print(
        f"resuming invocation {spec.invocation_id} (epoch {spec.epoch}): "
        f"events={plan.has_events} replayed={list(plan.replayed)} unknown={list(plan.unknown)}",
        file=sys.stderr,
        flush=True,
    )
    return plan.has_events


async def _set_fields(client: Any, spec: RunSpec, fields: dict[str, str]) -> None:
    """Sets informational fields of the run's record; a durable run's only while it is
    still at its epoch (a stale attempt must not write over the current one's)."""
    from .task_store import TaskStore

    if spec.durable:
        from .durable import FencedWrites

        keys = KeySchema(spec.key_prefix)
        await FencedWrites(client, keys, spec.task_id, spec.epoch).hset(
            keys.task(spec.task_id), fields
        )
    else:
        await TaskStore(client, spec.key_prefix).update(spec.task_id, fields)


async def _record_error(spec: RunSpec, error: str) -> None:
    from .redis_connection import connect

    client = connect(spec.redis_url)
    try:
        await _set_fields(client, spec, {"error": error[-4000:]})
    finally:
        await client.aclose()


def execute(spec: RunSpec) -> int:
    """Runs ``spec`` in this process; returns the exit code (errors go to the task record)."""
    try:
        configure_from_env()
        asyncio.run(run(spec))
    except Exception as exc:
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        try:
            asyncio.run(_record_error(spec, error))
        except Exception as record_exc:
            print(f"could not record the error in Redis: {record_exc}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    finally:
        flush_spans()
    return 0


def main() -> int:
    """Runs the spec whose file ``$ADK_SUPERVISOR_RUN`` names; returns the process exit code."""
    path = os.environ.get(RUN_ENV)
    if not path:
        print(
            f"{RUN_ENV} is not set: this entry point is started by adk-supervisor", file=sys.stderr
        )
        return EXIT_BAD_SPEC
    try:
        spec = RunSpec.take(path)
    except (OSError, ValueError, TypeError) as exc:
        print(f"cannot read the run spec {path}: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    return execute(spec)


if __name__ == "__main__":
    sys.exit(main())
