"""Plugin hooks. A plugin is a module (or object) with functions marked ``@tunebench.hookimpl``.

Third-party packages expose one through the ``tunebench`` entry-point group; built-ins load the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("tunebench")
hookimpl = pluggy.HookimplMarker("tunebench")


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register metric factories (functions decorated with ``@tunebench.metric``)."""


@hookspec
def register_runners(register: Callable[[Any], None]) -> None:
    """Register runner factories (functions decorated with ``@tunebench.runner``)."""
