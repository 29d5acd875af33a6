"""Running suites for a pytest session: each suite at most once, even across pytest-xdist workers.

Invariants:

- ``Runs`` (one per session, in ``config.stash``) maps a suite's resolved path to its :class:`Outcome`; the first
  item or fixture that needs a suite runs it, every later one reuses the outcome (errors included: a suite whose
  endpoint is down is tried once, not once per gate).
- Under xdist the workers share a folder named after the test-run id. A worker takes the suite's lock file
  there; if the outcome (``<key>.json``) exists it reads it, else it runs the suite and writes the outcome (and
  the pickled ``RunResult`` for the ``tunebench_run`` fixture of other workers) before letting go. So a suite runs
  once per session however the items are distributed (``--dist load``, ``loadgroup``, ``worksteal`` …).
- Runs against one store are serialised by a lock file beside it (``.cache/<store>.lock``), because DuckDB
  allows one writing process per file; lock order is always suite → store, so workers cannot deadlock. Flipped
  cases' texts are read from the store under that lock, right after the run, so nothing reads the store later.
- Locks are ``flock``/``msvcrt`` locks on open files: a worker that dies releases them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import RUNS_KEY, XDIST_UID_KEY, _shared_dir

__all__ = ["Outcome", "Runs", "Settings", "gather_records", "get_runs", "per_suite"]


@dataclass(frozen=True)
class Settings:
    """The session's run options: command line first, then ini, then tunebench's defaults."""

    db: Path
    overrides: tuple[str, ...] = ()
    baseline: str | None = None
    cache: bool = True
    report: bool = True
    summary: Path | None = None
    tag: str | None = None
    """Tag each suite's run with this after it completed with every gate passed."""

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        from tunebench.api import default_db

        here = config.invocation_params.dir
        ini_dir = config.inipath.parent if config.inipath else config.rootpath

        def path(name: str) -> Path | None:
            given = config.getoption(name, None)
            if given:
                return here / given
            written = config.getini(name)
            return ini_dir / written if written else None

        return cls(
            db=path("tunebench_db") or here / default_db(),
            overrides=(*config.getini("tunebench_overrides"), *(config.getoption("tunebench_overrides") or ())),
            baseline=config.getoption("tunebench_baseline", None) or config.getini("tunebench_baseline") or None,
            cache=config.getini("tunebench_cache") and not config.getoption("tunebench_no_cache", False),
            report=config.getini("tunebench_report") and not config.getoption("tunebench_no_report", False),
            summary=path("tunebench_summary"),
            tag=config.getoption("tunebench_tag", None) or config.getini("tunebench_tag") or None,
        )


@dataclass
class Outcome:
    """What running one suite gave: the JSON record (numbers, gates, error) and, where known, the RunResult."""

    record: dict[str, Any]
    result: Any = None
    pickled: Path | None = None
    """Where another worker left the pickled RunResult."""

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    def gate(self, name: str) -> dict[str, Any]:
        for gate in self.record.get("gates", ()):
            if gate["name"] == name:
                return gate
        raise KeyError(name)

    def run_result(self) -> Any:
        if self.result is None and self.pickled is not None:
            with open(self.pickled, "rb") as fh:  # written by a worker of this same session, just now
                self.result = pickle.load(fh)
        return self.result


