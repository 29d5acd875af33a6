"""The weekly quality report: what the run history in the store says about the last days, as one HTML file.

``weekly_report(WeeklyConfig(db=…, out=…))`` reads the store read-only and writes a self-contained page: per
suite and metric the candidate's trend with the paired interval band, the promoted (tagged) runs, newly
failing cases with the run they first failed in, the most unstable cases, and cases added or removed.

Definitions (the docs and the page use the same words):
- A suite's *runs* are those that finished (``completed``, or ``failed`` when some model failed) and started
  in ``[since, until)``. Runs still ``running`` or ``interrupted`` are counted and listed, never plotted.
- A run's *candidate* is ``runs.candidate``, else its last model; its *baseline* is ``runs.baseline``.
- A case *fails* a metric in a run when the candidate's majority pass/fail over repeats is fail, or when it
  has no pass/fail but a score error (an error output). Metrics without a threshold say nothing about it.
- *First seen failing*: the earliest run of the unbroken streak of failing runs that ends at the suite's last
  run in the period, looking back before ``since`` through the whole history (a run that did not score the
  case neither breaks nor extends a streak). A case is *newly failing* when that streak started inside the
  period after a pass, or in a case added after the first run on record; otherwise it is *still failing*
  (since before the period, or since the first run on record).
- *Unstable*: pass/fail changed at least twice between consecutive runs in the period (pass → fail → pass or
  the reverse), ranked by the number of changes.
- *New* and *removed* cases: case ids in the period's last run and not its first, and the reverse; *changed*
  cases kept their id but not their content hash.

Invariants: the store is only read; an empty or one-run period yields a page and a ``message`` saying so,
never an exception; a missing store is a ``StoreError`` naming the file; every text from the store is
untrusted and escaped by the renderer (``report/weekly_html.py``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["CaseTrack", "MetricTrend", "RunInfo", "SuiteHistory", "WeeklyConfig", "WeeklyData", "WeeklyResult",
           "parse_when", "weekly_report"]

DEFAULT_DAYS = 7
PLOTTED_STATUSES = ("completed", "failed")
MAX_LISTED = 50
"""Rows per case table (the counts are always complete)."""


@dataclass(frozen=True, kw_only=True)
class WeeklyConfig:
    """What ``weekly_report`` reads and writes."""

    db: Path
    """The DuckDB store."""
    out: Path
    """The HTML file to write (its folder is created)."""
    since: datetime | None = None
    """Start of the period (inclusive); default ``until`` minus 7 days. Naive datetimes are UTC."""
    until: datetime | None = None
    """End of the period (exclusive); default now."""
    suite: str | None = None
    """Only this suite; default every suite with runs in the period."""


@dataclass
class RunInfo:
    """One run of a suite, as the weekly report shows it."""

    run_id: str
    started_at: datetime
    status: str
    baseline: str | None
    candidate: str | None
    models: list[str]
    tags: list[str]
    """Tags pointing at it now."""
    gates_passed: int = 0
    gates_total: int = 0
    in_period: bool = True


@dataclass
class TrendPointData:
    """One run's numbers for one metric."""

    run_id: str
    started_at: datetime
    candidate: float | None
    baseline: float | None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    verdict: str | None = None
    model: str = ""

    @property
    def band(self) -> tuple[float, float] | None:
        """The paired interval of candidate − baseline moved onto the candidate's value (see charts)."""
        if None in (self.candidate, self.delta, self.ci_low, self.ci_high):
            return None
        return (self.candidate - self.delta + self.ci_low,  # type: ignore[operator]
                self.candidate - self.delta + self.ci_high)  # type: ignore[operator]


@dataclass
class MetricTrend:
    """A metric's trend over the period."""

    metric: str
    higher_is_better: bool
    points: list[TrendPointData]

    @property
    def change(self) -> float | None:
        """Last − first candidate value over the period."""
        known = [p.candidate for p in self.points if p.candidate is not None]
        return known[-1] - known[0] if len(known) >= 2 else None

    @property
    def direction(self) -> str:
        change = self.change
        if change is None or abs(change) < 1e-12:
            return "same" if change is not None else "none"
        return "better" if (change > 0) == self.higher_is_better else "worse"


