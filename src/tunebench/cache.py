"""The response cache: a SQLite file keyed by (runner identity, rendered messages, repeat).

Invariants: only successful responses are cached (errors never); writes are committed in batches so a killed
process loses at most the last uncommitted batch; several processes may share the file (WAL, busy timeout),
which is what lets parallel pytest workers and a resumed run reuse each other's answers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import StoreError
from .runners import Response

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


class ResponseCache:
    """Get and put model responses by job key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db.execute(_SCHEMA)

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

    def put_many(self, items: Sequence[tuple[str, Response, float | None]]) -> None:
        if not items:
            return
        now = time.time()
        self.db.execute("BEGIN")
        self.db.executemany(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(k, r.text, r.prompt_tokens, r.completion_tokens, r.finish_reason, lat, now) for k, r, lat in items])
        self.db.execute("COMMIT")

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
