"""How values travel into and out of the store: JSON with secrets redacted, UTC timestamps, columnar batches.

Part of the store layer (with :mod:`tunebench.store`, :mod:`tunebench.migrations` and :mod:`tunebench.tablefile`,
the only modules that touch duckdb, and only lazily). Invariants: values under secret-looking keys never reach a
JSON column; a lone surrogate in text is escaped, never written as invalid UTF-8; a batch's numbers and booleans
travel as typed arrays with a NULL mask so DuckDB cannot mis-guess their type.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from .errors import StoreError
from .records import Case

_BATCH_VIEW = "_tunebench_batch"
_TEXT_TYPES = ("VARCHAR", "JSON", "VARCHAR[]")
_SECRET_KEY = re.compile(
    r"api[_-]?key|authorization|secret|password|passwd|access[_-]?token|auth[_-]?token|bearer|cookie", re.I
)
_SECRET_WORDS = ("key", "authorization", "secret", "passw", "token", "bearer", "cookie")
_REDACTED = "[redacted]"
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str these are always lone (so invalid UTF-8)


def _duckdb() -> Any:
    # Imported on first use so that `import tunebench.store` (and so `tunebench --help`) stays cheap.
    import duckdb

    return duckdb


# ---------------------------------------------------------------------------------------------- JSON and values


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, without importing numpy
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))  # cached: the same few keys (role, content, …) recur in every request


def _has_secret(obj: Any) -> bool:
    if isinstance(obj, Mapping):
        return any((isinstance(k, str) and _is_secret_key(k)) or _has_secret(v) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return any(_has_secret(v) for v in obj)
    return False


def _redact(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: (_REDACTED if isinstance(k, str) and _is_secret_key(k) else _redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_redact(v) for v in obj]
    return obj


class _NotJSON(Exception):
    """A value for a JSON column cannot be serialised; the caller re-raises it as StoreError naming the row."""


def _dumps(obj: Any, *, empty_is_null: bool = False) -> str | None:
    """JSON text for a JSON column; ``None`` (and with ``empty_is_null`` an empty dict) stays NULL."""
    if obj is None or (empty_is_null and not obj):
        return None
    try:
        text = json.dumps(obj, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise _NotJSON(str(exc)) from None
    # Substring tests first (every secret-key pattern contains one of them): walking every request is slow.
    lowered = text.lower()
    if any(word in lowered for word in _SECRET_WORDS) and _has_secret(obj):
        text = json.dumps(_redact(obj), ensure_ascii=False, default=_json_default)
    return text


def _dumps_named(obj: Any, what: str) -> str | None:
    try:
        return _dumps(obj, empty_is_null=True)
    except _NotJSON as exc:
        raise StoreError(f"cannot store {what}: {exc}") from None


def _loads(text: str | None, default: Any = None) -> Any:
    return default if text is None else json.loads(text)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _clean_text(value: Any) -> Any:
    # Model output may hold lone surrogates (from a "\ud800" escape in an API's JSON); DuckDB accepts only
    # valid UTF-8, so they become U+FFFD instead of failing the whole batch.
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def _columnar(columns: Sequence[tuple[str, str]], data: Sequence[list[Any]]) -> tuple[dict[str, Any], list[str]]:
    """numpy arrays for a batch, and per column the SQL expression that reads it back typed and NULL-aware.

    DuckDB infers the type of an object array from a sample (ints and floats mixed become INTEGER), so only
    text travels as objects; numbers and booleans travel as typed arrays with a NULL mask.
    """
    import numpy as np

    arrays: dict[str, Any] = {}
    exprs: list[str] = []
    for i, ((name, sqltype), values) in enumerate(zip(columns, data, strict=True)):
        col, n = f"c{i}", len(values)
        try:
            if sqltype in _TEXT_TYPES:
                arrays[col] = np.fromiter(values, dtype=object, count=n)
                expr = f"CAST({col} AS VARCHAR)"
                if sqltype == "JSON":
                    expr = f"CAST({expr} AS JSON)"
                elif sqltype == "VARCHAR[]":  # sent as JSON text: object arrays of lists do not scan
                    expr = f"CAST(CAST({expr} AS JSON) AS VARCHAR[])"
            elif sqltype == "BOOLEAN":
                arrays[col] = np.fromiter((-1 if v is None else bool(v) for v in values), dtype=np.int8, count=n)
                expr = f"CASE {col} WHEN -1 THEN NULL ELSE {col} = 1 END"
            else:
                dtype = np.int64 if sqltype == "INTEGER" else np.float64
                arrays[col] = np.fromiter((0 if v is None else v for v in values), dtype=dtype, count=n)
                expr = f"CAST({col} AS {sqltype})"
                if None in values:
                    arrays[col + "_null"] = np.fromiter((v is None for v in values), dtype=bool, count=n)
                    expr = f"CASE WHEN {col}_null THEN NULL ELSE {expr} END"
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"cannot store column {name}: {exc}") from None
        exprs.append(expr)
    return arrays, exprs


# What str.split() splits on (str.isspace(); a test checks the list against Python's Unicode tables).
_WHITESPACE = (9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 133, 160, 5760, *range(8192, 8203), 8232, 8233, 8239, 8287,
               12288)
_WHITESPACE_CLASS = "[" + "".join(f"\\x{{{c:x}}}" for c in _WHITESPACE) + "]+"


def normalised_text(column: str) -> str:
    """SQL for ``" ".join(text.split())``: runs of whitespace become one space, none at either end."""
    return f"trim(regexp_replace({column}, '{_WHITESPACE_CLASS}', ' ', 'g'), ' ')"


def new_run_id() -> str:
    """A new run id: UTC start time (sorts by time, readable) plus 6 random hex digits (unique)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + secrets.token_hex(3)


