"""The Markdown form of a run report: a short summary for a pull-request comment.

Invariants:
- Never reads ``report.cases`` (a PR comment holds no case text, and the generator stays unconsumed).
- Every untrusted string is escaped for GitHub-flavoured Markdown: ``<``, ``>`` and ``&`` become entities (no
  inline HTML can run or render), Markdown punctuation and ``|`` are backslash-escaped, newlines become spaces,
  so a value can neither break a table row nor format itself.
- Numbers use the same formatting as the HTML report; deltas come from ``summary_rows``; the verdict headline
  and paragraph come from ``verdict.build_verdict``, like the HTML and JSON forms.
- Order: verdict, gates (with their numbers), the summary table, errors, warnings: a PR comment is read from
  the top and often only the first lines.
"""

from __future__ import annotations

import re

from ._format import fmt_count, fmt_duration, fmt_num, fmt_pct, fmt_signed, fmt_stamp
from .model import RunReport, summary_rows
from .verdict import build_verdict

__all__ = ["escape_markdown", "render_markdown"]

_PUNCT = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")
_DIRECTION_MARK = {"better": "✅ better", "worse": "❌ worse", "same": "= same", "none": ""}
_STATUS_MARK = {"pass": "✅", "fail": "❌", "none": "ℹ️"}


def escape_markdown(text: object) -> str:
    """Inline-safe Markdown text (see the module docstring)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _PUNCT.sub(r"\\\1", text)
    return re.sub(r"\s*[\r\n]+\s*", " ", text)


def _aggregate_cell(agg) -> str:
    if agg is None:
        return "—"
    parts = [fmt_num(agg.value), f"n={fmt_count(agg.n)}"]
    if agg.pass_rate is not None:
        parts.append(f"pass {fmt_pct(agg.pass_rate)}")
    if agg.n_errors:
        parts.append(f"{fmt_count(agg.n_errors)} err")
    return f"**{parts[0]}** ({', '.join(parts[1:])})"


def _paired_cell(comparison: dict | None) -> str:
    if not comparison or comparison.get("delta") is None:
        return "—"
    text = fmt_signed(comparison.get("delta"))
    if comparison.get("ci_low") is not None and comparison.get("ci_high") is not None:
        text += f" ({fmt_signed(comparison['ci_low'])}…{fmt_signed(comparison['ci_high'])})"
    verdict = comparison.get("verdict")
    return text + (f" {escape_markdown(verdict)}" if verdict else "")


def render_markdown(report: RunReport) -> str:
    """A summary table per metric and model with the candidate − baseline delta, errors, warnings, gates."""
    esc = escape_markdown
    lines = [f"### tunebench · {esc(report.suite_name)} · run `{report.run_id.replace('`', '')}`", ""]
    roles = []
    for model in report.models:
        role = " (baseline)" if model == report.baseline else " (candidate)" if model == report.candidate else ""
        roles.append(f"{esc(model)}{role}")
    finished = (f" · took {fmt_duration(report.started_at, report.finished_at)}" if report.finished_at
                else " · not finished")
    lines.append(f"Models: {', '.join(roles)} · started {fmt_stamp(report.started_at)}{finished}")
    lines.append("")

    verdict = build_verdict(report)
    lines.append(f"{_STATUS_MARK[verdict.status]} **{esc(verdict.headline)}**")
    lines.append("")
    lines.append(esc(verdict.paragraph))
    lines.append("")
    if report.gates:
        for gate in report.gates:
            mark = "✅" if gate.get("passed") else "❌"
            message = gate.get("message")
            lines.append(f"- {mark} **{esc(gate.get('name', ''))}**" + (f" — {esc(message)}" if message else ""))
        lines.append("")

    has_delta = bool(report.baseline and report.candidate)
    paired = {str(c.get("metric")): c for c in report.comparisons if isinstance(c, dict)}
    header = ["metric", *[esc(model) for model in report.models]]
    if has_delta:
        header.append(f"Δ {esc(report.candidate)} − {esc(report.baseline)}")
    if paired:
        header.append("paired Δ (95% CI)")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in summary_rows(report):
        arrow = "↑" if row.metric.higher_is_better else "↓"
        cells = [f"{esc(row.metric.name)} {arrow}"]
        cells += [_aggregate_cell(row.aggregates[model]) for model in report.models]
        if has_delta:
            mark = _DIRECTION_MARK[row.direction]
            cells.append(fmt_signed(row.delta) + (f" {mark}" if mark else ""))
        if paired:
            cells.append(_paired_cell(paired.get(row.metric.name)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    errors = ", ".join(f"{esc(model)} {fmt_count(report.errors.get(model, 0))}" for model in report.models)
    lines.append(f"Error outputs: {errors}")

    if report.warnings:
        lines += ["", "**Warnings**", ""]
        lines += [f"- ⚠️ {esc(warning)}" for warning in report.warnings]
    return "\n".join(lines) + "\n"
