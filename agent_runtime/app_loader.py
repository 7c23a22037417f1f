"""Resolving ``package.module:attribute`` references to an ADK ``App`` or root agent."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from google.adk.agents.base_agent import BaseAgent
from google.adk.apps import App

__all__ = ["AppRefError", "LoadedApp", "load_app"]


class AppRefError(ValueError):
    """The reference is malformed, cannot be imported, or names no App / agent."""


@dataclass(frozen=True, slots=True)
class LoadedApp:
    """What a reference resolved to: an ``App`` or a bare root agent, and the app name."""

    name: str
    app: App | None
    agent: BaseAgent | None


def load_app(ref: str, name: str | None = None) -> LoadedApp:
    """Imports ``package.module:attribute``; the attribute is an ``App`` or a ``BaseAgent``.

    ``name`` overrides the app name (by default the App's name, or the agent's).
    """
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise AppRefError(f"app reference {ref!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppRefError(f"cannot import module {module_name!r} of app {ref!r}: {exc}") from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise AppRefError(f"module {module_name!r} has no attribute {attribute!r}") from exc
    if isinstance(target, App):
        return LoadedApp(name or target.name, target, None)
    if isinstance(target, BaseAgent):
        return LoadedApp(name or target.name, None, target)
    raise AppRefError(f"{ref!r} is a {type(target).__name__}, not a google.adk App or BaseAgent")
