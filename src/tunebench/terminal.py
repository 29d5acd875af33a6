"""Terminal output: the summary table per model and metric with the candidate − baseline delta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compare import RunSummary

__all__ = ["print_summary"]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_summary(summary: RunSummary, *, report: Path | None = None, db: Path | None = None,
                  stats: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=f"{escape(summary.suite_name)} · run {summary.run_id}", title_justify="left")
    table.add_column("metric")
    for m in summary.models:
        table.add_column(escape(m), justify="right")
    delta_label = f"{summary.candidate} − {summary.baseline}" if summary.candidate else None
    if delta_label:
        table.add_column(escape(delta_label), justify="right")
    for name, info in summary.metrics.items():
        row = [escape(name) + ("" if info["higher_is_better"] else " ↓")]
        for m in summary.models:
            agg = summary.aggregates.get(m, {}).get(name)
            cell = _fmt(agg.value if agg else None)
            if agg and agg.pass_rate is not None:
                cell += f" ({agg.pass_rate:.0%} pass)"
            row.append(cell)
        if delta_label:
            d = summary.delta(name)
            if d is None:
                row.append("—")
            else:
                good = (d > 0) == bool(info["higher_is_better"])
                colour = "green" if good and d != 0 else ("red" if d != 0 else "white")
                row.append(f"[{colour}]{d:+.3f}[/{colour}]")
        table.add_row(*row)
    console.print(table)
    errors = ", ".join(f"{escape(m)} {summary.errors.get(m, 0)}/{summary.outputs.get(m, 0)}"
                       for m in summary.models)
    console.print(f"errors: {errors}")
    if stats is not None:
        console.print(f"requests sent: {stats.sent}, cached: {stats.cached}, resumed/skipped: {stats.skipped}")
    for w in summary.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(w)}")
    if db is not None:
        console.print(f"store: {db}  run: {summary.run_id}")
    if report is not None:
        console.print(f"report: {report}")