@dataclass
class Runs:
    """The suites of one pytest session and their outcomes."""

    config: pytest.Config
    settings: Settings
    outcomes: dict[Path, Outcome] = field(default_factory=dict)

    def result(self, suite: str | os.PathLike[str]) -> Any:
        """The suite's RunResult (running it if needed); a harness error fails the caller."""
        path = Path(suite)
        if not path.is_absolute():
            path = self.config.rootpath / path
        outcome = self.outcome(path)
        if outcome.error:
            from ._nodes import harness_error

            raise harness_error(outcome.record.get("error_type"), outcome.error)
        result = outcome.run_result()
        if result is None:
            pytest.fail(f"{path}: the run's result is not available in this worker", pytrace=False)
        return result

    def outcome(self, suite: Path) -> Outcome:
        suite = suite.resolve()
        if suite not in self.outcomes:
            uid = _xdist_uid(self.config)
            self.outcomes[suite] = self._shared(suite, uid) if uid else self._run(suite)
        return self.outcomes[suite]

    def load_error(self, suite: Path, message: str) -> None:
        """A suite that could not even be collected: keep it for the summary (shared under xdist)."""
        suite = suite.resolve()
        outcome = Outcome(error_record(self.config, suite, message))
        self.outcomes[suite] = outcome
        uid = _xdist_uid(self.config)
        if uid:
            folder = _folder(uid)
            _write_atomic(folder / f"{_key(suite)}.json", json.dumps(outcome.record).encode())

    def _shared(self, suite: Path, uid: str) -> Outcome:
        folder = _folder(uid)
        key = _key(suite)
        record_path, pickled = folder / f"{key}.json", folder / f"{key}.pickle"
        with file_lock(folder / f"{key}.lock"):
            if record_path.exists():
                return Outcome(json.loads(record_path.read_text(encoding="utf-8")),
                               pickled=pickled if pickled.exists() else None)
            outcome = self._run(suite)
            if outcome.result is not None:
                _write_atomic(pickled, pickle.dumps(outcome.result, protocol=pickle.HIGHEST_PROTOCOL))
            _write_atomic(record_path, json.dumps(outcome.record, default=str).encode())
            return outcome

    def _run(self, suite: Path) -> Outcome:
        from tunebench import api
        from tunebench.errors import TunebenchError

        from ._report import build_record

        s = self.settings
        with file_lock(s.db.parent / ".cache" / f"{s.db.name}.lock"):
            try:
                result = api.run(api.RunConfig(suite=suite, db=s.db, write_report=s.report, overrides=s.overrides,
                                               cache=s.cache, baseline=per_suite(s.baseline, suite)))
                record = build_record(self.config, suite, result)
                if s.tag:
                    record["tag"] = _tag(result, per_suite(s.tag, suite))
                return Outcome(record, result)
            except TunebenchError as exc:
                return Outcome(error_record(self.config, suite, str(exc), type(exc).__name__))
            except Exception as exc:  # a bug: record it so other workers do not retry, then show the traceback
                outcome = Outcome(error_record(self.config, suite, f"internal error: {type(exc).__name__}: {exc}",
                                               "InternalError"))
                self.outcomes[suite] = outcome
                uid = _xdist_uid(self.config)
                if uid:
                    _write_atomic(_folder(uid) / f"{_key(suite)}.json", json.dumps(outcome.record).encode())
                raise


def per_suite(ref: str | None, suite: Path) -> str | None:
    """``production-{suite}`` → ``production-insurance``: a tag names one run, so each suite gets its own."""
    if ref is None or "{suite}" not in ref:
        return ref
    from tunebench.suite import load_suite

    return ref.replace("{suite}", load_suite(suite).suite.name)


def _tag(result: Any, tag: str) -> dict[str, Any]:
    """Promote: point ``tag`` at the run when it completed and every gate passed."""
    failed = [g.name for g in result.gates if not g.passed]
    if failed or result.summary.status != "completed":
        return {"name": tag, "applied": False,
                "reason": f"{len(failed)} gate(s) failed" if failed else f"run {result.summary.status}"}
    from tunebench.store import Store

    with Store.open(result.db) as store:
        store.tag_run(result.run_id, tag)
    return {"name": tag, "applied": True}


def get_runs(config: pytest.Config) -> Runs:
    if RUNS_KEY not in config.stash:
        config.stash[RUNS_KEY] = Runs(config, Settings.from_config(config))
    return config.stash[RUNS_KEY]


def error_record(config: pytest.Config, suite: Path, message: str, kind: str = "ConfigError") -> dict[str, Any]:
    return {"version": 1, "suite": display_path(config, suite), "name": suite.stem, "error": message,
            "error_type": kind, "gates": []}


def display_path(config: pytest.Config, path: Path) -> str:
    try:
        return path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return str(path)


def gather_records(config: pytest.Config) -> list[dict[str, Any]]:
    """Every suite outcome of the session: this process's, and under xdist the workers' shared ones."""
    records: dict[str, dict[str, Any]] = {}
    runs = config.stash.get(RUNS_KEY, None)
    if runs is not None:
        for outcome in runs.outcomes.values():
            records[outcome.record["suite"]] = outcome.record
    uid = config.stash.get(XDIST_UID_KEY, None)
    if uid is not None and _shared_dir(uid).is_dir():
        for path in sorted(_shared_dir(uid).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            records.setdefault(record["suite"], record)
    return [records[k] for k in sorted(records)]


def _xdist_uid(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("testrunuid") if workerinput else None


def _folder(uid: str) -> Path:
    folder = _shared_dir(uid)
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _key(suite: Path) -> str:
    return hashlib.sha256(str(suite).encode()).hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed); waits as long as another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        _lock(fh)
        try:
            yield
        finally:
            _unlock(fh)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fh: Any) -> None:
        while True:
            try:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                return
            except OSError:
                time.sleep(0.1)

    def _unlock(fh: Any) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)

    def _unlock(fh: Any) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
