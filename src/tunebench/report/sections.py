"""The per-metric section of the run report: numbers, interval, charts, confusion matrices, per-tag table.

``CaseStats`` collects what the charts need while the case stream is written (the cases are read once);
``metric_views`` combines it with the aggregates and the paired comparisons into one ``MetricView`` per metric.

Invariants:
- Per-case deltas are candidate − baseline of the first-repeat values shown in the case table; the interval
  and the test come from the paired comparison (case-level means over repeats), so a chart and its interval
  may differ slightly when a suite has repeats.
- Confusion matrices are drawn only from ``Aggregate.details["confusion"]`` (rows: gold labels; columns: the
  labels plus the invalid-prediction column); the difference is computed on the union of both label sets, so
  a label missing on one side is a row/column of zeros there, never a misaligned cell.
- Charts are ``Markup`` from ``charts``; everything else is plain data for the template to escape.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from . import charts
from ._format import finite as _finite
from .model import CaseRow, MetricInfo, RunReport, SummaryRow, delta_direction
from .terms import is_term_details

__all__ = ["CaseStats", "Confusion", "MetricView", "TagRow", "metric_views"]

TOP_TERMS = 8
"""Most-often missing or misused terms listed per model."""

MAX_LABELS = 40
"""Above this many classes a confusion matrix is not drawn (it would be unreadable); the JSON form has it."""




class CaseStats:
    """Per metric: the per-case deltas and each model's per-case values; per terminology metric the terms."""

    def __init__(self, report: RunReport) -> None:
        self.models = list(report.models)
        self.baseline, self.candidate = report.baseline, report.candidate
        self.metrics = [m.name for m in report.metrics]
        self.deltas: dict[str, list[float]] = {m: [] for m in self.metrics}
        self.values: dict[str, dict[str, list[float]]] = {m: {k: [] for k in self.models} for m in self.metrics}
        self.missing: dict[str, dict[str, Counter]] = {}
        self.misused: dict[str, dict[str, Counter]] = {}
        self.cases = 0
        self.has_terms = False
        """Whether any score carried terminology details (the case table then highlights terms)."""

    def add(self, row: CaseRow) -> None:
        self.cases += 1
        for model in self.models:
            by_metric = row.scores.get(model)
            if not by_metric:
                continue
            for metric in self.metrics:
                score = by_metric.get(metric)
                if score is None:
                    continue
                value = score.value
                if type(value) is not float or not math.isfinite(value):  # floats are the usual case: fast path
                    value = _finite(value)
                if value is not None:
                    self.values[metric][model].append(value)
                details = score.details
                if details and type(details) is dict and is_term_details(details):
                    self._terms(metric, model, details)
        if self.baseline and self.candidate:
            base = row.scores.get(self.baseline) or {}
            cand = row.scores.get(self.candidate) or {}
            for metric in self.metrics:
                a, b = base.get(metric), cand.get(metric)
                if a is None or b is None:
                    continue
                va, vb = _finite(a.value), _finite(b.value)
                if va is not None and vb is not None:
                    self.deltas[metric].append(vb - va)

    def _terms(self, metric: str, model: str, details: dict) -> None:
        self.has_terms = True
        missing = self.missing.setdefault(metric, {}).setdefault(model, Counter())
        misused = self.misused.setdefault(metric, {}).setdefault(model, Counter())
        missing.update(str(t) for t in details.get("missing", details.get("missed")) or ())
        misused.update(str(t) for t in details.get("forbidden_used") or ())
        misused.update(str(t) for t in (details.get("deprecated_used") or {}))
        misused.update(str(w.get("wrong")) for w in details.get("wrong_used") or () if isinstance(w, dict))


@dataclass(frozen=True)
class TagRow:
    """One tag's paired comparison for a metric."""

    tag: str
    n: int
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    p_holm: float | None
    significant: bool
    direction: str
    """``better``/``worse`` when significant, else ``same``."""
    chart: Markup


@dataclass(frozen=True)
class Confusion:
    """Baseline and candidate confusion matrices and their difference, on one label set."""

    rows: list[str]
    columns: list[str]
    charts: list[tuple[str, Markup]]
    """(caption, heat map): baseline, candidate, candidate − baseline (or one model's when no pair)."""
    diagonal_gain: float | None
    """Candidate − baseline correct predictions (sum of the diagonal difference)."""


@dataclass
class MetricView:
    """Everything the report shows about one metric."""

    info: MetricInfo
    row: SummaryRow
    comparison: dict[str, Any] | None
    interval: Markup | None = None
    histogram: Markup | None = None
    delta_counts: tuple[int, int, int] = (0, 0, 0)
    """Cases where the candidate is worse, equal, better (per-case values)."""
    distributions: list[tuple[str, Markup]] = field(default_factory=list)
    confusion: Confusion | None = None
    tags: list[TagRow] = field(default_factory=list)
    missing_terms: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    misused_terms: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return "metric-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in self.info.name)


