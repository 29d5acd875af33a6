"""Golden cases: inline in the suite, or read from JSONL (plain or OpenAI chat format), CSV, Parquet, HF datasets.

Invariants: every case has a unique id (a duplicate is an error naming both places); a bad row is an error
naming the file and line, never skipped; selection (``--filter``, ``--limit``, ``--sample``) is deterministic
and independent of file order for ``--sample``. A :class:`CaseSet` reads and checks every row once when it is
opened; selected cases whose texts total more than ``hold_chars`` are then read again from their file each time
they are iterated instead of being held, so memory stays flat as golden sets grow -- and a file that changes
in between is an error, never a different set of cases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import Case
from .suite import CasesFile, FieldMap, LoadedSuite

__all__ = ["CaseSet", "Selection", "load_cases", "open_cases", "select_cases"]


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


HOLD_CHARS = 4_000_000
"""Selected cases with at most this many characters of text in all are held in memory; more are streamed."""


class CaseSet:
    """The selected golden cases of a suite, in file order: ``len()`` and any number of iterations.

    Made by :func:`open_cases`, which has read and checked every row. Held cases are a list; streamed cases are
    read again from their file on each iteration, which raises :class:`ConfigError` if the file changed since
    (its size or modification time, or the cases the selection yields).
    """

    def __init__(self, count: int, held: list[Case] | None, stream: Callable[[], Iterator[Case]] | None = None,
                 describe: str = "") -> None:
        self._count, self._held, self._stream, self._describe = count, held, stream, describe

    @property
    def streamed(self) -> bool:
        """True when the cases are read from their file on each iteration."""
        return self._held is None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Case]:
        if self._held is not None:
            yield from self._held
            return
        assert self._stream is not None
        n = 0
        for case in self._stream():
            if n == self._count:
                break
            n += 1
            yield case
        if n != self._count:
            raise ConfigError(f"{self._describe} changed during the run: {n} cases selected instead of "
                              f"{self._count}", hint="leave golden files unchanged while a run reads them")


def open_cases(loaded: LoadedSuite, selection: Selection | None = None, *,
               hold_chars: int = HOLD_CHARS) -> CaseSet:
    """Read and check every golden case of a suite once, and select them; see :class:`CaseSet`."""
    selection = selection or Selection()
    spec = loaded.suite.cases
    if isinstance(spec, list):
        return _held_set(select_cases(load_cases(loaded), selection))  # already in memory, in the suite
    read = _reader(loaded, spec)
    stamp = read.stamp()
    seen: dict[str, str | None] = {}
    held: list[Case] | None = []
    chars = matched = total = 0
    keys: list[tuple[str, str]] = []  # (sample key, id) of every case the filters keep, when sampling
    for case in read():
        total += 1
        _check_new(seen, case)
        if not _passes(case, selection.filters):
            continue
        matched += 1
        if selection.sample is not None:
            keys.append((_sample_key(selection.seed, case.id), case.id))
        # Without sampling, a limit says which cases are selected as they come: only they need holding.
        if held is not None and (selection.limit is None or selection.sample is not None
                                 or len(held) < selection.limit):
            chars += len(case.input) + len(case.expected) + len(case.id)
            if chars <= hold_chars:
                held.append(case)
            else:
                held = None
    del seen
    if not total:
        raise loaded.error(("cases",), "the suite has no golden cases", "add cases or fix the path")
    keep = None
    if selection.sample is not None and selection.sample < matched:
        keep = {case_id for _, case_id in sorted(keys)[: selection.sample]}
    del keys
    count = matched if keep is None else len(keep)
    if selection.limit is not None:
        count = min(count, selection.limit)
    if held is not None:
        return _held_set([c for c in held if keep is None or c.id in keep][:count])

    def stream() -> Iterator[Case]:
        if read.stamp() != stamp:
            raise ConfigError(f"{read.describe} changed during the run",
                              hint="leave golden files unchanged while a run reads them")
        for case in read():
            if _passes(case, selection.filters) and (keep is None or case.id in keep):
                yield case

    return CaseSet(count, None, stream, read.describe)


def _held_set(cases: list[Case]) -> CaseSet:
    return CaseSet(len(cases), cases)


def load_cases(loaded: LoadedSuite) -> list[Case]:
    """All golden cases of a suite, in file order (all held in memory: see :func:`open_cases`)."""
    spec = loaded.suite.cases
    if isinstance(spec, list):
        cases = [
            Case(id=c.id or f"case-{i + 1}", input=c.input, expected=c.expected, tags=tuple(c.tags),
                 vars=dict(c.vars), source=f"{loaded.path}:{loaded.located.position(('cases', i))[0]}")
            for i, c in enumerate(spec)
        ]
    else:
        cases = list(_reader(loaded, spec)())
    _check_unique(cases)
    if not cases:
        raise loaded.error(("cases",), "the suite has no golden cases", "add cases or fix the path")
    return cases


def select_cases(cases: Sequence[Case], selection: Selection) -> list[Case]:
    """Apply tag filters, then the seeded sample, then the limit."""
    chosen = [c for c in cases if _passes(c, selection.filters)]
    if selection.sample is not None and selection.sample < len(chosen):
        keep = {c.id for c in sorted(chosen, key=lambda c: _sample_key(selection.seed, c.id))[: selection.sample]}
        chosen = [c for c in chosen if c.id in keep]
    if selection.limit is not None:
        chosen = chosen[: selection.limit]
    return chosen


def _passes(case: Case, filters: Sequence[str]) -> bool:
    """Has every tag the filters ask for, and none that a ``!tag`` excludes."""
    return all((f[1:] not in case.tags) if f.startswith("!") else (f in case.tags) for f in filters)


def _sample_key(seed: int, case_id: str) -> str:
    return hashlib.sha256(f"{seed}\0{case_id}".encode()).hexdigest()


def _check_unique(cases: Iterable[Case]) -> None:
    seen: dict[str, str | None] = {}
    for c in cases:
        _check_new(seen, c)


def _check_new(seen: dict[str, str | None], case: Case) -> None:
    if case.id in seen:
        raise ConfigError(f"duplicate case id {case.id!r} at {case.source} (first at {seen[case.id]})",
                          hint="case ids must be unique within a suite")
    seen[case.id] = case.source


class _Reader:
    """Reads every case of a golden file, from the start, each time it is called."""

    def __init__(self, read: Callable[[], Iterator[Case]], path: Path | None, describe: str) -> None:
        self._read, self._path, self.describe = read, path, describe

    def __call__(self) -> Iterator[Case]:
        return self._read()

    def stamp(self) -> tuple[int, int] | None:
        """Size and modification time of the file (None for a dataset by name)."""
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns


def _reader(loaded: LoadedSuite, spec: CasesFile) -> _Reader:
    """Checks the file's path and format now; reading starts when the reader is called."""
    fmt = spec.format
    if fmt == "hf":
        local = loaded.dir / spec.path
        return _Reader(lambda: _read_hf(loaded, spec), local if local.exists() else None, f"dataset {spec.path}")
    path = loaded.dir / spec.path
    if not path.exists():
        raise loaded.error(("cases", "path"), f"golden file not found: {path}",
                           "paths are relative to the suite file")
    if fmt == "auto":
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
               ".gz": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(path.suffix.lower(), "")
        if not fmt:
            raise loaded.error(("cases", "path"), f"cannot tell the format of {path.name}",
                               "set cases.format to jsonl, chat, csv or parquet")
    return _Reader(lambda: _read_file(path, fmt, spec.fields), path, f"golden file {path}")


def _read_file(path: Path, fmt: str, fields: FieldMap) -> Iterator[Case]:
    if fmt in ("jsonl", "chat"):
        rows = _jsonl_rows(path)
    else:
        from .store import read_table_file

        rows = read_table_file(path)  # CSV rows are numbered by file line, Parquet rows from 1
    for line, row in rows:
        if fmt == "chat" or (fmt == "jsonl" and "messages" in row and fields.input not in row):
            yield _chat_case(row, path, line, fields)
        else:
            yield _mapped_case(row, path, line, fields, f"{path}:{line}")


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
