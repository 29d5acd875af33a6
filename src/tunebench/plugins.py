"""The plugin host (pluggy).

Built-in metrics and runners are plugins registered exactly like third-party ones: modules with ``hookimpl``
functions, loaded from the ``tunebench`` entry-point group of installed distributions. Nothing loads at import;
the first lookup loads everything once -- and cheaply: a built-in plugin module imports its heavy dependencies
(numpy, jinja2, model libraries) inside the functions that use them, and a kind's options model is built when
a suite first uses it. An unknown name is a :class:`PluginError` with "did you mean …".
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .factory import Factory, did_you_mean

__all__ = ["get_metric", "get_plugin_manager", "get_runner", "list_metrics", "list_runners", "register_plugin"]

ENTRY_POINT_GROUP = "tunebench"

# Built-in plugin modules, loaded through the same manager as third-party ones. Kept here (as well as in
# pyproject's entry points) so a source checkout that is not pip-installed still has its built-ins.
BUILTIN_PLUGINS = (
    "tunebench.metrics.exact",
    "tunebench.metrics.text",
    "tunebench.metrics.rouge",
    "tunebench.metrics.latency",
    "tunebench.metrics.terminology",
    "tunebench.metrics.classification",
    "tunebench.metrics.translation",
    "tunebench.metrics.structure",
    "tunebench.metrics.cost",
    "tunebench.metrics.embedding",
    "tunebench.metrics.judge",
    "tunebench.runners.openai",
    "tunebench.runners.recorded",
    "tunebench.runners.command",
    "tunebench.runners.python",
    "tunebench.runners.hf",
    "tunebench.runners.vllm",
)

_state: dict[str, Any] = {}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with built-ins and entry points loaded on first call."""
    pm = _state.get("pm")
    if pm is None:
        pm = pluggy.PluginManager("tunebench")
        pm.add_hookspecs(hookspecs)
        for name in BUILTIN_PLUGINS:
            pm.register(importlib.import_module(name), name=name)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.value in BUILTIN_PLUGINS or any(ep.value in (n or "") for n, _ in pm.list_name_plugin()):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must say which one
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            # the distribution a plugin came from is what `tunebench plugins` shows
            dist = getattr(getattr(ep, "dist", None), "name", None)
            pm.register(module, name=f"{dist} ({ep.value})" if dist else ep.value)
        _state["pm"] = pm
    return pm


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object at run time (tests, notebooks); clears the lookup tables."""
    get_plugin_manager().register(plugin, name=name)
    _state.pop("register_metrics", None)
    _state.pop("register_runners", None)


def _collect(hook: str, attribute: str) -> dict[str, Factory]:
    table = _state.get(hook)
    if table is not None:
        return table
    pm = get_plugin_manager()
    table = {}
    for impl in getattr(pm.hook, hook).get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(fn: Callable[..., Any], _plugin: str = plugin_name) -> None:
            factory: Factory | None = getattr(fn, attribute, None)
            if factory is None:
                raise PluginError(f"plugin {_plugin}: {fn!r} is not decorated as a tunebench factory")
            if factory.kind in table:
                raise PluginError(
                    f"{hook[9:-1]} {factory.kind!r} registered twice ({table[factory.kind].plugin}, {_plugin})"
                )
            table[factory.kind] = dataclasses.replace(factory, plugin=_plugin)

        impl.function(register=register)
    _state[hook] = table
    return table


def list_metrics() -> dict[str, Factory]:
    """Every registered metric kind, by name."""
    return dict(sorted(_collect("register_metrics", "__tunebench_metric__").items()))


def list_runners() -> dict[str, Factory]:
    """Every registered runner kind, by name."""
    return dict(sorted(_collect("register_runners", "__tunebench_runner__").items()))


def get_metric(kind: str) -> Factory:
    """The metric factory called ``kind``, or a PluginError with "did you mean …"."""
    table = list_metrics()
    if kind not in table:
        raise PluginError(f"unknown metric {kind!r}{did_you_mean(kind, table)}; known: {', '.join(table)}")
    return table[kind]


def get_runner(kind: str) -> Factory:
    """The runner factory called ``kind``, or a PluginError with "did you mean …"."""
    table = list_runners()
    if kind not in table:
        raise PluginError(f"unknown runner {kind!r}{did_you_mean(kind, table)}; known: {', '.join(table)}")
    return table[kind]
