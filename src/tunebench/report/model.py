"""The input of the render stage: one run's results as the renderers read them.

Invariants:
- Plain dataclasses, filled by the lead from the DuckDB store; no renderer writes to them.
- ``RunReport.cases`` may be a one-shot generator: each renderer iterates it at most once and never calls
  ``len()`` on it. Rendering several forms from one generator needs a re-iterable (a list, or an object whose
  ``__iter__`` queries the store again).
- Every text field (case text, outputs, model names, warnings, messages) is untrusted and escaped by whoever
  renders it.
- ``summary_rows`` is the one place the candidate − baseline delta and its direction are computed, so the HTML,
  Markdown and JSON forms always agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..records import Aggregate, Case, Output, Score

__all__ = ["CaseRow", "MetricInfo", "RunReport", "SummaryRow", "delta_direction", "summary_rows"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric as the report shows it."""

    name: str
    """The metric's name in the suite (``rougeL``, ``terms``)."""
    kind: str
    """The registered metric kind (``rouge``, ``glossary``)."""
    family: str
    """The metric family (``overlap``, ``classification``, ``semantic``, …)."""
    higher_is_better: bool
    """Direction: a positive candidate − baseline delta is an improvement when true."""
    threshold: float | None
    """The per-case pass threshold, if the metric has pass/fail."""


@dataclass(frozen=True)
class CaseRow:
    """One golden case with every model's first-repeat output and scores."""

    case: Case
    outputs: dict[str, Output]
    """Model → its output (first repeat); a model may be missing when its run did not complete."""
    scores: dict[str, dict[str, Score]]
    """Model → metric name → score."""
    flags: tuple[str, ...] = ()
    """Reviewer hints: ``regressed:<metric>``, ``fixed:<metric>``, ``unstable`` (set by the compare stage)."""


@dataclass
class RunReport:
    """Everything one report shows about one run."""

    run_id: str
    suite_name: str
    description: str
    started_at: str
    finished_at: str | None
    tunebench_version: str
    git_commit: str | None
    models: list[str]
    """Models in display order (baseline first by convention)."""
    baseline: str | None
    """The model deltas are measured from (usually the base model); ``None``: no deltas."""
    candidate: str | None
    """The model deltas are measured for (usually the tuned model); ``None``: no deltas."""
    metrics: list[MetricInfo]
    aggregates: dict[str, dict[str, Aggregate]]
    """Model → metric name → aggregate."""
    errors: dict[str, int]
    """Model → number of error outputs."""
    cases: Iterable[CaseRow]
    """May be a generator: renderers stream it once and never need its length."""
    warnings: list[str] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    """From the statistics stage: metric, delta, ci_low, ci_high, wins/ties/losses, p_value, verdict."""
    gates: list[dict] = field(default_factory=list)
    """From the gate stage: name, passed, message."""


@dataclass(frozen=True)
class SummaryRow:
    """One metric's line of the summary table (derived, not stored)."""

    metric: MetricInfo
    aggregates: dict[str, Aggregate | None]
    """Model → aggregate (``None`` when the model has no aggregate for this metric)."""
    delta: float | None
    """candidate − baseline of the aggregate values; ``None`` when either side is missing."""
    pass_rate_delta: float | None
    direction: str
    """``better``, ``worse``, ``same`` or ``none`` (no delta), respecting ``higher_is_better``."""
    pass_rate_direction: str = "none"
    """The same for the pass rate, where higher is always better."""


def delta_direction(delta: float | None, higher_is_better: bool) -> str:
    """``better`` / ``worse`` / ``same`` for a candidate − baseline delta; ``none`` when there is no delta."""
    if delta is None:
        return "none"
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == higher_is_better else "worse"


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _diff(a: float | None, b: float | None) -> float | None:
    a, b = _finite(a), _finite(b)
    return None if a is None or b is None else b - a


def summary_rows(report: RunReport) -> list[SummaryRow]:
    """Per metric: each model's aggregate and the candidate − baseline delta with its direction."""
    rows = []
    for info in report.metrics:
        aggs = {model: report.aggregates.get(model, {}).get(info.name) for model in report.models}
        base = aggs.get(report.baseline) if report.baseline else None
        cand = aggs.get(report.candidate) if report.candidate else None
        delta = pass_delta = None
        if base is not None and cand is not None:
            delta = _diff(base.value, cand.value)
            pass_delta = _diff(base.pass_rate, cand.pass_rate)
        rows.append(SummaryRow(info, aggs, delta, pass_delta, delta_direction(delta, info.higher_is_better),
                               delta_direction(pass_delta, True)))
    return rows
