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
from typing import TYPE_CHECKING, Any

from . import __version__
from .cache import ResponseCache
from .cases import Selection, open_cases
from .compare import RunSummary, comparison_warnings, summarize
from .errors import RunIncompleteError
from .execute import ExecStats, execute
from .plan import Job, Plan, build_plan
from .records import Aggregate, Output
from .score import score_outputs
from .suite import LoadedSuite, load_suite

if TYPE_CHECKING:  # numpy-backed statistics load only when a run reaches the comparison
    from . import stats
    from .gates import GateResult
    from .paired import Comparison

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
    baseline: str | None = None
    """Compare the candidate with a stored run (run id, prefix, tag such as ``production``, or ``latest``)
    instead of with this run's baseline model; that run is not queried again."""
    seed: int = 0
    """Seed of the bootstrap resamples."""
    progress: Callable[[int, int, Output], None] | None = None
    """Called with (done, total, output) after every output (on the event loop thread)."""


@dataclass
class RunResult:
    """What a run produced."""

    run_id: str
    summary: RunSummary
    db: Path
    report: Path | None
    requests: ExecStats
    """Requests sent, served from the cache, skipped (resume), failed."""
    resumed: bool = False
    comparison: Comparison | None = None
    """Baseline × candidate, case by case (None when the suite has a single model and no --baseline)."""
    gates: list[GateResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when every gate passed, 1 otherwise."""
        return 1 if any(not g.passed for g in self.gates) else 0

    def metric(self, model: str, name: str) -> Aggregate:
        """A model's aggregate for a metric: ``run.metric("tuned", "rougeL").value``."""
        try:
            return self.summary.aggregates[model][name]
        except KeyError:
            raise KeyError(f"no aggregate for model {model!r}, metric {name!r}; models: "
                           f"{', '.join(self.summary.aggregates)}") from None

    def flips(self, metric: str) -> stats.Flips:
        """Cases that passed on the baseline and fail on the candidate (``.regressions``), and the reverse."""
        from . import stats

        if self.comparison is None or metric not in self.comparison.metrics:
            return stats.Flips((), ())
        return self.comparison.metrics[metric].flips

    def gate(self, name: str) -> GateResult:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(f"no gate {name!r}; gates: {', '.join(g.name for g in self.gates)}")

    def to_json(self) -> dict[str, Any]:
        return {**self.summary.to_json(), "db": str(self.db),
                "comparison": self.comparison.to_json() if self.comparison else None,
                "gates": [g.to_json() for g in self.gates],
                "report": str(self.report) if self.report else None,
                "requests": {"sent": self.requests.sent, "cached": self.requests.cached,
                             "skipped": self.requests.skipped, "errors": self.requests.errors},
                "resumed": self.resumed}


def prepare(config: RunConfig) -> tuple[LoadedSuite, Plan, list[Job] | None]:
    """Load and check everything that needs no model: the suite, cases, options, every rendered prompt."""
    loaded = load_suite(config.suite)
    cases = open_cases(loaded, config.selection)
    if not len(cases):
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
    loaded, plan, _ = prepare(config)
    suite = loaded.suite
    db_path = config.db or default_db()
    cache = ResponseCache(_cache_dir(config) / "responses.sqlite")
    opened = _Opened(config, loaded, plan, db_path)
    try:
        # A resumed run must know what is done before any job starts, and a baseline reference is checked before
        # any request goes out. Otherwise the store opens on the writer thread while the first requests fly.
        if config.resume or config.baseline:
            opened()
        total = sum(m.config.repeats for m in plan.models.values()) * len(plan.cases)
        skip = opened.store.done_jobs(opened.run_id) if opened.resumed else set()
        done = [len(skip)]

        def sink(items: list[tuple[Job, Output]]) -> None:
            store, outputs = opened.store, [out for _, out in items]
            if store is None:  # the store did not open: that error ends the run (responses are in the cache)
                return
            # A new run writes each output (and its scores) once: nothing stored to replace, so nothing to look up.
            store.add_outputs(opened.run_id, outputs, replace=opened.resumed)
            store.add_scores(opened.run_id, score_outputs(plan.metrics, [(job.case, out) for job, out in items]),
                             replace=opened.resumed)
            cache.put_many([(job.key, _response(out), out.latency_ms) for job, out in items
                            if out.error is None and not out.cached])

        def progress(output: Output) -> None:
            done[0] += 1
            if config.progress is not None:
                config.progress(done[0], total, output)

        try:
            exec_stats = asyncio.run(execute(plan.models, plan.jobs_for, sink, cache=cache, read_cache=config.cache,
                                             skip=skip, progress=progress,
                                             prologue=None if opened.store is not None else opened))
        except KeyboardInterrupt:
            if opened.store is not None:
                opened.store.finish_run(opened.run_id, "interrupted")
            raise
        store, run_id = opened.store, opened.run_id
        if store is None:  # nothing ran: every job was skipped before the writer had anything to do
            opened()
            store, run_id = opened.store, opened.run_id
        _aggregate(store, run_id, plan)
        summary = summarize(store, run_id)
        from .gates import evaluate_gates

        comparison = _compare(store, run_id, summary, plan, opened.baseline_run, config.seed)
        verdict = comparison.to_json() if comparison else None
        _warn(summary, verdict)
        wanted = {t for g in suite.gates if (t := getattr(g, "tag", None))}  # only tag gates need case tags
        tags_of = {c.id: c.tags for c in plan.cases if wanted.intersection(c.tags)} if wanted else {}
        gates = evaluate_gates(list(suite.gates), summary, comparison, tags_of)
        gate_results = [g.to_json() for g in gates]
        store.add_verdict(run_id, verdict, gate_results)
        failed_models = [m for m in summary.models if summary.outputs.get(m) and
                         summary.errors.get(m) == summary.outputs.get(m)]
        status = "failed" if failed_models else "completed"
        store.finish_run(run_id, status)
        summary.status = status
        report = None
        if config.write_report:
            from .render import render_run

            report = render_run(store, run_id, config.report or _report_path(db_path, suite.name, run_id),
                                summary, verdict, gate_results)
    finally:
        cache.close()
        if opened.store is not None:
            opened.store.close()
    result = RunResult(run_id, summary, db_path, report, exec_stats, opened.resumed, comparison, gates)
    if failed_models:
        raise RunIncompleteError(
            f"every request failed for {', '.join(failed_models)} (run {run_id}); first error: "
            f"{_first_error(db_path, run_id)}", ) from None
    return result


class _Opened:
    """Opens the store and starts (or resumes) the run, once; called on the writer thread or up front."""

    def __init__(self, config: RunConfig, loaded: LoadedSuite, plan: Plan, db_path: Path) -> None:
        self.config, self.loaded, self.plan, self.db_path = config, loaded, plan, db_path
        self.store: Any = None
        self.run_id = ""
        self.resumed = False
        self.baseline_run: str | None = None

    def __call__(self) -> None:
        if self.store is not None:
            return
        from .store import Store

        # One DuckDB thread: a run writes small batches from one writer thread and reads little; a thread per
        # core would cost ~5 MB of buffers and buy nothing here.
        store = Store.open(self.db_path, threads=1)
        try:
            # resolved before this run exists, so 'latest' means the latest run before this one (of this suite)
            if self.config.baseline:
                self.baseline_run = store.resolve_run(self.config.baseline, suite=self.loaded.suite.name)
            self.run_id, self.resumed = _start(store, self.config, self.loaded, self.plan)
        except BaseException:
            store.close()
            raise
        self.store = store


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
            store.resume_run(previous["run_id"])
            return previous["run_id"], True
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
            "description": suite.description,
        },
        "baseline": suite.baseline_model,
        "candidate": suite.candidate_model,
    })
    store.add_models(run_id, [{"model": m.name, "runner": m.config.runner, "identity": m.identity,
                               "identity_hash": m.identity_hash} for m in plan.models.values()])
    store.add_cases(run_id, plan.cases)
    store.add_metrics(run_id, [{"metric": name, "kind": metric.kind, "config": metric.describe(),
                                "higher_is_better": metric.higher_is_better}
                               for name, metric in plan.metrics.items()])
    return run_id, False


