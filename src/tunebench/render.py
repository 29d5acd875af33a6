"""Render: a stored run → the report data model → HTML, Markdown and JSON files.

Invariants: reads only from the store and the run's verdict in its stored form (the comparison's and the gates'
JSON, as :meth:`Store.get_verdict` returns them), so a report written again later is the same report; the flags
(regressed/fixed per metric, unstable) come from the paired comparison; files are written whole or not at all
(the renderers write to a temporary file and rename).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .compare import RunSummary, comparison_warnings
from .records import Output, Score
from .report.model import CaseRow, MetricInfo, RunReport

__all__ = ["build_report", "render_run"]


def _iso(value: Any) -> str | None:
    return None if value is None else (value.isoformat() if hasattr(value, "isoformat") else str(value))


def build_report(store: Any, run_id: str, summary: RunSummary, comparison: Mapping[str, Any] | None = None,
                 gates: Sequence[Mapping[str, Any]] = ()) -> RunReport:
    """Assemble the report data for one run from the store; ``comparison`` and ``gates`` as stored
    (``Comparison.to_json()``, ``GateResult.to_json()``)."""
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

    flags = _flags(comparison)

    def rows() -> Iterator[CaseRow]:
        for case in store.get_cases(run_id):
            yield CaseRow(
                case=case,
                outputs={m: outputs[(case.id, m)] for m in summary.models if (case.id, m) in outputs},
                scores={m: scores.get((case.id, m), {}) for m in summary.models},
                flags=tuple(dict.fromkeys(flags.get(case.id, []))),
            )

    return RunReport(
        run_id=run_id, suite_name=summary.suite_name, description=(run.get("options") or {}).get("description", ""),
        started_at=_iso(run.get("started_at")) or "", finished_at=_iso(run.get("finished_at")),
        tunebench_version=run.get("tunebench_version") or "", git_commit=run.get("git_commit"),
        models=summary.models, baseline=baseline, candidate=candidate, metrics=metrics,
        aggregates=summary.aggregates, errors=summary.errors, cases=_Reiterable(rows),
        warnings=list(summary.warnings),
        comparisons=[_comparison_row(mc) for mc in comparison["metrics"].values()] if comparison else [],
        gates=[dict(g) for g in gates],
    )


def _flags(comparison: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Case id → reviewer flags from the paired comparison: regressed/fixed per metric, unstable."""
    flags: dict[str, list[str]] = {}
    if comparison is None:
        return flags
    for name, mc in comparison["metrics"].items():
        for f in mc["regressions"]:
            flags.setdefault(f["case_id"], []).append(f"regressed:{name}")
        for f in mc["fixes"]:
            flags.setdefault(f["case_id"], []).append(f"fixed:{name}")
        for cid in mc["unstable"]:
            flags.setdefault(cid, []).append("unstable")
    return flags


def _comparison_row(mc: Mapping[str, Any]) -> dict[str, Any]:
    return {**mc, "p_value": mc.get("mcnemar_p")}


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


def render_run(store: Any, run_id: str, html_path: Path, summary: RunSummary,
               comparison: Mapping[str, Any] | None = None, gates: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write the HTML report, plus ``.md`` and ``.json`` summaries beside it; returns the HTML path."""

    return _render_all(build_report(store, run_id, summary, comparison, gates), Path(html_path))


def _render_all(report: RunReport, html_path: Path) -> Path:
    """The HTML report, with its Markdown and JSON forms beside it."""
    from .report import render_html, render_markdown, report_json

    html_path.parent.mkdir(parents=True, exist_ok=True)
    render_html(report, html_path)
    _write(html_path.with_suffix(".md"), render_markdown(report))
    _write(html_path.with_suffix(".json"), json.dumps(report_json(report), indent=2, default=str))
    return html_path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_comparison(store: Any, comparison: Any, html_path: Path) -> Path:
    """The run report's layout for baseline run × candidate run (two stored sides)."""
    from .report.model import CaseRow as Row

    a, b = comparison.baseline, comparison.candidate
    labels = [f"{a.model} ({a.run_id})", f"{b.model} ({b.run_id})"]
    metric_rows = {m["metric"]: m for m in store.get_metrics(b.run_id) if m["metric"] in comparison.metrics}
    families = _families({m["kind"] for m in metric_rows.values()})
    metrics = [MetricInfo(name, m["kind"], families.get(m["kind"], ""), bool(m["higher_is_better"]),
                          (m.get("config") or {}).get("threshold")) for name, m in metric_rows.items()]
    aggregates: dict[str, dict[str, Any]] = {label: {} for label in labels}
    for side, label in ((a, labels[0]), (b, labels[1])):
        for model, metric, agg in store.get_aggregates(side.run_id):
            if model == side.model and metric in metric_rows:
                aggregates[label][metric] = agg

    def side_data(side: Any) -> tuple[dict[str, Output], dict[str, dict[str, Score]]]:
        outs = {o.case_id: o for o in store.iter_outputs(side.run_id, model=side.model) if o.repeat == 0}
        scores: dict[str, dict[str, Score]] = {}
        for case_id, _m, repeat, metric, score in store.get_scores(side.run_id, model=side.model):
            if repeat == 0:
                scores.setdefault(case_id, {})[metric] = score
        return outs, scores

    (outs_a, scores_a), (outs_b, scores_b) = side_data(a), side_data(b)
    stored = comparison.to_json()
    flags = _flags(stored)

    def rows() -> Iterator[Row]:
        for case in store.get_cases(b.run_id):
            outputs = {}
            if case.id in outs_a:
                outputs[labels[0]] = outs_a[case.id]
            if case.id in outs_b:
                outputs[labels[1]] = outs_b[case.id]
            yield Row(case, outputs, {labels[0]: scores_a.get(case.id, {}), labels[1]: scores_b.get(case.id, {})},
                      tuple(dict.fromkeys(flags.get(case.id, []))))

    b_run = store.get_run(b.run_id)
    first, last = comparison_warnings(stored, labels[0], labels[1])
    report = RunReport(
        run_id=f"{a.run_id} → {b.run_id}", suite_name=b_run["suite_name"], description="comparison of two runs",
        started_at=_iso(b_run.get("started_at")) or "", finished_at=_iso(b_run.get("finished_at")),
        tunebench_version=b_run.get("tunebench_version") or "", git_commit=b_run.get("git_commit"),
        models=labels, baseline=labels[0], candidate=labels[1], metrics=metrics, aggregates=aggregates,
        errors={labels[0]: comparison.errors.get(a.label, (0, 0))[0],
                labels[1]: comparison.errors.get(b.label, (0, 0))[0]},
        cases=_Reiterable(rows), warnings=[*first, *last],
        comparisons=[_comparison_row(mc) for mc in stored["metrics"].values()],
    )
    return _render_all(report, Path(html_path))
