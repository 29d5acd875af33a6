"""The ``recorded`` runner: outputs read from a JSONL file keyed by case id, so a suite can score outputs that
were produced elsewhere (a batch job, a vendor, last week's run) without querying any model.

Each line is an object ``{"id": …, "output": …}`` with optional ``latency_ms``, ``prompt_tokens``,
``completion_tokens``, ``finish_reason`` and ``repeat``. A line without ``repeat`` answers every repeat of its
case; a line with ``repeat: n`` answers only repeat ``n`` (0-based, as ``Request.repeat``) and wins over a line
without one.

Invariants:
- The file is read once, lazily (at most once per runner, even with many concurrent requests) and only
  ``(id, repeat) → Response`` is kept. ``identity()`` carries the sha256 of the exact bytes that were parsed, so
  a changed recording changes the cache key.
- Bad input is a ``ConfigError`` naming the file and line: bad JSON, a missing id/output, a duplicate id (both
  lines named), a missing file. A case absent from the file is a ``RunnerError`` (an error row, not a crash).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunnerError
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner

__all__ = ["RecordedRunner", "recorded"]

_Key = tuple[str, "int | None"]


class RecordedRunner(Runner):
    """The runner behind ``kind: recorded``."""

    kind = "recorded"

    def __init__(self, path: Path, *, written_path: str, id_field: str, output_field: str) -> None:
        self.path = path
        self.written_path = written_path
        """The path as the suite wrote it: the identity must not change when the checkout moves."""
        self.id_field = id_field
        self.output_field = output_field
        self._table: dict[_Key, Response] | None = None
        self._sha256: str | None = None
        self._thread_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None

    def identity(self) -> dict[str, Any]:
        self._ensure_loaded()
        return {"kind": self.kind, "path": self.written_path, "sha256": self._sha256,
                "id_field": self.id_field, "output_field": self.output_field}

    async def generate(self, request: Request) -> Response:
        table = self._table
        if table is None:
            # One loader per runner: the asyncio lock keeps concurrent requests from each starting a thread,
            # the thread lock covers identity() being called from another thread.
            if self._async_lock is None:
                self._async_lock = asyncio.Lock()
            async with self._async_lock:
                if self._table is None:
                    await asyncio.to_thread(self._ensure_loaded)
            table = self._table
            assert table is not None
        response = table.get((request.case_id, request.repeat)) or table.get((request.case_id, None))
        if response is None:
            raise RunnerError(f"no recorded output for case '{request.case_id}' in {self.path}")
        return response

    def _ensure_loaded(self) -> None:
        with self._thread_lock:
            if self._table is not None:
                return
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                raise ConfigError("recorded outputs file not found", path=str(self.path),
                                  hint="check 'path' (relative to the suite file)") from None
            except OSError as exc:
                raise ConfigError(f"cannot read recorded outputs: {exc.strerror}", path=str(self.path)) from None
            table = self._parse(data)
            self._sha256 = hashlib.sha256(data).hexdigest()
            self._table = table

    def _parse(self, data: bytes) -> dict[_Key, Response]:
        path = str(self.path)
        table: dict[_Key, Response] = {}
        first_line: dict[_Key, int] = {}
        for number, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"not valid JSON: {exc}", path=path, line=number,
                                  hint="each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise ConfigError(f"expected a JSON object, got {type(record).__name__}", path=path, line=number)
            key = (self._case_id(record, path, number), _optional(record, "repeat", int, path, number))
            if key in first_line:
                which = f"case '{key[0]}'" + ("" if key[1] is None else f" repeat {key[1]}")
                raise ConfigError(f"duplicate {which}: also on line {first_line[key]}", path=path, line=number,
                                  hint="keep one line per case (and repeat)")
            first_line[key] = number
            output = record.get(self.output_field)
            if not isinstance(output, str):
                got = "missing" if output is None else f"a {type(output).__name__}"
                raise ConfigError(f"'{self.output_field}' must be a string, got {got}", path=path, line=number,
                                  hint="set output_field if the text is under another key")
            latency = _optional(record, "latency_ms", float, path, number)
            table[key] = Response(
                text=output,
                prompt_tokens=_optional(record, "prompt_tokens", int, path, number),
                completion_tokens=_optional(record, "completion_tokens", int, path, number),
                finish_reason=_optional(record, "finish_reason", str, path, number),
                latency_ms=None if latency is None else float(latency),
            )
        return table

    def _case_id(self, record: dict[str, Any], path: str, number: int) -> str:
        value = record.get(self.id_field)
        # Integer ids are accepted because golden files often number their cases; case ids are strings.
        if isinstance(value, bool) or not isinstance(value, str | int):
            got = "missing" if value is None else f"a {type(value).__name__}"
            raise ConfigError(f"'{self.id_field}' must be a string, got {got}", path=path, line=number,
                              hint="set id_field if the case id is under another key")
        return str(value)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _optional(record: dict[str, Any], name: str, kind: type, path: str, number: int) -> Any:
    value = record.get(name)
    if value is None:
        return None
    accepted = (int, float) if kind is float else kind
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise ConfigError(f"'{name}' must be {_TYPE_NAMES[kind]}, got {value!r}", path=path, line=number)
    return value


@runner("recorded", description="Outputs read from a JSONL file keyed by case id (no model is queried)")
def recorded(
    *,
    path: str,
    id_field: str = "id",
    output_field: str = "output",
    context: RunnerContext,
) -> RecordedRunner:
    """Serve the outputs recorded in ``path`` (JSONL, relative to the suite file)."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = Path(context.suite_dir) / resolved
    if not resolved.is_file():  # fail at load time, not on the first case
        raise ConfigError("recorded outputs file not found", path=str(resolved),
                          hint="check 'path' (relative to the suite file)")
    return RecordedRunner(resolved, written_path=path, id_field=id_field, output_field=output_field)


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(recorded)