def _compare(store: Any, run_id: str, summary: RunSummary, plan: Plan, baseline_run: str | None,
             seed: int) -> Comparison | None:
    """Baseline × candidate: this run's two models, or a stored run's candidate × this run's candidate."""
    from .paired import Side, compare_sides


    candidate = summary.candidate
    directions = {name: m.higher_is_better for name, m in plan.metrics.items()}
    if baseline_run is not None:
        other = baseline_run
        other_run = store.get_run(other)
        model = other_run.get("candidate") or other_run.get("baseline")
        a, b = Side(other, model), Side(run_id, candidate or summary.baseline or "")
    elif summary.baseline and candidate:
        a, b = Side(run_id, summary.baseline), Side(run_id, candidate)
    else:
        return None
    return compare_sides(store, a, b, directions, seed=seed,
                         labelled={name for name, m in plan.metrics.items() if m.labelled})


def _warn(summary: RunSummary, comparison: dict[str, Any] | None) -> None:
    """Add what the comparison (in its stored form) warns of to the summary's warnings."""
    if comparison is not None:
        a, b = comparison["baseline"], comparison["candidate"]
        baseline = a["model"] if a["run_id"] == b["run_id"] else f"{a['model']}@{a['run_id']}"
        first, last = comparison_warnings(comparison, baseline, b["model"])
        summary.warnings = [*first, *summary.warnings, *last]


def _report_path(db_path: Path, suite_name: str, run_id: str) -> Path:
    return db_path.parent / f"{suite_name}-{run_id}.html"


def _aggregate(store: Any, run_id: str, plan: Plan) -> None:
    from .metrics import Metric, mean_aggregate

    rows = []
    for model in plan.models:
        for name, metric in plan.metrics.items():
            if type(metric).aggregate is Metric.aggregate:  # the mean reads values and passes only, as arrays
                aggregate = mean_aggregate(*store.score_values(run_id, model, name))
            else:
                aggregate = metric.aggregate([s for *_, s in store.get_scores(run_id, model=model, metric=name)])
            rows.append((model, name, aggregate))
    store.add_aggregates(run_id, rows)


