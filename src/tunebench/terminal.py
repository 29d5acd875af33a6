"""Terminal output: the summary table per model and metric with the candidate − baseline delta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compare import RunSummary

__all__ = ["print_summary"]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_summary(summary: RunSummary, *, report: Path | None = None, db: Path | None = None,
                  stats: Any = None, gates: list[Any] = ()) -> None:
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
    for name in summary.metrics:  # classification: the numbers behind accuracy
        per_model = {m: summary.aggregates.get(m, {}).get(name) for m in summary.models}
        if any(a is not None and "macro_f1" in a.details for a in per_model.values()):
            parts = [f"{escape(m)} macro-F1 {a.details['macro_f1']:.3f}, weighted-F1 {a.details['weighted_f1']:.3f}, "
                     f"invalid {a.details['invalid_rate']:.1%}" for m, a in per_model.items()
                     if a is not None and "macro_f1" in a.details]
            console.print(f"{escape(name)}: " + "; ".join(parts))
    errors = ", ".join(f"{escape(m)} {summary.errors.get(m, 0)}/{summary.outputs.get(m, 0)}"
                       for m in summary.models)
    console.print(f"errors: {errors}")
    if stats is not None:
        console.print(f"requests sent: {stats.sent}, cached: {stats.cached}, resumed/skipped: {stats.skipped}")
    for w in summary.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(w)}")
    for g in gates:
        mark = "[green]PASS[/green]" if g.passed else "[bold red]FAIL[/bold red]"
        console.print(f"gate {mark} {escape(g.name)}: {escape(g.message)}")
        for f in g.flips if not g.passed else []:
            console.print(f"    regressed {escape(str(f['case_id']))}: {f['baseline']} → {f['candidate']}")
    if db is not None:
        console.print(f"store: {db}  run: {summary.run_id}")
    if report is not None:
        console.print(f"report: {report}")


def print_comparison(comparison: Any, *, report: Path | None = None) -> None:
    """The paired comparison of two sides, one row per metric, with the worst regressions."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    a, b = comparison.baseline.label, comparison.candidate.label
    table = Table(title=f"{escape(b)} vs {escape(a)}", title_justify="left")
    for col in ("metric", "baseline", "candidate", "delta", "95% CI", "W/T/L", "verdict", "MDE"):
        table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
    for name, mc in comparison.metrics.items():
        p = mc.paired
        if p is None:
            table.add_row(escape(name), "—", "—", "—", "—", "—", "not enough paired cases", "—")
            continue
        colour = {"better": "green", "worse": "red"}.get(p.verdict, "white")
        wtl = p.win_tie_loss
        table.add_row(escape(name), f"{p.mean_a:.3f}", f"{p.mean_b:.3f}", f"{p.delta:+.3f}",
                      f"{p.interval.low:+.3f}…{p.interval.high:+.3f}", f"{wtl.wins}/{wtl.ties}/{wtl.losses}",
                      f"[{colour}]{p.verdict}[/{colour}]", f"±{p.mde:.3f}")
    console.print(table)
    d = comparison.drift
    if d.any:
        console.print(f"[yellow]drift:[/yellow] {len(d.added)} cases added, {len(d.removed)} removed, "
                      f"{len(d.changed)} changed (excluded)")
    for name, mc in comparison.metrics.items():
        if mc.flips.regressions:
            worst = ", ".join(escape(f.case_id) for f in mc.flips.regressions[:5])
            console.print(f"{escape(name)}: {len(mc.flips.regressions)} regressions ({worst}…), "
                          f"{len(mc.flips.fixes)} fixes")
    if report is not None:
        console.print(f"report: {report}")


def print_history(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    if not rows:
        console.print("no runs stored yet")
        return
    table = Table()
    for col in ("run", "suite", "started", "status", "tags", "headline", "gates"):
        table.add_column(col)
    for r in rows:
        headline = []
        for model, metrics in r["metrics"].items():
            if metrics:
                name, value = next(iter(metrics.items()))
                headline.append(f"{model} {name} {_fmt(value)}")
        g = r["gates"]
        gates = "—" if not (g["passed"] or g["failed"]) else (
            f"[red]{g['failed']} failed[/red]" if g["failed"] else f"[green]{g['passed']} passed[/green]")
        table.add_row(r["run_id"], escape(r["suite"]), str(r["started_at"])[:19], r["status"],
                      escape(", ".join(r["tags"])), escape("; ".join(headline)), gates)
    console.print(table)
