"""A store's DuckDB connection: opening it, and bounded-memory writes and reads (the base of
:class:`tunebench.store.Store`, which adds the tables).

Invariants:

- :meth:`Connection.open` waits up to ``wait_s`` for another process holding the file, then raises
  :class:`StoreLockedError` naming the file, the other PID and the fix; any other DuckDB failure to open is a
  :class:`StoreError` naming the file.
- Bulk writes (:meth:`Connection._upsert`) hand DuckDB a dict of numpy arrays (``executemany`` runs ~1k rows/s,
  list parameters ~20x slower than arrays for text), in transactions of at most ~4M characters (DuckDB holds a
  transaction's rows in memory), with a checkpoint every ~4M characters written (further apart for long
  documents) so DuckDB does not keep a run's rows in memory. The file is attached with row groups of 2,048 rows
  (DuckDB's default is 122,880), so a checkpoint rewrites little; after each checkpoint and each read of a whole
  run, DuckDB drops the blocks it caches (:meth:`Connection._flush`), and such reads of a store larger than
  the first of their small buffer budgets run under it, or under larger ones, then none, if they need more
  (:meth:`Connection._read`).
- A write of a row whose key is stored replaces it (delete-then-insert in one transaction per slice), unless the
  caller appends rows it knows are new (``replace=False``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from .errors import StoreError, StoreLockedError
from .storeformat import (
    _BATCH_VIEW,
    _TEXT_TYPES,
    _clean_text,
    _columnar,
    _duckdb,
    _first_line,
    _lock_message,
    _open_error_message,
    _slices,
    _sql_text,
    _with_columns,
)

if TYPE_CHECKING:
    import duckdb

_T = TypeVar("_T")

__all__ = ["Connection"]


class Connection:
    """One DuckDB connection to a store file. Open with :meth:`open`; use as a context manager.

    Methods are safe to call from several threads of the one writing process (a lock serialises them).
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool) -> None:
        self._conn = conn
        self.path = path
        """The database file."""
        self.read_only = read_only
        """Opened read-only: writes raise :class:`StoreError`; several read-only processes may share a file."""
        self._lock = threading.RLock()
        self._unreleased = 0
        """Characters written since the last :meth:`_release`."""
        self._written = 0
        self._rows = 0
        """Characters and rows written through this connection."""

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False, wait_s: float = 5.0,
             threads: int | None = None) -> Self:
        """Open (creating it and its parent folders unless ``read_only``) and migrate the store at ``path``.

        ``threads`` caps DuckDB's worker threads (default: one per core); each keeps its own buffers.
        """
        duckdb = _duckdb()
        path = Path(path).expanduser()
        if path.is_dir():
            raise StoreError(f"{path} is a folder; the store is a file: pass --db with a file path")
        if read_only and not path.exists():
            raise StoreError(f"there is no store at {path} yet: run an evaluation first, or pass --db")
        if not read_only:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder of the store {path}: {exc}") from None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                # ATTACH, not connect(path): only ATTACH takes ROW_GROUP_SIZE (DuckDB does not keep it in the file).
                # Spill files go where connect(path) would put them, beside the store (not in the working folder).
                config = {"temp_directory": f"{path}.tmp", **({"threads": threads} if threads else {})}
                conn = duckdb.connect(":memory:", config=config)
                try:
                    conn.execute(f"ATTACH '{_sql_text(str(path))}' AS store "
                                 f"({'READ_ONLY, ' if read_only else ''}ROW_GROUP_SIZE {_ROW_GROUP_ROWS})")
                    conn.execute("USE store")
                except BaseException:
                    conn.close()
                    raise
                break
            except duckdb.Error as exc:
                detail = str(exc)
                if "Could not set lock" not in detail and "Conflicting lock" not in detail:
                    raise StoreError(_open_error_message(path, detail)) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreLockedError(_lock_message(path, detail, wait_s)) from None
                time.sleep(min(0.1, left))
        store = cls(conn, path, read_only=read_only)
        try:
            store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self) -> None:
        """Called once the file is open (:class:`~tunebench.store.Store`: its schema and migrations)."""

    def close(self) -> None:
        """Close the connection (DuckDB checkpoints the file); the store is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        duckdb = _duckdb()
        with self._lock:
            try:
                yield
            except duckdb.Error as exc:
                raise StoreError(f"{self.path}: {action} failed: {_first_line(exc)}") from exc

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: cannot {action}: the store was opened read-only")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _first(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        # fetchall, never fetchone: DuckDB 2 refuses new work on a connection whose result is not exhausted.
        rows = self._conn.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def _upsert(self, table: str, keys: Sequence[str], run_id: str, columns: Sequence[tuple[str, str]],
                data: Sequence[list[Any]], extra: Sequence[tuple[str, str]] = (), *, replace: bool = True) -> None:
        """Replace the rows of ``run_id`` whose ``keys`` are in the batch by the batch.

        ``columns`` are (name, SQL type) of ``data``'s lists; ``extra`` are more (column, SQL expression).
        ``replace=False`` appends, for a caller that knows no key of the batch is stored: finding the stored rows
        to replace is a join with every row of the run, which DuckDB reads (and caches) in full when the keys'
        statistics cannot rule a row group out (random ids, or ids longer than the 8 characters it keeps).
        The batch is written in slices of at most ~``_SLICE_CHARS`` characters of text, one transaction each:
        DuckDB holds a transaction's rows in memory until it commits, so long documents make small slices.
        """
        if not data or not data[0]:
            return
        for start, stop, chars in _slices(columns, data):
            part = data if (start, stop) == (0, len(data[0])) else [values[start:stop] for values in data]
            self._upsert_slice(table, keys if replace else (), run_id, columns, part, extra)
            self._unreleased += chars
            self._written += chars
            self._rows += stop - start
            # Every checkpoint rewrites each table's last row group, which fills up to _ROW_GROUP_ROWS rows. So
            # checkpoints are ~_RELEASE_CHARS apart, or as far apart as a row group of such rows holds when that
            # is more (long documents), but never more than a quarter of all written: the work stays near-linear.
            row_group = self._written * _ROW_GROUP_ROWS // self._rows
            if self._unreleased >= max(_RELEASE_CHARS, min(row_group, self._written // 4)):
                self._release()

    def _release(self) -> None:
        """Checkpoint, then :meth:`_flush`.

        DuckDB keeps the rows a connection writes in memory until a checkpoint moves them to the file (by default
        once its log reaches 16 MB). A checkpoint every ~``_RELEASE_CHARS`` characters written (more apart in long
        runs, see :meth:`_upsert`) keeps a run's rows out of memory (docs/benchmarks.md).
        """
        self._unreleased = 0
        self._conn.execute("CHECKPOINT")
        self._flush()

    def _flush(self) -> None:
        """Have DuckDB drop the blocks of the file it caches and return the memory it freed to the OS.

        ``SET memory_limit`` to a tiny value makes DuckDB evict every block it can (blocks of the file, read back
        when needed), or fail, harmlessly, when it cannot (a streaming cursor holds blocks); ``RESET`` restores the
        default and flushes DuckDB's allocator. No statement runs under the tiny limit: both happen between
        statements, on this store's connection. A lasting lower limit is never set: DuckDB then fails on long
        documents ("database has been invalidated").
        """
        with contextlib.suppress(_duckdb().Error):
            self._conn.execute(f"SET memory_limit = '{_EVICT_TO}'")
        self._conn.execute("RESET memory_limit")

    def _read(self, sql: str, params: Any, fetch: Callable[[Any], _T]) -> _T:
        """Run a read of a whole run with a small buffer budget, then :meth:`_flush` what it cached.

        A scan keeps every block of the file it reads until the memory limit: ~10 MB per read of a whole run at
        32,000 cases, growing with the run. Under a budget DuckDB evicts blocks as the scan goes on (they are on
        disk), and its joins spill to disk. A read that needs more (a large join, sort or single value) fails
        with DuckDB's out-of-memory error and is run again under the next budget of ``_READ_CAPS``, then without
        one: it wrote nothing, so a retry changes nothing. (A join of two sides of 128,000 cases needs 12 MB, of
        256,000 16 MB; run without a budget at once, such a join took 50 MB.) A store smaller than the first
        budget (file and log) is read plainly: no budget could bind, and setting one and dropping the cache cost
        ~10 ms a read, a third of what a 2,000-case run does after its last answer.
        """
        if self._small():
            return fetch(self._conn.execute(sql, params))
        duckdb = _duckdb()
        budgets = [f"SET memory_limit = '{cap}'" for cap in _READ_CAPS] + ["RESET memory_limit"]
        try:
            while True:
                with contextlib.suppress(duckdb.Error):
                    self._conn.execute(budgets.pop(0))
                try:
                    return fetch(self._conn.execute(sql, params))
                except duckdb.OutOfMemoryException:
                    if not budgets:
                        raise
        finally:
            self._flush()

    def _small(self) -> bool:
        """Whether the file and its log together are smaller than the first read budget."""
        try:
            size = sum(os.path.getsize(p) for p in (self.path, f"{self.path}.wal") if os.path.exists(p))
        except OSError:  # removed under us: whatever happens next, the cap is not what matters
            return False
        return size < _READ_CAPS_BYTES[0]

    def _upsert_slice(self, table: str, keys: Sequence[str], run_id: str, columns: Sequence[tuple[str, str]],
                      data: Sequence[list[Any]], extra: Sequence[tuple[str, str]]) -> None:
        """Write one slice, replacing the stored rows with its ``keys`` (none: append)."""
        duckdb = _duckdb()
        names = ["run_id", *(c for c, _ in columns), *(c for c, _ in extra)]
        for attempt in (1, 2):
            arrays, exprs = _columnar(columns, data)
            select = ["$1", *exprs, *(_with_columns(e, columns, exprs) for _, e in extra)]
            key_exprs = ", ".join(f"{exprs[i]} AS {c}" for i, (c, _) in enumerate(columns) if c in keys)
            match = " AND ".join(f"t.{k} = b.{k}" for k in keys)
            self._conn.register(_BATCH_VIEW, arrays)
            try:
                with self._transaction():
                    if keys:
                        self._conn.execute(f"DELETE FROM {table} t USING (SELECT {key_exprs} FROM {_BATCH_VIEW}) "
                                           f"b WHERE t.run_id = $1 AND {match}", [run_id])
                    self._conn.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(select)} "
                                       f"FROM {_BATCH_VIEW}", [run_id])
                return
            except duckdb.InvalidInputException as exc:
                if attempt == 2 or "surrogate" not in str(exc):
                    raise
                data = [[_clean_text(v) for v in values] if t in _TEXT_TYPES else values
                        for (_, t), values in zip(columns, data, strict=True)]
            finally:
                self._conn.unregister(_BATCH_VIEW)


_RELEASE_CHARS = 4_000_000
_ROW_GROUP_ROWS = 2048
"""DuckDB's smallest row group (default 122,880): a checkpoint rewrites the last, growing, row group of a table,
and reads of a long run's tables keep fewer rows of it at once."""
_EVICT_TO = "4MB"
_READ_CAPS_BYTES = (8_000_000, 16_000_000, 32_000_000, 64_000_000)
_READ_CAPS = tuple(f"{b // 1_000_000}MB" for b in _READ_CAPS_BYTES)  # DuckDB's MB: 10^6 bytes