@dataclass(frozen=True)
class CompareConfig:
    """Compare two stored runs: the baseline run's model against the candidate run's model."""

    baseline: str
    """Run reference: id, unique prefix, tag (``production``) or ``latest``."""
    candidate: str
    db: Path | None = None
    baseline_model: str | None = None
    """Default: the baseline run's candidate model (what it would have promoted)."""
    candidate_model: str | None = None
    """Default: the candidate run's candidate model."""
    suite: str | None = None
    """Resolve tags and ``latest`` among this suite's runs (tags are per suite)."""
    report: Path | None = None
    """HTML comparison report; default ``reports/compare-<a>-<b>.html``."""
    write_report: bool = True
    seed: int = 0


@dataclass
class CompareResult:
    comparison: Comparison
    report: Path | None

    def to_json(self) -> dict[str, Any]:
        return {**self.comparison.to_json(), "report": str(self.report) if self.report else None}


def compare_runs(config: CompareConfig) -> CompareResult:
    """Paired comparison of two stored runs (no model is queried), with an HTML report."""
    from .paired import Side, compare_sides
    from .store import Store

    db_path = config.db or default_db()
    with Store.open(db_path, read_only=not config.write_report) as store:
        a_id = store.resolve_run(config.baseline, suite=config.suite)
        b_id = store.resolve_run(config.candidate, suite=config.suite)
        a_run, b_run = store.get_run(a_id), store.get_run(b_id)
        a = Side(a_id, config.baseline_model or a_run.get("candidate") or a_run.get("baseline"))
        b = Side(b_id, config.candidate_model or b_run.get("candidate") or b_run.get("baseline"))
        for side in (a, b):
            models = [m["model"] for m in store.get_models(side.run_id)]
            if side.model not in models:
                from .errors import ConfigError

                raise ConfigError(f"run {side.run_id} has no model {side.model!r}; it has {', '.join(models)}")
        directions = {m["metric"]: bool(m["higher_is_better"]) for m in store.get_metrics(b_id)}
        directions = {k: v for k, v in directions.items()
                      if k in {m["metric"] for m in store.get_metrics(a_id)}}
        comparison = compare_sides(store, a, b, directions, seed=config.seed)
        report = None
        if config.write_report:
            from .render import render_comparison

            report = render_comparison(store, comparison,
                                       config.report or db_path.parent / f"compare-{a_id}-{b_id}.html")
    return CompareResult(comparison, report)


@dataclass(frozen=True)
class ReportConfig:
    """Write a stored run's report again."""

    run: str = "latest"
    """Run reference: id, unique prefix, tag (``production``) or ``latest``."""
    db: Path | None = None
    suite: str | None = None
    """Resolve tags and ``latest`` among this suite's runs (tags are per suite)."""
    report: Path | None = None
    """HTML report path; default the one ``tunebench run`` wrote: ``<suite>-<run id>.html`` next to the store."""


def report_run(config: ReportConfig) -> Path:
    """Write the HTML report of a stored run (with its ``.md`` and ``.json``) from the store alone, as the run wrote
    it: no model is queried and nothing is recomputed (the comparison and gate results are the ones the run stored).
    Returns the HTML path."""
    from .render import render_run
    from .store import Store

    db_path = config.db or default_db()
    with Store.open(db_path, read_only=True) as store:
        run_id = store.resolve_run(config.run, suite=config.suite)
        summary = summarize(store, run_id)
        comparison, gates = store.get_verdict(run_id)
        _warn(summary, comparison)
        return render_run(store, run_id, config.report or _report_path(db_path, summary.suite_name, run_id),
                          summary, comparison, gates)


def history(db: Path | None = None, *, suite: str | None = None, limit: int | None = 20) -> list[dict[str, Any]]:
    """Runs, newest first: id, suite, times, status, tags, models, headline metric per model, gate status."""
    from .store import Store

    path = db or default_db()
    if not Path(path).exists():
        return []
    with Store.open(path, read_only=True) as store:
        rows = []
        for run in store.list_runs(suite_name=suite, limit=limit):
            run_id = run["run_id"]
            aggs: dict[str, dict[str, float | None]] = {}
            for model, metric, agg in store.get_aggregates(run_id):
                aggs.setdefault(model, {})[metric] = agg.value
            gates = store.get_gate_results(run_id)
            rows.append({
                "run_id": run_id, "suite": run["suite_name"], "started_at": run.get("started_at"),
                "finished_at": run.get("finished_at"), "status": run["status"], "tags": store.tags_of(run_id),
                "models": [m["model"] for m in store.get_models(run_id)], "metrics": aggs,
                "gates": {"passed": sum(1 for g in gates if g["passed"]),
                          "failed": sum(1 for g in gates if not g["passed"])},
            })
    return rows
