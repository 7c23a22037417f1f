"""The supervisor daemon, one component a module; :class:`Supervisor` composes them.

Importing it loads the spawners and containment but not ADK (sealing loads it
on first use); the CLI imports it only for ``run``.
"""

from .node import Supervisor

__all__ = ["Supervisor"]
