"""Render: a stored run → the report data model → HTML, Markdown and JSON files.

Invariants: reads only from the store; the flags (regressed/fixed per metric) come from pass/fail of the
baseline and the candidate on the first repeat; files are written whole or not at all (the renderers write to a
temporary file and rename).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .compare import RunSummary
from .records import Output, Score
from .report.model import CaseRow, MetricInfo, RunReport

__all__ = ["build_report", "render_run"]


def _iso(value: Any) -> str | None:
    return None if value is None else (value.isoformat() if hasattr(value, "isoformat") else str(value))


def build_report(store: Any, run_id: str, summary: RunSummary, comparison: Any = None,
                 gates: Any = ()) -> RunReport:
    """Assemble the report data for one run from the store."""
    run = store.get_run(run_id)
    metric_rows = {m["metric"]: m for m in store.get_metrics(run_id)}
    families = _families({m["kind"] for m in metric_rows.values()})
    metrics = [MetricInfo(name, m["kind"], families.get(m["kind"], ""), bool(m["higher_is_better"]),
                          (m.get("config") or {}).get("threshold")) for name, m in metric_rows.items()]
    outputs: dict[tuple[str, str], Output] = {}
    for out in store.iter_outputs(run_id):
        if out.repeat == 0:
            outputs[(out.case_id, out.model)] = out
    scores: dict[tuple[str, str], dict[str, Score]] = {}
    for case_id, model, repeat, metric, score in store.get_scores(run_id):
        if repeat == 0:
            scores.setdefault((case_id, model), {})[metric] = score
    baseline, candidate = summary.baseline, summary.candidate

    def rows() -> Iterator[CaseRow]:
        for case in store.get_cases(run_id):
            flags = []
            if baseline and candidate:
                a, b = scores.get((case.id, baseline), {}), scores.get((case.id, candidate), {})
                for name in metric_rows:
                    pa, pb = getattr(a.get(name), "passed", None), getattr(b.get(name), "passed", None)
                    if pa is True and pb is False:
                        flags.append(f"regressed:{name}")
                    elif pa is False and pb is True:
                        flags.append(f"fixed:{name}")
            yield CaseRow(
                case=case,
                outputs={m: outputs[(case.id, m)] for m in summary.models if (case.id, m) in outputs},
                scores={m: scores.get((case.id, m), {}) for m in summary.models},
                flags=tuple(flags),
            )

    return RunReport(
        run_id=run_id, suite_name=summary.suite_name, description=(run.get("options") or {}).get("description", ""),
        started_at=_iso(run.get("started_at")) or "", finished_at=_iso(run.get("finished_at")),
        tunebench_version=run.get("tunebench_version") or "", git_commit=run.get("git_commit"),
        models=summary.models, baseline=baseline, candidate=candidate, metrics=metrics,
        aggregates=summary.aggregates, errors=summary.errors, cases=_Reiterable(rows),
        warnings=list(summary.warnings),
        comparisons=[_comparison_row(mc) for mc in comparison.metrics.values()] if comparison else [],
        gates=[g.to_json() for g in gates],
    )


def _comparison_row(mc: Any) -> dict[str, Any]:
    row = mc.to_json()
    row["p_value"] = row.get("mcnemar_p")
    return row


class _Reiterable:
    """Lets several renderers stream the same cases (each iteration starts over)."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[CaseRow]:
        return iter(self.factory())


def _families(kinds: set[str]) -> dict[str, str]:
    from .plugins import list_metrics

    table = list_metrics()
    return {k: table[k].family for k in kinds if k in table}


def render_run(store: Any, run_id: str, html_path: Path, summary: RunSummary, comparison: Any = None,
               gates: Any = ()) -> Path:
    """Write the HTML report, plus ``.md`` and ``.json`` summaries beside it; returns the HTML path."""
    from .report import render_html, render_markdown, report_json

    report = build_report(store, run_id, summary, comparison, gates)
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    render_html(report, html_path)
    _write(html_path.with_suffix(".md"), render_markdown(report))
    _write(html_path.with_suffix(".json"), json.dumps(report_json(report), indent=2, default=str))
    return html_path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
