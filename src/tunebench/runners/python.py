"""The ``python`` runner: a Python callable answers each case (an in-process model, an SDK wrapper, a test
double written by the user).

The callable is named ``"package.module:function"`` (``"module:Class.method"`` works too). It is called as
``fn(messages, **kwargs)`` with a fresh list of ``{"role", "content"}`` dicts and returns the text, or a dict
with ``text`` and optional ``prompt_tokens``, ``completion_tokens``, ``finish_reason``.

Invariants:
- The callable is imported when the runner is built, so a typo is a ``ConfigError`` before any case runs. A
  module that is not importable but sits next to the suite file is found by appending the suite's directory
  to ``sys.path``.
- Coroutine functions are awaited on the engine's loop; plain functions run in a thread pool sized by
  ``context.concurrency`` so they never block the loop.
- An exception from the callable becomes a ``RunnerError`` (type and message), unless it already is one -- a
  callable may raise ``RetryableError`` itself to ask for a retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunnerError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner

__all__ = ["PythonRunner", "python"]

_FORMAT_HINT = "write it as 'package.module:function'"


class PythonRunner(Runner):
    """The runner behind ``kind: python``."""

    kind = "python"

    def __init__(self, spec: str, fn: Callable[..., Any], *, kwargs: dict[str, Any], concurrency: int) -> None:
        self.spec = spec
        self.kwargs = kwargs
        self._fn = fn
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self._concurrency = max(1, concurrency)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "callable": self.spec, "kwargs": self.kwargs}

    async def generate(self, request: Request) -> Response:
        messages = [dict(m) for m in request.messages]  # a copy: the callable may mutate what it gets
        try:
            if self._is_async:
                result = await self._fn(messages, **self.kwargs)
            else:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self._concurrency, thread_name_prefix="tunebench-python"
                    )
                call = functools.partial(self._fn, messages, **self.kwargs)
                result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
                if inspect.isawaitable(result):  # e.g. a partial() wrapping a coroutine function
                    result = await result
        except RunnerError:
            raise
        except Exception as exc:
            raise RunnerError(f"{self.spec} raised {type(exc).__name__}: {exc}") from None
        return self._response(result)

    def _response(self, result: Any) -> Response:
        if isinstance(result, str):
            return Response(text=result)
        if isinstance(result, dict) and isinstance(result.get("text"), str):
            return Response(
                text=result["text"],
                prompt_tokens=_int_or_none(result.get("prompt_tokens")),
                completion_tokens=_int_or_none(result.get("completion_tokens")),
                finish_reason=None if result.get("finish_reason") is None else str(result["finish_reason"]),
            )
        raise RunnerError(
            f"{self.spec} returned {type(result).__name__}; expected a str or a dict with a 'text' string"
        )

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve(spec: str, suite_dir: Path) -> Callable[..., Any]:
    """Import ``"package.module:attr.path"``; every failure is a ConfigError naming ``spec`` and the fix."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name.strip() or not attr_path.strip():
        raise ConfigError(f"python runner: callable {spec!r} is not 'module:function'", hint=_FORMAT_HINT)
    try:
        module = _import(module_name, suite_dir)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"python runner: cannot import {spec!r}: no module named {exc.name or module_name!r}",
            hint="install the package, add its directory to PYTHONPATH, or put the module next to the suite file",
        ) from None
    except Exception as exc:  # the user's module itself failed while importing
        raise ConfigError(f"python runner: importing {spec!r} failed: {type(exc).__name__}: {exc}",
                          hint=f"fix the error in module {module_name!r}") from None
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                f"python runner: cannot import {spec!r}: {getattr(obj, '__name__', obj)!r} has no attribute "
                f"{part!r}{did_you_mean(part, names)}",
                hint=_FORMAT_HINT,
            ) from None
    if not callable(obj):
        raise ConfigError(f"python runner: {spec!r} is a {type(obj).__name__}, not a callable", hint=_FORMAT_HINT)
    return obj


def _import(module_name: str, suite_dir: Path) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        local = (suite_dir / f"{top}.py").is_file() or (suite_dir / top).is_dir()
        if exc.name != top or not local or str(suite_dir) in sys.path:
            raise
    # Appended, not prepended: a module next to the suite must not shadow an installed one of the same name.
    sys.path.append(str(suite_dir))
    return importlib.import_module(module_name)


@runner("python", description="A Python callable 'package.module:function' (sync or async)")
def python(
    *,
    callable: str,
    kwargs: dict[str, Any] | None = None,
    context: RunnerContext,
) -> PythonRunner:
    """Call ``callable(messages, **kwargs)`` for each case."""
    fn = resolve(callable, Path(context.suite_dir).resolve())
    return PythonRunner(callable, fn, kwargs=dict(kwargs or {}), concurrency=context.concurrency)


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(python)
