"""The response cache: a SQLite file keyed by (runner identity, rendered messages, repeat).

Invariants:
- only successful responses are cached (errors never);
- a response handed to :meth:`ResponseCache.put` is durable when ``put`` returns: it is appended to this
  process's journal (one ``write`` call; the operating system keeps it even when the process is killed with
  ``kill -9``). So a killed run re-asks only the requests that were in flight, never one that had finished;
- the journal is folded into SQLite by the next :class:`ResponseCache` opened on the same file, which then
  deletes it; a journal whose process is alive is left alone (each process holds an exclusive ``flock`` on
  its own journal until it closes the cache or dies);
- :meth:`put_many` commits batches into SQLite, which is what other processes read; several processes may
  share the file (WAL, busy timeout), which lets parallel pytest workers and a resumed run reuse each other's
  answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import StoreError
from .runners import Response

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no journal, batches only
    fcntl = None  # type: ignore[assignment]

try:  # several times faster than json for the journal line written per response
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]

__all__ = ["ResponseCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    finish_reason TEXT,
    latency_ms REAL,
    created_at REAL NOT NULL
)
"""

Item = tuple[str, Response, "float | None"]


class ResponseCache:
    """Get and put model responses by job key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._journal: _Journal | None = None
        self._unsaved: set[str] = set()
        """Keys journaled by this process and not yet committed by put_many (folded in at close)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db.execute(_SCHEMA)
        self._recover()

    @property
    def db(self) -> sqlite3.Connection:
        """One connection per thread (the event loop reads, the writer thread writes)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: cannot open the response cache ({exc}); delete the file to "
                                 "reset it, or run with --no-cache") from None
            self._local.conn = conn
            self._all.append(conn)
        return conn

    def get(self, key: str) -> tuple[Response, float | None] | None:
        row = self.db.execute("SELECT text, prompt_tokens, completion_tokens, finish_reason, latency_ms "
                              "FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else (Response(row[0], row[1], row[2], row[3]), row[4])

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[Response, float | None]]:
        """Cached responses (with their original latency) for the keys that have one."""
        found: dict[str, tuple[Response, float | None]] = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self.db.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, finish_reason, latency_ms FROM responses "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, text, pt, ct, fr, lat in rows:
                found[key] = (Response(text, pt, ct, fr), lat)
        return found

    def put(self, key: str, response: Response, latency_ms: float | None) -> None:
        """Make one response durable now (a journal append of a few µs, not a SQLite commit of ~60 µs).

        Other processes see it once :meth:`put_many` commits it, or after this process closes or dies.
        """
        if fcntl is None:
            return
        if self._journal is None:
            self._journal = _Journal.create(self.path)
        self._journal.append(_encode(key, response, latency_ms))
        self._unsaved.add(key)

    def put_many(self, items: Sequence[Item]) -> None:
        """Commit responses in one transaction (the batched write other processes read)."""
        if not items:
            return
        self._insert([(k, r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason, lat)
                      for k, r, lat in items])
        unsaved = self._unsaved
        for key, _, _ in items:
            unsaved.discard(key)

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        now = time.time()
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(*row, now) for row in rows])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _recover(self) -> None:
        """Fold journals left by processes that died (their lock is free) into SQLite, then delete them."""
        if fcntl is None:
            return
        prefix = self.path.name + "."
        for leftover in sorted(self.path.parent.glob(prefix + "*")):
            if not leftover.name.endswith((".journal", ".tmp")):
                continue
            try:
                fd = os.open(leftover, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live process owns it
                    continue
                if not leftover.exists():  # recovered by another process between our open and our lock
                    continue
                rows = _decode(_read_all(fd))
                if rows:
                    self._insert(rows)
                leftover.unlink(missing_ok=True)  # still locked: nobody else folds it in twice
            finally:
                os.close(fd)

    def close(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            if self._unsaved:  # responses put() but never put_many()'d: keep them
                self._insert([row for row in _decode(journal.read()) if row[0] in self._unsaved])
                self._unsaved.clear()
            journal.delete()
        for conn in self._all:
            conn.close()
        self._all.clear()


class _Journal:
    """This process's append-only journal: JSON lines, created under a temporary name, locked, renamed."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def create(cls, cache: Path) -> _Journal:
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = cache.with_name(f"{cache.name}.{tag}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        # Locked before it gets a name that _recover looks for, so it is never mistaken for an orphan.
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = cache.with_name(f"{cache.name}.{tag}.journal")
        os.rename(tmp, path)
        return cls(path, fd)

    def append(self, line: bytes) -> None:
        view = memoryview(line)
        while view:
            view = view[os.write(self.fd, view):]

    def read(self) -> bytes:
        return _read_all(self.fd)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _encode(key: str, r: Response, latency_ms: float | None) -> bytes:
    row = [key, r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason, latency_ms]
    if _orjson is not None:
        try:
            return _orjson.dumps(row, option=_orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # text with lone surrogates: json escapes them
            pass
    return json.dumps(row, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _decode(data: bytes) -> list[tuple[Any, ...]]:
    rows = []
    for line in data.splitlines():
        try:  # the last line of a killed process may be cut short: skip what does not parse
            key, text, pt, ct, fr, lat = json.loads(line)
        except (ValueError, TypeError):
            continue
        if isinstance(key, str) and isinstance(text, str):
            rows.append((key, text, pt, ct, fr, lat))
    return rows