def _confusion(report: RunReport, metric: str) -> Confusion | None:
    sides = [m for m in (report.baseline, report.candidate) if m] or list(report.models[-1:])
    found = []
    for model in sides:
        agg = report.aggregates.get(model, {}).get(metric)
        conf = (agg.details or {}).get("confusion") if agg is not None else None
        if isinstance(conf, dict) and isinstance(conf.get("labels"), list) and isinstance(conf.get("matrix"), list):
            found.append((model, conf))
    if not found:
        return None
    columns: list[str] = []
    rows: list[str] = []
    for _, conf in found:
        labels = [str(x) for x in conf["labels"]]
        n_rows = len(conf["matrix"])
        for lab in labels:
            if lab not in columns:
                columns.append(lab)
        for lab in labels[:n_rows]:
            if lab not in rows:
                rows.append(lab)
    # The invalid-prediction column (after the labels in each matrix) stays last.
    extra = [c for c in columns if c not in rows]
    columns = rows + extra
    if len(columns) > MAX_LABELS:
        return Confusion(rows, columns, [], None)
    matrices = []
    for model, conf in found:
        labels = [str(x) for x in conf["labels"]]
        full = [[0.0] * len(columns) for _ in rows]
        for i, line in enumerate(conf["matrix"]):
            for j, value in enumerate(line):
                if i < len(labels) and j < len(labels):
                    full[rows.index(labels[i])][columns.index(labels[j])] = float(value)
        matrices.append((model, full))
    shown = [(f"{model}", charts.heatmap(rows, columns, m, title=f"{metric}: confusion matrix of {model}"))
             for model, m in matrices]
    gain = None
    if len(matrices) == 2:
        (a_name, a), (b_name, b) = matrices
        diff = [[b[i][j] - a[i][j] for j in range(len(columns))] for i in range(len(rows))]
        gain = sum(diff[i][i] for i in range(len(rows)))
        shown.append((f"{b_name} − {a_name}",
                      charts.heatmap(rows, columns, diff, diff=True,
                                     title=f"{metric}: confusion matrix of {b_name} minus {a_name}")))
    return Confusion(rows, columns, shown, gain)


def _tag_rows(comparison: dict[str, Any], higher_is_better: bool) -> list[TagRow]:
    raw = [t for t in comparison.get("by_tag") or [] if isinstance(t, dict)]
    bounds = [v for t in raw for v in (_finite(t.get("ci_low")), _finite(t.get("ci_high"))) if v is not None]
    scale = (min([*bounds, 0.0]), max([*bounds, 0.0])) if bounds else None
    rows = []
    for t in raw:
        delta, low, high = _finite(t.get("delta")), _finite(t.get("ci_low")), _finite(t.get("ci_high"))
        significant = bool(t.get("significant"))
        direction = delta_direction(delta, higher_is_better) if significant else "same"
        rows.append(TagRow(str(t.get("tag", "")), int(t.get("n") or 0), delta, low, high,
                           _finite(t.get("p_value")), _finite(t.get("p_holm")), significant,
                           direction if direction in ("better", "worse") else "same",
                           charts.interval_bar(delta, low, high, higher_is_better=higher_is_better, scale=scale,
                                               width=160, height=20, label=f"tag {t.get('tag', '')}")))
    # Worst first: the reviewer looks for where the candidate lost.
    sign = 1.0 if higher_is_better else -1.0
    rows.sort(key=lambda r: (r.delta is None, sign * (r.delta or 0.0)))
    return rows


def _top(counter: Counter | None) -> list[tuple[str, int]]:
    return counter.most_common(TOP_TERMS) if counter else []


def metric_views(report: RunReport, rows: list[SummaryRow], stats: CaseStats) -> list[MetricView]:
    """One view per metric, in the report's metric order."""
    by_metric = {str(c.get("metric")): c for c in report.comparisons if isinstance(c, dict)}
    views = []
    for row in rows:
        info = row.metric
        comparison = by_metric.get(info.name)
        view = MetricView(info, row, comparison)
        if comparison is not None:
            view.interval = charts.interval_bar(
                _finite(comparison.get("delta")), _finite(comparison.get("ci_low")),
                _finite(comparison.get("ci_high")), higher_is_better=info.higher_is_better,
                label=f"{info.name}: paired difference {report.candidate} − {report.baseline} with its interval")
            view.tags = _tag_rows(comparison, info.higher_is_better)
        deltas = stats.deltas.get(info.name) or []
        if deltas:
            view.histogram = charts.delta_histogram(deltas, higher_is_better=info.higher_is_better,
                                                    candidate=str(report.candidate), baseline=str(report.baseline),
                                                    metric=info.name)
            ties = sum(1 for d in deltas if abs(d) < charts.TIES)
            up = sum(1 for d in deltas if d >= charts.TIES)
            down = len(deltas) - ties - up
            view.delta_counts = (down, ties, up) if info.higher_is_better else (up, ties, down)
        elif not (report.baseline and report.candidate):
            view.distributions = [
                (model, charts.distribution_histogram(values, model=model, metric=info.name))
                for model, values in stats.values.get(info.name, {}).items() if values]
        view.confusion = _confusion(report, info.name)
        for model, counter in stats.missing.get(info.name, {}).items():
            if counter:
                view.missing_terms[model] = _top(counter)
        for model, counter in stats.misused.get(info.name, {}).items():
            if counter:
                view.misused_terms[model] = _top(counter)
        views.append(view)
    return views
