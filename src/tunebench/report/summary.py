"""The JSON form of a run report: a machine-readable summary for CI, dashboards and ``jq``.

Invariants:
- The result is plain JSON data (``json.dumps`` works, no NaN: non-finite numbers become ``null``).
- ``format``/``version`` identify the layout; bump ``VERSION`` when a field changes meaning or disappears.
- Deltas come from ``summary_rows`` and ``verdict`` (status, headline, paragraph) from ``build_verdict``, like
  the HTML and Markdown forms.
- Cases are included only on request (``include_cases=True``); they are streamed from ``report.cases`` once.
"""

from __future__ import annotations

import math
from typing import Any

from .model import CaseRow, RunReport, summary_rows
from .verdict import build_verdict

__all__ = ["FORMAT", "VERSION", "report_json"]

FORMAT = "tunebench.report"
VERSION = 1


def _plain(value: Any) -> Any:
    """Deep-convert to JSON data: numpy scalars/arrays to numbers/lists, non-finite floats to None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist())
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _case(row: CaseRow) -> dict[str, Any]:
    case = row.case
    return {
        "id": case.id,
        "tags": list(case.tags),
        "input": case.input,
        "expected": case.expected,
        "messages": [dict(m) for m in case.messages] if case.messages else None,
        "source": case.source,
        "flags": list(row.flags),
        "outputs": {
            model: {"text": out.text, "error": out.error, "latency_ms": out.latency_ms,
                    "finish_reason": out.finish_reason}
            for model, out in row.outputs.items()
        },
        "scores": {
            model: {name: {"value": s.value, "passed": s.passed, "explanation": s.explanation, "error": s.error}
                    for name, s in by_metric.items()}
            for model, by_metric in row.scores.items()
        },
    }


def report_json(report: RunReport, *, include_cases: bool = False) -> dict[str, Any]:
    """The report as JSON data: run facts, per-model aggregates, candidate − baseline deltas, errors."""
    rows = summary_rows(report)
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": report.run_id,
        "suite": report.suite_name,
        "description": report.description,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "tunebench_version": report.tunebench_version,
        "git_commit": report.git_commit,
        "models": list(report.models),
        "baseline": report.baseline,
        "candidate": report.candidate,
        "metrics": [
            {"name": m.name, "kind": m.kind, "family": m.family, "higher_is_better": m.higher_is_better,
             "threshold": m.threshold}
            for m in report.metrics
        ],
        "aggregates": {
            model: {
                row.metric.name: (None if agg is None else {
                    "value": agg.value, "n": agg.n, "n_errors": agg.n_errors, "pass_rate": agg.pass_rate,
                    "details": agg.details,
                })
                for row in rows
                for agg in [row.aggregates[model]]
            }
            for model in report.models
        },
        "deltas": {
            row.metric.name: {"value": row.delta, "pass_rate": row.pass_rate_delta, "direction": row.direction}
            for row in rows
        } if report.baseline and report.candidate else {},
        "errors": {model: report.errors.get(model, 0) for model in report.models},
        "warnings": list(report.warnings),
        "verdict": build_verdict(report).to_json(),
        "gates": list(report.gates),
        "comparisons": list(report.comparisons),
    }
    if include_cases:
        data["cases"] = [_case(row) for row in report.cases]
    return _plain(data)
