"""Named, append-only schema migrations of the DuckDB store.

Invariants:

- :data:`MIGRATIONS` only ever grows at the end. A released migration is never edited, renamed or removed:
  its name is recorded in ``_migrations`` of every store it ran on, and editing it would leave old and new
  stores with different schemas under the same record.
- :func:`migrate` applies the missing migrations in list order, all in one transaction, so a store is either
  fully migrated or untouched.
- A store that records a migration this code does not know was written by a newer tunebench; it is refused
  (writing to it could corrupt data the newer version relies on).
- ``store_meta.format_version`` is :data:`FORMAT_VERSION` after a successful :func:`migrate`. It changes when a
  migration changes what users see in SQL (a column, a table, a meaning); docs/store.md documents it.

Only this module and :mod:`tunebench.store` import duckdb (the schema is a public interface: users query it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    import duckdb

__all__ = ["FORMAT_VERSION", "MIGRATIONS", "Migration", "applied_migrations", "migrate", "pending_migrations"]

FORMAT_VERSION = 1
"""The store format users see; bumped by a migration that changes the documented schema."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change, recorded by name in ``_migrations`` once applied."""

    name: str
    apply: Callable[[duckdb.DuckDBPyConnection], None]


MIGRATIONS: list[Migration] = []
"""Every migration, oldest first. Append only."""


def _migration(fn: Callable[[duckdb.DuckDBPyConnection], None]) -> Callable[[duckdb.DuckDBPyConnection], None]:
    MIGRATIONS.append(Migration(fn.__name__, fn))
    return fn


@_migration
def m001_initial(conn: duckdb.DuckDBPyConnection) -> None:
    # No FOREIGN KEYs: DuckDB cannot UPDATE a parent row that children reference, and finish_run updates runs.
    # No PRIMARY KEY on cases, outputs and scores: DuckDB's index made bulk inserts 3-5x slower, growing with
    # the file. The store keeps those keys unique itself (delete-then-insert in one transaction).
    conn.execute("""
        CREATE TABLE store_meta (
            key VARCHAR PRIMARY KEY,
            value VARCHAR NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            suite_name VARCHAR NOT NULL,
            suite_path VARCHAR,
            suite_hash VARCHAR,
            tunebench_version VARCHAR,
            git_commit VARCHAR,
            started_at TIMESTAMPTZ NOT NULL,
            finished_at TIMESTAMPTZ,
            status VARCHAR NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'interrupted')),
            options JSON,
            baseline VARCHAR,
            candidate VARCHAR
        )""")
    conn.execute("""
        CREATE TABLE models (
            run_id VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            runner VARCHAR NOT NULL,
            identity JSON,
            identity_hash VARCHAR,
            PRIMARY KEY (run_id, model)
        )""")
    conn.execute("""
        CREATE TABLE cases (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            input VARCHAR NOT NULL,
            expected VARCHAR NOT NULL,
            tags VARCHAR[] NOT NULL,
            vars JSON,
            messages JSON,
            content_hash VARCHAR,
            source VARCHAR
        )""")
    conn.execute("""
        CREATE TABLE outputs (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            repeat INTEGER NOT NULL,
            text VARCHAR NOT NULL,
            error VARCHAR,
            latency_ms DOUBLE,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            finish_reason VARCHAR,
            attempts INTEGER NOT NULL,
            cached BOOLEAN NOT NULL,
            request JSON,
            created_at TIMESTAMPTZ NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE metrics (
            run_id VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            kind VARCHAR NOT NULL,
            config JSON,
            higher_is_better BOOLEAN,
            PRIMARY KEY (run_id, metric)
        )""")
    conn.execute("""
        CREATE TABLE scores (
            run_id VARCHAR NOT NULL,
            case_id VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            repeat INTEGER NOT NULL,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            passed BOOLEAN,
            explanation VARCHAR NOT NULL,
            details JSON,
            error VARCHAR
        )""")
    conn.execute("""
        CREATE TABLE aggregates (
            run_id VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            metric VARCHAR NOT NULL,
            value DOUBLE,
            n INTEGER NOT NULL,
            n_errors INTEGER NOT NULL,
            pass_rate DOUBLE,
            details JSON,
            PRIMARY KEY (run_id, model, metric)
        )""")
    conn.execute("""
        CREATE TABLE comparisons (
            run_id VARCHAR PRIMARY KEY,
            comparison JSON NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE gate_results (
            run_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            name VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            passed BOOLEAN NOT NULL,
            message VARCHAR NOT NULL,
            numbers JSON,
            flips JSON,
            PRIMARY KEY (run_id, position)
        )""")
    # A history, not a mapping: re-tagging appends a row, and the newest row of a tag is where it points now.
    conn.execute("""
        CREATE TABLE run_tags (
            tag VARCHAR NOT NULL,
            run_id VARCHAR NOT NULL,
            tagged_at TIMESTAMPTZ NOT NULL
        )""")
    conn.execute("""
        CREATE VIEW current_tags AS
        SELECT t.tag, t.run_id, t.tagged_at, r.suite_name
        FROM run_tags t JOIN runs r USING (run_id)
        QUALIFY row_number() OVER (PARTITION BY t.tag, r.suite_name ORDER BY t.tagged_at DESC) = 1""")
    conn.execute("CREATE INDEX runs_suite_idx ON runs (suite_name, started_at)")


@_migration
def m002_output_text_key(conn: duckdb.DuckDBPyConnection) -> None:
    # MD5 of the whitespace-normalised text: the identical-output check compares these instead of the texts.
    from .storeformat import normalised_text

    conn.execute("ALTER TABLE outputs ADD COLUMN text_key UHUGEINT")
    conn.execute(f"UPDATE outputs SET text_key = md5_number({normalised_text('text')})")


def applied_migrations(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Names recorded in ``_migrations`` (empty for a new store), oldest first."""
    # fetchall, never fetchone: DuckDB 2 refuses new work on a connection whose result is not exhausted.
    exists = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' AND table_name = '_migrations'"
    ).fetchall()
    if not exists[0][0]:
        return []
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY applied_at").fetchall()]


def pending_migrations(
    conn: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] | None = None
) -> list[Migration]:
    """The migrations :func:`migrate` would apply; raises StoreError for a store from a newer tunebench."""
    migrations = MIGRATIONS if migrations is None else migrations
    applied = applied_migrations(conn)
    known = {m.name for m in migrations}
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise StoreError(
            f"this store was written by a newer tunebench (it has migration {unknown[0]!r}, unknown to this "
            "version); upgrade tunebench, or use --db to point at another file"
        )
    done = set(applied)
    return [m for m in migrations if m.name not in done]


def migrate(conn: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the missing migrations in order, in one transaction; return the names applied.

    ``migrations`` defaults to :data:`MIGRATIONS` (tests pass a longer list to exercise upgrades).
    """
    pending = pending_migrations(conn, migrations)
    if not pending:
        return []
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for m in pending:
            m.apply(conn)
            # A Python clock, not now(): now() is the transaction start, so every row would get the same time.
            conn.execute("INSERT INTO _migrations VALUES (?, ?)", [m.name, datetime.now(UTC)])
        conn.execute(
            "INSERT OR REPLACE INTO store_meta VALUES ('format_version', ?)", [str(FORMAT_VERSION)]
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [m.name for m in pending]