@dataclass
class CaseTrack:
    """One case × metric on the candidate across runs."""

    case_id: str
    metric: str
    statuses: list[tuple[str, str]]
    """(run id, ``P``/``F``/``E``, or ``-`` when the run did not score it) for every period run, oldest first."""
    first_seen: RunInfo | None = None
    """The first run on record that scored it."""
    first_failing: RunInfo | None = None
    """Start of the current failing streak (possibly before the period)."""
    streak: int = 0
    """Runs in the current failing streak."""
    last_passed: RunInfo | None = None
    """The last run it passed in, before the streak; None when it never passed."""
    changes: int = 0
    """Pass/fail changes between consecutive period runs."""


@dataclass
class SuiteHistory:
    """Everything the weekly page shows for one suite."""

    suite: str
    runs: list[RunInfo]
    """Plotted runs of the period, oldest first."""
    incomplete: list[RunInfo]
    trends: list[MetricTrend]
    promotions: list[dict[str, Any]]
    """Tag events: tag, run_id, tagged_at, run_started_at, current."""
    newly_failing: list[CaseTrack] = field(default_factory=list)
    still_failing: list[CaseTrack] = field(default_factory=list)
    """Failing at the end of the period since before it began (or since the first run on record)."""
    unstable: list[CaseTrack] = field(default_factory=list)
    new_cases: list[str] = field(default_factory=list)
    removed_cases: list[str] = field(default_factory=list)
    changed_cases: list[str] = field(default_factory=list)
    message: str | None = None
    """Why parts are missing (one run only, no pass/fail metrics)."""


@dataclass
class WeeklyData:
    """The weekly report's input: the period and its suites."""

    db: Path
    since: datetime
    until: datetime
    suite_filter: str | None
    suites: list[SuiteHistory]
    generated_at: datetime
    message: str | None = None
    """Set when there is nothing (or too little) to show."""


@dataclass
class WeeklyResult:
    """What ``weekly_report`` wrote."""

    path: Path
    since: datetime
    until: datetime
    runs: int
    """Plotted runs in the period, all suites."""
    suites: list[str]
    newly_failing: int
    message: str | None
    """A sentence for the CLI when the history is empty or has one run; None otherwise."""

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "since": self.since.isoformat(), "until": self.until.isoformat(),
                "runs": self.runs, "suites": self.suites, "newly_failing": self.newly_failing,
                "message": self.message}


# ---- periods ------------------------------------------------------------------------------------------------

_SPAN = re.compile(r"^\s*(\d+)\s*([hdw])\s*$", re.I)


def parse_when(text: str, *, now: datetime | None = None, option: str = "--since") -> datetime:
    """A point in time from ``7d``/``24h``/``2w`` (that long before ``now``) or an ISO date/datetime (UTC unless
    it names a zone). Anything else is a ``ConfigError`` naming the option."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text)
    if match:
        amount, unit = int(match.group(1)), match.group(2).lower()
        return now - timedelta(hours=amount) * {"h": 1, "d": 24, "w": 24 * 7}[unit]
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} is neither a span nor a date",
                          hint="write a span such as 7d, 24h or 2w, or a date such as 2025-01-31") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _period(config: WeeklyConfig) -> tuple[datetime, datetime]:
    def utc(value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    until = utc(config.until) or datetime.now(UTC)
    since = utc(config.since) or until - timedelta(days=DEFAULT_DAYS)
    if since >= until:
        raise ConfigError(f"the period is empty: it starts {since:%Y-%m-%d %H:%M} and ends {until:%Y-%m-%d %H:%M} "
                          "UTC", hint="give --since (or --from) before --to")
    return since, until


# ---- reading the store --------------------------------------------------------------------------------------


def _run_info(store: Any, run: dict[str, Any], in_period: bool) -> RunInfo:
    models = [m["model"] for m in store.get_models(run["run_id"])]
    candidate = run.get("candidate") or (models[-1] if models else None)
    return RunInfo(run["run_id"], run["started_at"], run["status"], run.get("baseline"), candidate, models,
                   list(run.get("tags") or []), in_period=in_period)


def _verdict(store: Any, run_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The stored comparison and gate results (``Store.get_verdict`` when the store has it)."""
    if hasattr(store, "get_verdict"):
        return store.get_verdict(run_id)
    return store.get_comparison(run_id), store.get_gate_results(run_id)


