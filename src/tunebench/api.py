"""The one Python API behind the CLI and the pytest plugin.

``run(RunConfig)`` goes suite → plan → execute → score → store → compare → render. Invariants: everything that
can be checked without a model (suite, golden files, templates for every case, runner and metric options) is
checked before the store is touched, so bad input writes nothing; outputs and scores are persisted as they
arrive; a run is ``running`` until it ends ``completed``, ``failed`` or ``interrupted``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .cache import ResponseCache
from .cases import Selection, case_hash, load_cases, select_cases
from .compare import RunSummary, summarize
from .errors import RunIncompleteError
from .execute import ExecStats, execute
from .plan import Job, Plan, build_plan
from .records import Output
from .score import score_outputs
from .suite import LoadedSuite, load_suite

__all__ = ["RunConfig", "RunResult", "default_db", "run", "validate"]


def default_db() -> Path:
    """``$TUNEBENCH_DB`` or ``reports/tunebench.duckdb`` under the current directory."""
    return Path(os.environ.get("TUNEBENCH_DB", "reports/tunebench.duckdb"))


@dataclass(frozen=True)
class RunConfig:
    """What to run and where to put it."""

    suite: Path
    """The suite YAML file."""
    db: Path | None = None
    """DuckDB store; default :func:`default_db`."""
    report: Path | None = None
    """HTML report path; default ``reports/<suite>-<run id>.html`` next to the store."""
    write_report: bool = True
    selection: Selection = field(default_factory=Selection)
    overrides: tuple[str, ...] = ()
    """``MODEL.SETTING=VALUE`` overrides of model settings, recorded with the run."""
    cache: bool = True
    """Read the response cache (``--no-cache`` sends every request again; answers are still cached)."""
    cache_dir: Path | None = None
    """Response and embedding caches; default ``.cache/`` beside the store."""
    resume: bool = False
    """Continue the latest unfinished run of this suite (same suite content) instead of starting a new one."""
    progress: Callable[[int, int, Output], None] | None = None
    """Called with (done, total, output) after every output (on the event loop thread)."""


@dataclass
class RunResult:
    """What a run produced."""

    run_id: str
    summary: RunSummary
    db: Path
    report: Path | None
    stats: ExecStats
    resumed: bool = False

    @property
    def exit_code(self) -> int:
        return 0

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "db": str(self.db),
                "report": str(self.report) if self.report else None,
                "requests": {"sent": self.stats.sent, "cached": self.stats.cached,
                             "skipped": self.stats.skipped, "errors": self.stats.errors},
                "resumed": self.resumed}


def prepare(config: RunConfig) -> tuple[LoadedSuite, Plan, list[Job] | None]:
    """Load and check everything that needs no model: the suite, cases, options, every rendered prompt."""
    loaded = load_suite(config.suite)
    cases = select_cases(load_cases(loaded), config.selection)
    if not cases:
        raise loaded.error(("cases",), "no case matches the selection",
                           f"filters {list(config.selection.filters)} / limit {config.selection.limit}")
    plan = build_plan(loaded, cases, overrides=config.overrides, cache_dir=_cache_dir(config))
    plan.render_all()
    for model in plan.models.values():
        model.runner.check()
    return loaded, plan, None


def validate(paths: Sequence[Path]) -> list[tuple[Path, int, int]]:
    """Check suites and the files they reference without calling a model: [(path, cases, metrics)]."""
    checked = []
    for path in paths:
        _, plan, _ = prepare(RunConfig(suite=Path(path)))
        checked.append((Path(path), len(plan.cases), len(plan.metrics)))
    return checked


def _cache_dir(config: RunConfig) -> Path:
    if config.cache_dir is not None:
        return config.cache_dir
    return (config.db or default_db()).parent / ".cache"


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def run(config: RunConfig) -> RunResult:
    """Run a suite end to end. Raises TunebenchError subclasses for bad input and incomplete runs."""
    from .store import Store

    loaded, plan, _ = prepare(config)
    suite = loaded.suite
    db_path = config.db or default_db()
    cache = ResponseCache(_cache_dir(config) / "responses.sqlite")
    with Store.open(db_path) as store:
        run_id, resumed = _start(store, config, loaded, plan)
        skip = store.done_jobs(run_id) if resumed else set()
        by_id = {c.id: c for c in plan.cases}
        total = sum(m.config.repeats for m in plan.models.values()) * len(plan.cases)
        done = [len(skip)]

        def sink(items: list[tuple[Job, Output]]) -> None:
            outputs = [out for _, out in items]
            store.add_outputs(run_id, outputs)
            store.add_scores(run_id, score_outputs(plan.metrics, [(by_id[o.case_id], o) for o in outputs]))
            cache.put_many([(job.key, _response(out), out.latency_ms) for job, out in items
                            if out.error is None and not out.cached])

        def progress(output: Output) -> None:
            done[0] += 1
            if config.progress is not None:
                config.progress(done[0], total, output)

        try:
            stats = asyncio.run(execute(plan.models, plan.jobs_for, sink, cache=cache, read_cache=config.cache,
                                        skip=skip, progress=progress))
        except KeyboardInterrupt:
            store.finish_run(run_id, "interrupted")
            cache.close()
            raise
        cache.close()
        _aggregate(store, run_id, plan)
        summary = summarize(store, run_id)
        failed_models = [m for m in summary.models if summary.outputs.get(m) and
                         summary.errors.get(m) == summary.outputs.get(m)]
        status = "failed" if failed_models else "completed"
        store.finish_run(run_id, status)
        summary.status = status
        report = None
        if config.write_report:
            from .render import render_run

            report = render_run(store, run_id, config.report or db_path.parent / f"{suite.name}-{run_id}.html",
                                summary)
    result = RunResult(run_id, summary, db_path, report, stats, resumed)
    if failed_models:
        raise RunIncompleteError(
            f"every request failed for {', '.join(failed_models)} (run {run_id}); first error: "
            f"{_first_error(db_path, run_id)}", ) from None
    return result


def _first_error(db_path: Path, run_id: str) -> str:
    from .store import Store

    with Store.open(db_path, read_only=True) as store:
        for out in store.iter_outputs(run_id):
            if out.error:
                return f"{out.model}/{out.case_id}: {out.error}"
    return "unknown"


def _response(out: Output):
    from .runners import Response

    return Response(out.text, out.prompt_tokens, out.completion_tokens, out.finish_reason)


def _start(store: Any, config: RunConfig, loaded: LoadedSuite, plan: Plan) -> tuple[str, bool]:
    suite = loaded.suite
    if config.resume:
        previous = store.find_resumable(suite.name, loaded.hash)
        if previous is not None:
            return previous, True
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    store.start_run({
        "run_id": run_id,
        "suite_name": suite.name,
        "suite_path": str(loaded.path),
        "suite_hash": loaded.hash,
        "tunebench_version": __version__,
        "git_commit": _git_commit(loaded.dir),
        "status": "running",
        "options": {
            "filters": list(config.selection.filters), "limit": config.selection.limit,
            "sample": config.selection.sample, "seed": config.selection.seed,
            "overrides": plan.overrides, "cache": config.cache, "argv": sys.argv[1:],
        },
        "baseline": suite.baseline_model,
        "candidate": suite.candidate_model,
    })
    store.add_models(run_id, [{"model": m.name, "runner": m.config.runner, "identity": m.identity,
                               "identity_hash": m.identity_hash} for m in plan.models.values()])
    store.add_cases(run_id, plan.cases, hashes=[case_hash(c) for c in plan.cases])
    store.add_metrics(run_id, [{"metric": name, "kind": metric.kind, "config": metric.describe(),
                                "higher_is_better": metric.higher_is_better}
                               for name, metric in plan.metrics.items()])
    return run_id, False


def _aggregate(store: Any, run_id: str, plan: Plan) -> None:
    rows = []
    for model in plan.models:
        for name, metric in plan.metrics.items():
            scores = [s for *_, s in store.get_scores(run_id, model=model, metric=name)]
            rows.append((model, name, metric.aggregate(scores)))
    store.add_aggregates(run_id, rows)
