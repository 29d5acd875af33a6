"""The DuckDB store: one file that holds every run, queried by users with SQL (schema: docs/store.md).

Invariants:

- Only the store layer (this module, :mod:`tunebench.storeio`, :mod:`tunebench.migrations`,
  :mod:`tunebench.storeformat`, :mod:`tunebench.tablefile`) imports duckdb, and lazily
  (``import tunebench.store`` stays cheap). The schema changes only through named migrations; :meth:`Store.open`
  applies missing ones.
- One writing process per file (DuckDB's rule). :meth:`Store.open` waits up to ``wait_s`` for another process to
  let go, then raises :class:`StoreLockedError` naming the file, the other PID and the fix. Every other DuckDB
  failure surfaces as :class:`StoreError` naming the file; callers never see a DuckDB exception.
- Bulk writes go through :class:`tunebench.storeio.Connection`: numpy arrays in transactions of at most ~4M
  characters, a checkpoint every ~4M characters, row groups of 2,048 rows, and whole-run reads under a small
  buffer budget, so DuckDB's memory does not grow with the run.
  Cases, models and metrics that fail part-way take back the rows the call added; an output or score batch
  that fails part-way may keep its first slices, which writing the batch again replaces.
- Writing a row whose key is stored replaces it (a resumed run overwrites an error output with its success;
  re-scoring is idempotent). Keys of the large tables (cases, outputs, scores) are kept unique by this
  delete-then-insert, not by a PRIMARY KEY: DuckDB's index made inserts 3-5x slower and grew with the file. A
  new run, which writes each output and score once, appends them (``replace=False``): the delete's search
  reads the keys of the whole run.
- JSON columns hold ``json.dumps`` text and come back as Python objects. Values under secret-looking keys
  (``api_key``, ``authorization``, …) are replaced by ``"[redacted]"`` before they are stored.
- Timestamps are TIMESTAMPTZ and come back as UTC-aware datetimes; naive datetimes given to it are taken as UTC.
- Reads of model output stream in batches; nothing here loads every output of a run into Python at once.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import StoreError
from .records import Aggregate, Case, Output, Score
from .storeformat import (
    _SLICE_CHARS,
    _duckdb,
    _dumps,
    _dumps_named,
    _loads,
    _NotJSON,
    _pick,
    _utc,
    case_content_hash,
    new_run_id,
    normalised_text,
)
from .storeio import Connection
from .tablefile import read_table_file

if TYPE_CHECKING:
    import duckdb

__all__ = ["RUN_STATUSES", "Store", "case_content_hash", "new_run_id", "read_table_file"]

RUN_STATUSES = ("running", "completed", "failed", "interrupted")
_RUN_COLUMNS = ("run_id", "suite_name", "suite_path", "suite_hash", "tunebench_version", "git_commit",
                "started_at", "finished_at", "status", "options", "baseline", "candidate")


class Store(Connection):
    """The run history in one DuckDB file. Open with :meth:`Store.open`; use as a context manager.

    Methods are safe to call from several threads of the one writing process (a lock serialises them).
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: Path, *, read_only: bool) -> None:
        super().__init__(conn, path, read_only=read_only)
        self._known_runs: set[str] = set()

    # -- lifecycle (opening and closing: storeio.Connection)

    def _prepare(self) -> None:
        from .migrations import applied_migrations, migrate, pending_migrations

        with self._guard("opening"):
            self._conn.execute("SET TimeZone = 'UTC'")
            if not applied_migrations(self._conn):
                tables = self._first(
                    "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database()")
                if (tables and tables[0]) or self.read_only:
                    raise StoreError(f"{self.path} is a DuckDB database but not a tunebench store; "
                                     "pass --db with another file")
            if self.read_only:
                if pending_migrations(self._conn):
                    raise StoreError(f"the store {self.path} was written by an older tunebench and needs an "
                                     "upgrade: open it once for writing (run any tunebench command that writes)")
            else:
                migrate(self._conn)

    def _require_run(self, run_id: str) -> None:
        if run_id in self._known_runs:  # runs are never deleted, so once seen is enough
            return
        if self._first("SELECT 1 FROM runs WHERE run_id = ?", [run_id]) is None:
            raise StoreError(f"{self.path}: there is no run {run_id!r}")
        self._known_runs.add(run_id)

    # -- runs

    def start_run(self, run: Mapping[str, Any]) -> str:
        """Insert a run row and return its id (``run["run_id"]``, or a new one from :func:`new_run_id`).

        Keys are the columns of ``runs``; ``suite_name`` is required, ``status`` defaults to ``running`` and
        ``started_at`` to now. ``options`` is any JSON-serialisable dict (limit, filter, seed, CLI flags, …).
        """
        self._writable("start a run")
        row = _pick(run, _RUN_COLUMNS, ("suite_name",), "start_run")
        row["run_id"] = row["run_id"] or new_run_id()
        row["status"] = row["status"] or "running"
        if row["status"] not in RUN_STATUSES:
            raise ValueError(f"start_run: status {row['status']!r} is not one of {RUN_STATUSES}")
        row["started_at"] = _utc(row["started_at"]) or datetime.now(UTC)
        row["finished_at"] = _utc(row["finished_at"])
        try:
            row["options"] = _dumps(row["options"])
        except _NotJSON as exc:
            raise StoreError(f"cannot store the run options: {exc}") from None
        placeholders = ", ".join("?::JSON" if c == "options" else "?" for c in _RUN_COLUMNS)
        with self._guard(f"starting run {row['run_id']}"):
            if self._first("SELECT 1 FROM runs WHERE run_id = ?", [row["run_id"]]):
                raise StoreError(f"{self.path}: a run {row['run_id']!r} already exists")
            self._conn.execute(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders})",
                               [row[c] for c in _RUN_COLUMNS])
        return row["run_id"]

    def finish_run(self, run_id: str, status: str = "completed") -> None:
        """Set a run's final ``status`` (completed, failed or interrupted) and ``finished_at`` = now."""
        self._set_status(run_id, status, finished=True)

    def resume_run(self, run_id: str) -> None:
        """Mark an interrupted (or crashed) run as running again, clearing ``finished_at``."""
        self._set_status(run_id, "running", finished=False)

    def _set_status(self, run_id: str, status: str, *, finished: bool) -> None:
        self._writable("change a run's status")
        if status not in RUN_STATUSES:
            raise ValueError(f"status {status!r} is not one of {RUN_STATUSES}")
        with self._guard(f"setting the status of run {run_id}"):
            done = self._conn.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ? RETURNING run_id",
                [status, datetime.now(UTC) if finished else None, run_id],
            ).fetchall()
            if not done:
                raise StoreError(f"{self.path}: there is no run {run_id!r}")

    def tag_run(self, run_id: str, tag: str) -> None:
        """Point ``tag`` (e.g. ``production``) at ``run_id``; a tag already in use moves, its history stays."""
        self._writable("tag a run")
        if not tag or tag != tag.strip() or any(ch.isspace() for ch in tag):
            raise StoreError(f"bad tag {tag!r}: a tag is one word without spaces (e.g. production)")
        if tag == "latest":
            raise StoreError("'latest' is reserved (it always means the newest run); choose another tag")
        with self._guard(f"tagging run {run_id}"):
            self._require_run(run_id)
            self._conn.execute("INSERT INTO run_tags VALUES (?, ?, ?)", [tag, run_id, datetime.now(UTC)])

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row as a dict (plus ``tags``: the tags pointing at it now), or None."""
        rows = self._runs("WHERE r.run_id = ?", [run_id])
        return rows[0] if rows else None

    def list_runs(self, suite_name: str | None = None, since: datetime | None = None,
                  until: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs newest first, optionally of one suite and started within [since, until)."""
        where, params = ["TRUE"], []
        if suite_name is not None:
            where.append("r.suite_name = ?")
            params.append(suite_name)
        if since is not None:
            where.append("r.started_at >= ?")
            params.append(_utc(since))
        if until is not None:
            where.append("r.started_at < ?")
            params.append(_utc(until))
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return self._runs("WHERE " + " AND ".join(where), params, tail)

    def find_resumable(self, suite_name: str, suite_hash: str) -> dict[str, Any] | None:
        """The newest run of this suite and suite hash that is ``running`` or ``interrupted``, or None."""
        rows = self._runs("WHERE r.suite_name = ? AND r.suite_hash = ? AND r.status IN ('running', 'interrupted')",
                          [suite_name, suite_hash], " LIMIT 1")
        return rows[0] if rows else None

    def _runs(self, where: str, params: list[Any], tail: str = "") -> list[dict[str, Any]]:
        sql = (f"SELECT {', '.join('r.' + c for c in _RUN_COLUMNS)}, "
               "list(t.tag ORDER BY t.tag) FILTER (WHERE t.tag IS NOT NULL) AS tags "
               f"FROM runs r LEFT JOIN current_tags t ON t.run_id = r.run_id {where} "
               f"GROUP BY ALL ORDER BY r.started_at DESC, r.run_id DESC{tail}")
        with self._guard("reading runs"):
            rows = self._conn.execute(sql, params).fetchall()
        out = []
        for row in rows:
            run = dict(zip((*_RUN_COLUMNS, "tags"), row, strict=True))
            run["options"] = _loads(run["options"])
            run["tags"] = run["tags"] or []
            out.append(run)
        return out

    def resolve_run(self, ref: str, *, suite: str | None = None) -> str:
        """A run id from ``latest``, an exact run id, a tag, or a unique prefix of a run id (in that order).

        Tags are per suite (``production`` can point at one run of each suite); with ``suite`` given, ``latest``
        and tags are looked up among that suite's runs only.
        """
        with self._guard("resolving a run"):
            if ref == "latest":
                where, params = ("WHERE suite_name = ? ", [suite]) if suite else ("", [])
                row = self._first(f"SELECT run_id FROM runs {where}ORDER BY started_at DESC, run_id DESC LIMIT 1",
                                  params)
                if row:
                    return row[0]
            else:
                if self._first("SELECT 1 FROM runs WHERE run_id = ?", [ref]):
                    return ref
                where, params = ("AND suite_name = ?", [ref, suite]) if suite else ("", [ref])
                rows = self._conn.execute(f"SELECT run_id, suite_name FROM current_tags WHERE tag = ? {where}",
                                          params).fetchall()
                if len(rows) == 1:
                    return rows[0][0]
                if len(rows) > 1:
                    raise StoreError(f"tag {ref!r} is set in several suites ({', '.join(sorted(r[1] for r in rows))})"
                                     "; name the suite (--suite) or give a run id")
                matches = [r[0] for r in self._conn.execute(
                    "SELECT run_id FROM runs WHERE starts_with(run_id, ?) ORDER BY started_at DESC LIMIT 6",
                    [ref]).fetchall()] if ref else []
                if len(matches) == 1:
                    return matches[0]
                if matches:
                    raise StoreError(f"{ref!r} matches several runs ({', '.join(matches[:5])}"
                                     f"{', …' if len(matches) > 5 else ''}); give more of the run id")
            recent = [r[0] for r in self._conn.execute(
                "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").fetchall()]
            tags = [r[0] for r in self._conn.execute("SELECT tag FROM current_tags ORDER BY tag").fetchall()]
        if not recent:
            raise StoreError(f"no run {ref!r}: the store {self.path} has no runs yet")
        known = f"recent runs: {', '.join(recent)}"
        if tags:
            known += f"; tags: {', '.join(tags)}"
        raise StoreError(f"no run {ref!r} in {self.path} (give a run id, a unique prefix of one, a tag, or "
                         f"'latest'); {known}")

    # -- models, metrics, cases

    def add_models(self, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record the run's models (keys: model, runner, identity, identity_hash); re-adding one updates it."""
        self._writable("add models")
        picked = [_pick(r, ("model", "runner", "identity", "identity_hash"), ("model", "runner"), "add_models")
                  for r in rows]
        self._add_positioned(
            "models", "model", run_id, ((r["model"], r) for r in picked),
            [("runner", "VARCHAR"), ("identity", "JSON"), ("identity_hash", "VARCHAR")],
            lambda r: [r["runner"], _dumps(r["identity"]), r["identity_hash"]])

    def add_metrics(self, run_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record the run's metrics (keys: metric, kind, config, higher_is_better); re-adding one updates it."""
        self._writable("add metrics")
        picked = [_pick(r, ("metric", "kind", "config", "higher_is_better"), ("metric", "kind"), "add_metrics")
                  for r in rows]
        self._add_positioned(
            "metrics", "metric", run_id, ((r["metric"], r) for r in picked),
            [("kind", "VARCHAR"), ("config", "JSON"), ("higher_is_better", "BOOLEAN")],
            lambda r: [r["kind"], _dumps(r["config"]), r["higher_is_better"]])

    def add_cases(self, run_id: str, cases: Iterable[Case]) -> None:
        """Record the run's golden cases, in order; re-adding a case id updates it and keeps its position.

        ``cases`` is iterated once, and never held: a streamed case set stays out of memory."""
        self._writable("add cases")
        self._add_positioned(
            "cases", "case_id", run_id, ((c.id, c) for c in cases),
            [("input", "VARCHAR"), ("expected", "VARCHAR"), ("tags", "VARCHAR[]"), ("vars", "JSON"),
             ("messages", "JSON"), ("content_hash", "VARCHAR"), ("source", "VARCHAR")],
            lambda c: [c.input, c.expected, json.dumps(list(c.tags), ensure_ascii=False),
                       _dumps(c.vars, empty_is_null=True), _dumps(None if c.messages is None else list(c.messages)),
                       case_content_hash(c), c.source])

    def _add_positioned(self, table: str, key: str, run_id: str, rows: Iterable[tuple[str, Any]],
                        columns: list[tuple[str, str]], values: Any) -> None:
        """Write (key, row) pairs with a position, built and written one slice (~``_SLICE_CHARS`` characters) at a
        time so many long cases are never all held at once. A key given twice is an error. If a row cannot be
        stored, the rows this call added are removed again (rows it updated keep their update)."""
        with self._guard(f"writing {table} of run {run_id}"):
            self._require_run(run_id)
            # A re-added row keeps its position; new rows go after the existing ones, in the order given.
            known = dict(self._conn.execute(f"SELECT {key}, position FROM {table} WHERE run_id = ?",
                                            [run_id]).fetchall())
            following = first_new = max(known.values(), default=-1) + 1
            updated: set[str] = set()  # keys stored before this call that it gave (a new key has a new position)
            width = len(columns) + 2
            data: list[list[Any]] = [[] for _ in range(width)]
            chars, written = 0, False
            try:
                for k, r in rows:
                    position = known.get(k)
                    if position is None:
                        position = known[k] = following
                        following += 1
                    elif position >= first_new or k in updated:
                        raise StoreError(f"cannot store {table}: {key} {k!r} appears twice")
                    else:
                        updated.add(k)
                    try:
                        row_values = values(r)
                    except _NotJSON as exc:
                        raise StoreError(f"cannot store {table} row {k!r}: {exc}") from None
                    for i, v in enumerate([k, position, *row_values]):
                        data[i].append(v)
                        if isinstance(v, str):
                            chars += len(v)
                    if chars >= _SLICE_CHARS:
                        written = True
                        self._upsert(table, (key,), run_id, [(key, "VARCHAR"), ("position", "INTEGER"), *columns],
                                     data)
                        data, chars = [[] for _ in range(width)], 0
                if data[0]:
                    written = True
                    self._upsert(table, (key,), run_id, [(key, "VARCHAR"), ("position", "INTEGER"), *columns], data)
            except BaseException:
                if written:  # take back what this call added; a failing clean-up must not hide the first error
                    with contextlib.suppress(_duckdb().Error):
                        self._conn.execute(f"DELETE FROM {table} WHERE run_id = ? AND position >= ?",
                                           [run_id, first_new])
                raise

    def get_models(self, run_id: str) -> list[dict[str, Any]]:
        """The run's models in the order added: dicts with model, runner, identity, identity_hash."""
        with self._guard(f"reading models of run {run_id}"):
            rows = self._conn.execute("SELECT model, runner, identity, identity_hash FROM models "
                                      "WHERE run_id = ? ORDER BY position", [run_id]).fetchall()
        return [{"model": m, "runner": r, "identity": _loads(i), "identity_hash": h} for m, r, i, h in rows]

    def get_metrics(self, run_id: str) -> list[dict[str, Any]]:
        """The run's metrics in the order added: dicts with metric, kind, config, higher_is_better."""
        with self._guard(f"reading metrics of run {run_id}"):
            rows = self._conn.execute("SELECT metric, kind, config, higher_is_better FROM metrics "
                                      "WHERE run_id = ? ORDER BY position", [run_id]).fetchall()
        return [{"metric": m, "kind": k, "config": _loads(c), "higher_is_better": h} for m, k, c, h in rows]

    def get_cases(self, run_id: str) -> list[Case]:
        """The run's cases in the order they were added."""
        with self._guard(f"reading cases of run {run_id}"):
            rows = self._conn.execute("SELECT case_id, input, expected, tags, vars, messages, source FROM cases "
                                      "WHERE run_id = ? ORDER BY position", [run_id]).fetchall()
        return [Case(id=cid, input=inp, expected=exp, tags=tuple(tags), vars=_loads(vs, {}),
                     messages=None if msgs is None else tuple(json.loads(msgs)), source=src)
                for cid, inp, exp, tags, vs, msgs, src in rows]

    # -- outputs

    _OUTPUT_COLUMNS = (("case_id", "VARCHAR"), ("model", "VARCHAR"), ("repeat", "INTEGER"), ("text", "VARCHAR"),
                       ("error", "VARCHAR"), ("latency_ms", "DOUBLE"), ("prompt_tokens", "INTEGER"),
                       ("completion_tokens", "INTEGER"), ("finish_reason", "VARCHAR"), ("attempts", "INTEGER"),
                       ("cached", "BOOLEAN"), ("request", "JSON"))

    def add_outputs(self, run_id: str, outputs: Iterable[Output], *, replace: bool = True) -> None:
        """Store outputs; one with the key (case_id, model, repeat) of a stored one replaces it (resume).

        ``replace=False`` only appends, without looking for stored outputs to replace: for a caller that knows
        none is stored (a new run writes each output once). Looking costs a read of the keys of every output of
        the run, per batch; given a stored key, it leaves two rows.
        """
        self._writable("add outputs")
        latest: dict[tuple[str, str, int], Output] = {}
        for o in outputs:  # the last of duplicate keys wins, as it would across separate calls
            latest[(o.case_id, o.model, o.repeat)] = o
        rows = []
        for o in latest.values():
            try:
                request = _dumps(o.request)
            except _NotJSON as exc:
                raise StoreError(f"cannot store the request of case {o.case_id!r} ({o.model}): {exc}") from None
            rows.append((o.case_id, o.model, o.repeat, o.text, o.error,
                         None if o.latency_ms is None else float(o.latency_ms), o.prompt_tokens,
                         o.completion_tokens, o.finish_reason, o.attempts, bool(o.cached), request))
        data = [list(column) for column in zip(*rows, strict=True)]
        with self._guard(f"writing outputs of run {run_id}"):
            self._require_run(run_id)
            self._upsert("outputs", ("case_id", "model", "repeat"), run_id, self._OUTPUT_COLUMNS, data,
                         extra=(("created_at", "now()"), ("text_key", f"md5_number({normalised_text('{text}')})")),
                         replace=replace)

    def done_jobs(self, run_id: str) -> set[tuple[str, str, int]]:
        """Keys (case_id, model, repeat) that have a successful (non-error) output: what a resume skips."""
        with self._guard(f"reading outputs of run {run_id}"):
            rows = self._conn.execute("SELECT case_id, model, repeat FROM outputs WHERE run_id = ? "
                                      "AND error IS NULL", [run_id]).fetchall()
        return {(c, m, r) for c, m, r in rows}

    def iter_outputs(self, run_id: str, model: str | None = None, batch_size: int = 1000) -> Iterator[Output]:
        """Stream a run's outputs (optionally one model's), ordered by model, case order and repeat.

        Rows arrive ``batch_size`` at a time through a separate cursor, so the store may be written while the
        caller iterates (for example scores of the outputs already read).
        """
        names = ", ".join(f"o.{c}" for c, _ in self._OUTPUT_COLUMNS)
        sql = (f"SELECT {names} FROM outputs o "
               "LEFT JOIN models m ON m.run_id = o.run_id AND m.model = o.model "
               "LEFT JOIN cases c ON c.run_id = o.run_id AND c.case_id = o.case_id "
               "WHERE o.run_id = $run AND ($model IS NULL OR o.model = $model) "
               "ORDER BY m.position NULLS LAST, o.model, c.position NULLS LAST, o.case_id, o.repeat")
        with self._guard(f"reading outputs of run {run_id}"):
            cursor = self._conn.cursor()
            cursor.execute("USE store")  # a cursor starts in DuckDB's in-memory database, not the attached file
            cursor.execute("SET TimeZone = 'UTC'")
            cursor.execute(sql, {"run": run_id, "model": model})
        try:
            while True:
                with self._guard(f"reading outputs of run {run_id}"):
                    rows = cursor.fetchmany(batch_size)
                if not rows:
                    return
                for (case_id, mdl, repeat, text, error, latency, ptok, ctok, finish, attempts, cached,
                     request) in rows:
                    yield Output(case_id=case_id, model=mdl, repeat=repeat, text=text, error=error,
                                 latency_ms=latency, prompt_tokens=ptok, completion_tokens=ctok,
                                 finish_reason=finish, attempts=attempts, cached=cached,
                                 request=_loads(request))
        finally:
            cursor.close()

    # -- scores and aggregates

    def add_scores(self, run_id: str, rows: Iterable[tuple[str, str, int, str, Score]], *,
                   replace: bool = True) -> None:
        """Store (case_id, model, repeat, metric, Score) rows; a row with a stored key replaces it
        (``replace=False``: appends, as :meth:`add_outputs` does)."""
        self._writable("add scores")
        latest: dict[tuple[str, str, int, str], Score] = {}
        for case_id, model, repeat, metric, score in rows:
            latest[(case_id, model, repeat, metric)] = score
        columns = (("case_id", "VARCHAR"), ("model", "VARCHAR"), ("repeat", "INTEGER"), ("metric", "VARCHAR"),
                   ("value", "DOUBLE"), ("passed", "BOOLEAN"), ("explanation", "VARCHAR"), ("details", "JSON"),
                   ("error", "VARCHAR"))
        rows = []
        for (case_id, model, repeat, metric), sc in latest.items():
            try:
                details = _dumps(sc.details, empty_is_null=True)
            except _NotJSON as exc:
                raise StoreError(f"cannot store the details of {metric} for case {case_id!r} ({model}): {exc}"
                                 ) from None
            rows.append((case_id, model, repeat, metric, None if sc.value is None else float(sc.value), sc.passed,
                         sc.explanation or "", details, sc.error))
        data = [list(column) for column in zip(*rows, strict=True)]
        with self._guard(f"writing scores of run {run_id}"):
            self._require_run(run_id)
            self._upsert("scores", ("case_id", "model", "repeat", "metric"), run_id, columns, data,
                         replace=replace)

    def get_scores(self, run_id: str, model: str | None = None,
                   metric: str | None = None) -> list[tuple[str, str, int, str, Score]]:
        """(case_id, model, repeat, metric, Score) rows, ordered by model, metric, case order and repeat."""
        sql = ("SELECT s.case_id, s.model, s.repeat, s.metric, s.value, s.passed, s.explanation, s.details, "
               "s.error FROM scores s "
               "LEFT JOIN models m ON m.run_id = s.run_id AND m.model = s.model "
               "LEFT JOIN metrics k ON k.run_id = s.run_id AND k.metric = s.metric "
               "LEFT JOIN cases c ON c.run_id = s.run_id AND c.case_id = s.case_id "
               "WHERE s.run_id = $run AND ($model IS NULL OR s.model = $model) "
               "AND ($metric IS NULL OR s.metric = $metric) "
               "ORDER BY m.position NULLS LAST, s.model, k.position NULLS LAST, s.metric, "
               "c.position NULLS LAST, s.case_id, s.repeat")
        with self._guard(f"reading scores of run {run_id}"):
            rows = self._conn.execute(sql, {"run": run_id, "model": model, "metric": metric}).fetchall()
        return [(case_id, mdl, repeat, met, Score(value=value, passed=passed, explanation=explanation,
                                                  details=_loads(details, {}), error=error))
                for case_id, mdl, repeat, met, value, passed, explanation, details, error in rows]

    def score_values(self, run_id: str, model: str, metric: str) -> tuple[Any, Any, int]:
        """One model's scores of one metric as numpy arrays: the values of those scored (no error, a value),
        the pass/fail of those of them judged, and the number of scores: what the default
        :meth:`Metric.aggregate` reads (``metrics.mean_aggregate``), without a Python object per score."""
        import numpy as np

        sql = ("SELECT value, passed, error IS NULL AND value IS NOT NULL AS scored FROM scores "
               "WHERE run_id = $run AND model = $model AND metric = $metric")
        with self._guard(f"reading scores of run {run_id}"):
            cols = self._read(sql, {"run": run_id, "model": model, "metric": metric}, lambda c: c.fetchnumpy())
        scored = np.asarray(cols["scored"], dtype=bool)
        judged = np.ma.asarray(cols["passed"])[scored].compressed()
        return np.ma.getdata(cols["value"])[scored].astype(float), judged.astype(bool), len(scored)

    def add_aggregates(self, run_id: str, rows: Iterable[tuple[str, str, Aggregate]]) -> None:
        """Store (model, metric, Aggregate) rows, replacing any stored for the same run, model and metric."""
        self._writable("add aggregates")
        latest = {(model, metric): agg for model, metric, agg in rows}
        columns = (("model", "VARCHAR"), ("metric", "VARCHAR"), ("value", "DOUBLE"), ("n", "INTEGER"),
                   ("n_errors", "INTEGER"), ("pass_rate", "DOUBLE"), ("details", "JSON"))
        data: list[list[Any]] = [[] for _ in columns]
        for (model, metric), a in latest.items():
            for i, v in enumerate((model, metric, None if a.value is None else float(a.value), a.n, a.n_errors,
                                   None if a.pass_rate is None else float(a.pass_rate),
                                   _dumps_named(a.details, f"the aggregate details of {metric} for {model}"))):
                data[i].append(v)
        with self._guard(f"writing aggregates of run {run_id}"):
            self._require_run(run_id)
            self._upsert("aggregates", ("model", "metric"), run_id, columns, data)

    def get_aggregates(self, run_id: str) -> list[tuple[str, str, Aggregate]]:
        """(model, metric, Aggregate) rows in model order, then metric order."""
        sql = ("SELECT a.model, a.metric, a.value, a.n, a.n_errors, a.pass_rate, a.details FROM aggregates a "
               "LEFT JOIN models m ON m.run_id = a.run_id AND m.model = a.model "
               "LEFT JOIN metrics k ON k.run_id = a.run_id AND k.metric = a.metric "
               "WHERE a.run_id = ? ORDER BY m.position NULLS LAST, a.model, k.position NULLS LAST, a.metric")
        with self._guard(f"reading aggregates of run {run_id}"):
            rows = self._conn.execute(sql, [run_id]).fetchall()
        return [(model, metric, Aggregate(value=value, n=n, n_errors=n_errors, pass_rate=pass_rate,
                                          details=_loads(details, {})))
                for model, metric, value, n, n_errors, pass_rate, details in rows]

    # -- verdicts and small summaries

    def add_verdict(self, run_id: str, comparison: Mapping[str, Any] | None,
                    gates: Sequence[Mapping[str, Any]]) -> None:
        """Store the run's baseline × candidate comparison (JSON-able dict) and its gate results, replacing any.

        Each gate is a dict with name, kind, passed, message and optionally numbers and flips.
        """
        self._writable("store the verdict")
        keys = ("name", "kind", "passed", "message", "numbers", "flips")
        picked = [_pick(g, keys, ("name", "kind", "passed"), "add_verdict gate") for g in gates]
        try:
            text = _dumps(comparison)
            rows = [[run_id, i, g["name"], g["kind"], bool(g["passed"]), g["message"] or "",
                     _dumps(g["numbers"], empty_is_null=True), _dumps(g["flips"], empty_is_null=True)]
                    for i, g in enumerate(picked)]
        except _NotJSON as exc:
            raise StoreError(f"cannot store the verdict of run {run_id}: {exc}") from None
        with self._guard(f"writing the verdict of run {run_id}"):
            self._require_run(run_id)
            with self._transaction():
                self._conn.execute("DELETE FROM comparisons WHERE run_id = ?", [run_id])
                self._conn.execute("DELETE FROM gate_results WHERE run_id = ?", [run_id])
                if text is not None:
                    self._conn.execute("INSERT INTO comparisons VALUES (?, ?::JSON, now())", [run_id, text])
                for row in rows:  # a handful of gates: executemany's per-row cost does not matter here
                    self._conn.execute("INSERT INTO gate_results VALUES (?, ?, ?, ?, ?, ?, ?::JSON, ?::JSON)", row)

    def get_comparison(self, run_id: str) -> dict[str, Any] | None:
        """The comparison stored by :meth:`add_verdict`, or None."""
        with self._guard(f"reading the comparison of run {run_id}"):
            row = self._first("SELECT comparison FROM comparisons WHERE run_id = ?", [run_id])
        return None if row is None else json.loads(row[0])

    def get_gate_results(self, run_id: str) -> list[dict[str, Any]]:
        """The gate results stored by :meth:`add_verdict`, in order (empty if none)."""
        with self._guard(f"reading the gate results of run {run_id}"):
            rows = self._conn.execute("SELECT name, kind, passed, message, numbers, flips FROM gate_results "
                                      "WHERE run_id = ? ORDER BY position", [run_id]).fetchall()
        return [{"name": n, "kind": k, "passed": p, "message": m, "numbers": _loads(num, {}),
                 "flips": _loads(fl, [])} for n, k, p, m, num, fl in rows]

    def output_counts(self, run_id: str) -> dict[str, tuple[int, int]]:
        """Per model: (outputs stored, of which errors)."""
        with self._guard(f"counting outputs of run {run_id}"):
            rows = self._read("SELECT model, count(*), count(error) FROM outputs WHERE run_id = ? GROUP BY model",
                              [run_id], lambda cursor: cursor.fetchall())
        return {m: (total, errors) for m, total, errors in rows}

    def case_hashes(self, run_id: str) -> dict[str, str]:
        """case_id → content_hash (see :func:`case_content_hash`) for the run's cases."""
        with self._guard(f"reading cases of run {run_id}"):
            rows = self._conn.execute("SELECT case_id, content_hash FROM cases WHERE run_id = ?", [run_id]
                                      ).fetchall()
        return dict(rows)

    def get_verdict(self, run_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The run's stored comparison and gate results."""
        return self.get_comparison(run_id), self.get_gate_results(run_id)

    def tags_of(self, run_id: str) -> list[str]:
        """The tags pointing at the run now, sorted."""
        with self._guard(f"reading tags of run {run_id}"):
            rows = self._conn.execute("SELECT tag FROM current_tags WHERE run_id = ? ORDER BY tag", [run_id]
                                      ).fetchall()
        return [r[0] for r in rows]

    # -- ad-hoc SQL

    def query_arrays(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run one SQL statement and return its columns as numpy arrays (masked where NULL): for whole-run reads
        that are computed on, not shown, without a Python dict (or DuckDB list) per row."""
        with self._guard("running a query"):
            return self._read(sql, params, lambda cursor: {} if cursor.description is None
                              else dict(cursor.fetchnumpy()))

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one SQL statement (as a user would against the file) and return its rows as dicts."""
        def rows(cursor: Any) -> list[dict[str, Any]]:
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()] if names else []

        with self._guard("running a query"):  # reads after a run (comparison, summaries) scan a whole run
            return self._read(sql, params, rows)