def _trends(store: Any, runs: list[RunInfo]) -> list[MetricTrend]:
    directions: dict[str, bool] = {}
    points: dict[str, list[TrendPointData]] = {}
    for run in runs:
        for m in store.get_metrics(run.run_id):
            directions.setdefault(m["metric"], bool(m["higher_is_better"]))
        values: dict[tuple[str, str], float | None] = {
            (model, metric): agg.value for model, metric, agg in store.get_aggregates(run.run_id)}
        comparison, gates = _verdict(store, run.run_id)
        run.gates_total, run.gates_passed = len(gates), sum(1 for g in gates if g.get("passed"))
        paired = (comparison or {}).get("metrics") or {}
        for metric in directions:
            if (run.candidate or "", metric) not in values and (run.baseline or "", metric) not in values:
                continue  # the metric was not part of this run
            cand = values.get((run.candidate or "", metric))
            base = values.get((run.baseline or "", metric)) if run.baseline else None
            point = TrendPointData(run.run_id, run.started_at, cand, base, model=run.candidate or "")
            pm = paired.get(metric) if isinstance(paired, dict) else None
            if isinstance(pm, dict):
                point.delta, point.ci_low, point.ci_high = pm.get("delta"), pm.get("ci_low"), pm.get("ci_high")
                point.verdict = pm.get("verdict")
            points.setdefault(metric, []).append(point)
    return [MetricTrend(metric, directions[metric], pts) for metric, pts in points.items()]


def _promotions(store: Any, suite: str, runs: list[RunInfo], since: datetime,
                until: datetime) -> list[dict[str, Any]]:
    # A run promoted inside the period, or a run of the period tagged at any time (run_tags keeps history).
    # Read through Store.query (the store still owns the connection); a Store.tag_history method could own it.
    rows = store.query(
        "SELECT t.tag, t.run_id, t.tagged_at, r.started_at, "
        "EXISTS (SELECT 1 FROM current_tags c WHERE c.tag = t.tag AND c.run_id = t.run_id) AS current "
        "FROM run_tags t JOIN runs r ON r.run_id = t.run_id "
        "WHERE r.suite_name = $suite AND ((t.tagged_at >= $since AND t.tagged_at < $until) "
        "OR list_contains($runs, t.run_id)) ORDER BY t.tagged_at, t.tag",
        {"suite": suite, "since": since, "until": until, "runs": [r.run_id for r in runs] or [""]})
    return [{"tag": r["tag"], "run_id": r["run_id"], "tagged_at": r["tagged_at"], "run_started_at": r["started_at"],
             "current": bool(r["current"])} for r in rows]


_STATUS_SQL = """
WITH sides AS (SELECT unnest($runs) AS run_id, unnest($models) AS model, unnest($idx) AS idx),
per_run AS (
    SELECT s.case_id, s.metric, d.idx,
           CASE WHEN count(s.passed) > 0 THEN
                    CASE WHEN 2 * count(*) FILTER (WHERE s.passed) >= count(s.passed) THEN 'P' ELSE 'F' END
                WHEN bool_or(s.error IS NOT NULL) THEN 'E' END AS status
    FROM scores s JOIN sides d ON d.run_id = s.run_id AND d.model = s.model
    GROUP BY s.case_id, s.metric, d.idx)
SELECT case_id, metric, list(idx ORDER BY idx) AS runs, string_agg(status, '' ORDER BY idx) AS statuses
FROM per_run WHERE status IS NOT NULL GROUP BY case_id, metric ORDER BY case_id, metric
"""


def _case_tracks(store: Any, history: list[RunInfo], first_period: int) -> list[CaseTrack]:
    """Track every case × pass/fail metric of the candidate over ``history`` (oldest first); runs from index
    ``first_period`` on are in the period. One query returns one compact status string per case × metric."""
    # Read through Store.query; a Store.case_statuses method could own this SQL.
    sides = [(i, r) for i, r in enumerate(history) if r.candidate]
    if not sides:
        return []
    rows = store.query(_STATUS_SQL, {"runs": [r.run_id for _, r in sides],
                                     "models": [r.candidate for _, r in sides], "idx": [i for i, _ in sides]})
    # Only metrics with pass/fail say whether a case fails; on the others an error output alone would look
    # like a failure that never passed.
    judged = {row["metric"] for row in rows if "P" in row["statuses"] or "F" in row["statuses"]}
    last = len(history) - 1
    tracks = []
    for row in rows:
        if row["metric"] not in judged:
            continue
        idx, statuses = row["runs"], row["statuses"]
        by_run = dict(zip(idx, statuses, strict=True))
        if not any(i >= first_period for i in idx):
            continue
        period = [(history[i].run_id, by_run.get(i, "-")) for i in range(first_period, len(history))]
        scored = [st for _, st in period if st != "-"]
        track = CaseTrack(row["case_id"], row["metric"], period, first_seen=history[idx[0]])
        track.changes = sum(1 for a, b in itertools.pairwise(scored) if (a == "P") != (b == "P"))
        if idx[-1] == last and statuses[-1] != "P":
            k = len(statuses) - 1
            while k > 0 and statuses[k - 1] != "P":
                k -= 1  # a run that did not score the case (--limit, a filter) neither breaks nor extends it
            track.first_failing = history[idx[k]]
            track.streak = len(statuses) - k
            if k > 0:
                track.last_passed = history[idx[k - 1]]
        tracks.append(track)
    return tracks


