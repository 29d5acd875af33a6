"""Golden cases: inline in the suite, or read from JSONL (plain or OpenAI chat format), CSV, Parquet, HF datasets.

Invariants: every case has a unique id (a duplicate is an error naming both places); a bad row is an error
naming the file and line, never skipped; selection (``--filter``, ``--limit``, ``--sample``) is deterministic
and independent of file order for ``--sample``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import Case
from .suite import CasesFile, FieldMap, LoadedSuite

__all__ = ["Selection", "load_cases", "select_cases"]


@dataclass(frozen=True)
class Selection:
    """Which cases of a suite to run."""

    filters: tuple[str, ...] = ()
    """Tags a case must have (all of them); ``!tag`` excludes."""
    limit: int | None = None
    """At most this many cases (after filtering and sampling), in suite order."""
    sample: int | None = None
    """A deterministic random sample of this size."""
    seed: int = 0
    """Seed of the sample."""


def load_cases(loaded: LoadedSuite) -> list[Case]:
    """All golden cases of a suite, in file order."""
    spec = loaded.suite.cases
    if isinstance(spec, list):
        cases = [
            Case(id=c.id or f"case-{i + 1}", input=c.input, expected=c.expected, tags=tuple(c.tags),
                 vars=dict(c.vars), source=f"{loaded.path}:{loaded.located.position(('cases', i))[0]}")
            for i, c in enumerate(spec)
        ]
    else:
        cases = list(_read_file(loaded, spec))
    _check_unique(cases)
    if not cases:
        raise loaded.error(("cases",), "the suite has no golden cases", "add cases or fix the path")
    return cases


def select_cases(cases: Sequence[Case], selection: Selection) -> list[Case]:
    """Apply tag filters, then the seeded sample, then the limit."""
    chosen = list(cases)
    for f in selection.filters:
        if f.startswith("!"):
            chosen = [c for c in chosen if f[1:] not in c.tags]
        else:
            chosen = [c for c in chosen if f in c.tags]
    if selection.sample is not None and selection.sample < len(chosen):
        def key(c: Case) -> str:
            return hashlib.sha256(f"{selection.seed}\0{c.id}".encode()).hexdigest()

        keep = {c.id for c in sorted(chosen, key=key)[: selection.sample]}
        chosen = [c for c in chosen if c.id in keep]
    if selection.limit is not None:
        chosen = chosen[: selection.limit]
    return chosen


def _check_unique(cases: Iterable[Case]) -> None:
    seen: dict[str, str | None] = {}
    for c in cases:
        if c.id in seen:
            raise ConfigError(f"duplicate case id {c.id!r} at {c.source} (first at {seen[c.id]})",
                              hint="case ids must be unique within a suite")
        seen[c.id] = c.source


def _read_file(loaded: LoadedSuite, spec: CasesFile) -> Iterator[Case]:
    fmt = spec.format
    path = (loaded.dir / spec.path) if fmt != "hf" else Path(spec.path)
    if fmt == "hf":
        yield from _read_hf(loaded, spec)
        return
    if not path.exists():
        raise loaded.error(("cases", "path"), f"golden file not found: {path}",
                           "paths are relative to the suite file")
    suffix = path.suffix.lower()
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
               ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(suffix, "")
        if not fmt:
            raise loaded.error(("cases", "path"), f"cannot tell the format of {path.name}",
                               "set cases.format to jsonl, chat, csv or parquet")
    if fmt in ("jsonl", "chat"):
        rows = _jsonl_rows(path)
    else:
        from .store import read_table_file

        rows = read_table_file(path)  # CSV rows are numbered by file line, Parquet rows from 1
    for line, row in rows:
        where = f"{path}:{line}"
        if fmt == "chat" or (fmt == "jsonl" and "messages" in row and spec.fields.input not in row):
            yield _chat_case(row, path, line, spec.fields)
        else:
            yield _mapped_case(row, path, line, spec.fields, where)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"bad JSON: {exc.msg}", path=str(path), line=n, column=exc.colno,
                                  hint="each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ConfigError(f"expected a JSON object, got {type(row).__name__}", path=str(path), line=n)
            yield n, row


def _dotted(row: dict[str, Any], name: str) -> Any:
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(name)
        value = value[part]
    return value


def _text(value: Any, field: str, path: Path, line: int) -> str:
    if value is None:
        raise ConfigError(f"field {field!r} is empty", path=str(path), line=line)
    if isinstance(value, (dict, list)):
        raise ConfigError(f"field {field!r} must be text, got {type(value).__name__}", path=str(path), line=line)
    return str(value)


def _mapped_case(row: dict[str, Any], path: Path, line: int, fields: FieldMap, where: str) -> Case:
    values: dict[str, str] = {}
    for role in ("input", "expected"):
        name = getattr(fields, role)
        try:
            values[role] = _text(_dotted(row, name), name, path, line)
        except KeyError:
            raise ConfigError(f"missing field {name!r}", path=str(path), line=line,
                              hint=f"map it with cases.fields.{role}; the row has: {', '.join(row)}") from None
    case_id = f"{path.stem}:{line}"
    if fields.id and fields.id in row and row[fields.id] not in (None, ""):
        case_id = str(row[fields.id])
    tags: list[str] = []
    if fields.tags and row.get(fields.tags) is not None:
        raw = row[fields.tags]
        tags = [str(t) for t in raw] if isinstance(raw, list) else [t.strip() for t in str(raw).split(",")]
    for name in fields.tag_fields:
        with contextlib.suppress(KeyError):  # a tag field absent from this row simply gives no tag
            tags.append(f"{name.rsplit('.', 1)[-1]}:{_dotted(row, name)}")
    used = {fields.id, fields.input, fields.expected, fields.tags}
    if fields.vars == "all":
        extra = {k: v for k, v in row.items() if k not in used}
    else:
        extra = {}
        for name in fields.vars:
            try:
                extra[name.rsplit(".", 1)[-1]] = _dotted(row, name)
            except KeyError:
                raise ConfigError(f"missing field {name!r} (listed in cases.fields.vars)", path=str(path),
                                  line=line) from None
    return Case(id=case_id, input=values["input"], expected=values["expected"], tags=tuple(tags),
                vars=extra, source=where)


def _chat_case(row: dict[str, Any], path: Path, line: int, fields: FieldMap) -> Case:
    messages = row.get("messages")
    hint = 'OpenAI chat format: {"messages": [{"role": "user", "content": …}, {"role": "assistant", …}]}'
    if not isinstance(messages, list) or not messages:
        raise ConfigError("missing 'messages' list", path=str(path), line=line, hint=hint)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") or not \
                isinstance(m.get("content"), str):
            raise ConfigError(f"messages[{i}] needs a role (system/user/assistant) and text content",
                              path=str(path), line=line, hint=hint)
    if messages[-1]["role"] != "assistant":
        raise ConfigError("the last message must be the golden assistant reply", path=str(path), line=line,
                          hint=hint)
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if not users:
        raise ConfigError("no user message before the golden reply", path=str(path), line=line, hint=hint)
    case_id = str(row[fields.id]) if fields.id and row.get(fields.id) else f"{path.stem}:{line}"
    tags = row.get(fields.tags) if fields.tags else None
    extra = {k: v for k, v in row.items() if k not in ("messages", fields.id, fields.tags)}
    return Case(id=case_id, input=users[-1], expected=messages[-1]["content"],
                tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
                vars=extra, messages=prompt, source=f"{path}:{line}")


def _read_hf(loaded: LoadedSuite, spec: CasesFile) -> Iterator[Case]:
    try:
        import datasets  # optional extra
    except ImportError:
        raise loaded.error(("cases", "format"), "format 'hf' needs the datasets extra",
                           "pip install 'tunebench[datasets]'") from None
    local = loaded.dir / spec.path
    try:
        if local.exists():
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(spec.path, split=spec.split or "test")
    except Exception as exc:  # datasets raises many types; all mean "cannot load"
        raise loaded.error(("cases", "path"), f"cannot load dataset {spec.path!r}: {exc}",
                           "offline, only datasets saved with save_to_disk load") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[spec.split or next(iter(ds))]
    for n, row in enumerate(ds, start=1):
        yield _mapped_case(dict(row), Path(spec.path), n, spec.fields, f"{spec.path}[{n}]")