def case_content_hash(case: Case) -> str:
    """SHA-256 of the canonical JSON of a case's content (input, expected, tags, vars, messages), not its id."""
    content = [case.input, case.expected, list(case.tags), case.vars,
               None if case.messages is None else list(case.messages)]
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _pick(row: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str], what: str) -> dict[str, Any]:
    unknown = sorted(set(row) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    missing = [k for k in required if row.get(k) is None]
    if missing:
        raise ValueError(f"{what}: missing {missing}")
    return {k: row.get(k) for k in allowed}


def _first_line(detail: Any) -> str:
    text = str(detail).strip()
    return text.splitlines()[0] if text else type(detail).__name__


_SLICE_CHARS = 4_000_000
"""Characters of text in one write (one transaction): DuckDB holds a transaction's rows in memory."""


def _with_columns(sql: str, columns: Sequence[tuple[str, str]], exprs: Sequence[str]) -> str:
    """``sql`` with each ``{column}`` of the batch replaced by the expression that reads it."""
    for (name, _), expr in zip(columns, exprs, strict=True):
        sql = sql.replace("{" + name + "}", expr)
    return sql


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def _slices(columns: Sequence[tuple[str, str]], data: Sequence[list[Any]]) -> Iterator[tuple[int, int, int]]:
    """(start, stop, characters) of row ranges of about ``_SLICE_CHARS`` characters of text (at least one row)."""
    texts = [values for (_, t), values in zip(columns, data, strict=True) if t in _TEXT_TYPES]
    n, start, size = len(data[0]), 0, 0
    for i in range(n):
        size += sum(len(v) for values in texts if isinstance(v := values[i], str))
        if size >= _SLICE_CHARS:
            yield start, i + 1, size
            start, size = i + 1, 0
    if start < n:
        yield start, n, size


# ------------------------------------------------------------------------------------ opening errors


def _lock_message(path: Path, detail: str, wait_s: float) -> str:
    pid = re.search(r"PID (\d+)", detail)
    who = f"another process (PID {pid.group(1)})" if pid else "another process"
    return (f"the store {path} is in use by {who}, most likely another tunebench command or a DuckDB shell; "
            f"waited {wait_s:g} s. DuckDB lets one process use a file while it writes: wait for that process to "
            "finish, or pass --db with another file.")


def _open_error_message(path: Path, detail: str) -> str:
    if "not a valid DuckDB database file" in detail:
        return (f"{path} is not a DuckDB database file, so it cannot be a tunebench store; "
                "pass --db with another path, or move this file away")
    if "orrupt" in detail or "checksum" in detail:
        return (f"the store {path} is corrupt ({_first_line(detail)}); restore it from a backup, "
                "or move it away and pass --db with a new file")
    if "different configuration" in detail:
        return (f"the store {path} is already open in this process in another mode (read-only vs read-write); "
                "close that Store first")
    return f"cannot open the store {path}: {_first_line(detail)}"