def _is_new_failure(track: CaseTrack, first_run: RunInfo) -> bool:
    """The failing streak began in the period, after a pass or in a case added after the first run on record."""
    start = track.first_failing
    if start is None or not start.in_period:
        return False
    return track.last_passed is not None or track.first_seen is not first_run


def _suite_history(store: Any, suite: str, since: datetime, until: datetime) -> SuiteHistory | None:
    everything = list(reversed(store.list_runs(suite_name=suite, until=until)))  # oldest first
    period_runs = [r for r in everything if r["started_at"] >= since]
    if not period_runs:
        return None
    plotted = [r for r in everything if r["status"] in PLOTTED_STATUSES]
    history = [_run_info(store, r, r["started_at"] >= since) for r in plotted]
    runs = [r for r in history if r.in_period]
    incomplete = [_run_info(store, r, True) for r in period_runs if r["status"] not in PLOTTED_STATUSES]
    result = SuiteHistory(suite, runs, incomplete, _trends(store, runs), _promotions(store, suite, runs, since, until))
    if not runs:
        result.message = "No run of this suite finished in this period."
        return result
    tracks = _case_tracks(store, history, len(history) - len(runs))
    def key(t):
        return ((t.first_failing.started_at if t.first_failing else since, t.case_id, t.metric))
    failing = [t for t in tracks if t.first_failing is not None]
    result.newly_failing = sorted((t for t in failing if _is_new_failure(t, history[0])), key=key, reverse=True)
    result.still_failing = sorted((t for t in failing if not _is_new_failure(t, history[0])), key=key)
    result.unstable = sorted((t for t in tracks if t.changes >= 2), key=lambda t: (-t.changes, t.case_id, t.metric))
    first, last = store.case_hashes(runs[0].run_id), store.case_hashes(runs[-1].run_id)
    result.new_cases = [c for c in last if c not in first]
    result.removed_cases = [c for c in first if c not in last]
    result.changed_cases = [c for c in last if c in first and first[c] != last[c]]
    if len(runs) == 1:
        result.message = ("Only one run in this period: trends, instability and new or removed cases need at least "
                          "two runs.")
    elif not tracks:
        result.message = "No metric of this suite has pass/fail, so failing and unstable cases cannot be tracked."
    return result


def collect(store: Any, config: WeeklyConfig) -> WeeklyData:
    """Read the period's history from an open store."""
    since, until = _period(config)
    names = [config.suite] if config.suite else sorted(
        {r["suite_name"] for r in store.list_runs(since=since, until=until)})
    suites = [s for name in names if (s := _suite_history(store, name, since, until)) is not None]
    data = WeeklyData(Path(store.path), since, until, config.suite, suites, datetime.now(UTC))
    n_runs = sum(len(s.runs) for s in suites)
    where = f"suite {config.suite!r}" if config.suite else "any suite"
    span = f"{since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M} UTC"
    if not suites:
        data.message = f"No runs of {where} started between {span} in {store.path}."
    elif n_runs == 0:
        data.message = f"No run of {where} finished between {span}; runs still in progress are listed below."
    elif n_runs == 1:
        data.message = (f"Only one run of {where} between {span}: the report shows it, but trends need at least "
                        "two runs.")
    return data


def weekly_report(config: WeeklyConfig) -> WeeklyResult:
    """Read the history in ``config.db`` and write the weekly HTML report to ``config.out``."""
    from .report.weekly_html import render_weekly
    from .store import Store

    with Store.open(config.db, read_only=True) as store:
        data = collect(store, config)
    path = render_weekly(data, Path(config.out))
    return WeeklyResult(path, data.since, data.until, sum(len(s.runs) for s in data.suites),
                        [s.suite for s in data.suites], sum(len(s.newly_failing) for s in data.suites), data.message)
