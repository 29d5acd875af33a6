"""Compare: the stored results of a run → per model and metric aggregates, candidate − baseline deltas,
warnings (identical outputs, error rates).

Invariants: reads only from the store; a delta is reported only where both sides have a value; the direction
of a metric decides what "better" means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import Aggregate

__all__ = ["RunSummary", "comparison_warnings", "identity_warning", "summarize"]


@dataclass
class RunSummary:
    """The headline numbers of a run."""

    run_id: str
    suite_name: str
    status: str
    models: list[str]
    baseline: str | None
    candidate: str | None
    metrics: dict[str, dict[str, Any]]
    """Metric name → {kind, higher_is_better, threshold}."""
    aggregates: dict[str, dict[str, Aggregate]]
    """Model → metric → Aggregate."""
    errors: dict[str, int]
    """Model → outputs that are errors."""
    outputs: dict[str, int]
    """Model → outputs stored."""
    warnings: list[str] = field(default_factory=list)

    def delta(self, metric: str) -> float | None:
        """Candidate − baseline aggregate value, or None."""
        if not self.baseline or not self.candidate:
            return None
        a = self.aggregates.get(self.baseline, {}).get(metric)
        b = self.aggregates.get(self.candidate, {}).get(metric)
        if a is None or b is None or a.value is None or b.value is None:
            return None
        return b.value - a.value

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "suite": self.suite_name,
            "status": self.status,
            "models": self.models,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "metrics": {
                name: {
                    **info,
                    "values": {m: _agg_json(self.aggregates.get(m, {}).get(name)) for m in self.models},
                    "delta": self.delta(name),
                }
                for name, info in self.metrics.items()
            },
            "errors": self.errors,
            "outputs": self.outputs,
            "warnings": self.warnings,
        }


def _agg_json(agg: Aggregate | None) -> dict[str, Any] | None:
    if agg is None:
        return None
    return {"value": agg.value, "n": agg.n, "n_errors": agg.n_errors, "pass_rate": agg.pass_rate,
            "details": agg.details}


def identity_warning(baseline: str, candidate: str, same: int, total: int, threshold: float = 0.9) -> str | None:
    """A loud warning when the candidate answered exactly like the baseline on nearly every case."""
    if total == 0 or same / total < threshold:
        return None
    return (f"{candidate} gave exactly the same output as {baseline} on {same} of {total} cases "
            f"({same / total:.0%}): the adapter, checkpoint or endpoint was probably never applied")


def comparison_warnings(comparison: Mapping[str, Any], baseline: str, candidate: str) -> tuple[list[str], list[str]]:
    """What a comparison (in its stored form, ``Comparison.to_json()``) warns of, as (first, last): a candidate
    that answered like its baseline (to show before anything else), golden cases that differ between the sides."""
    first = [w] if (w := identity_warning(baseline, candidate, *comparison["identical"])) else []
    added, removed, changed = (len(comparison["drift"][k]) for k in ("added", "removed", "changed"))
    last = [f"golden cases differ from the baseline run: {added} added, {removed} removed, {changed} changed "
            "(excluded from the comparison)"] if added or removed or changed else []
    return first, last


def summarize(store: Any, run_id: str) -> RunSummary:
    """Read a run's summary back from the store."""
    run = store.get_run(run_id)
    models = [m["model"] for m in store.get_models(run_id)]
    metrics = {m["metric"]: {"kind": m["kind"], "higher_is_better": m["higher_is_better"],
                             "threshold": (m.get("config") or {}).get("threshold")}
               for m in store.get_metrics(run_id)}
    aggregates: dict[str, dict[str, Aggregate]] = {}
    for model, metric, agg in store.get_aggregates(run_id):
        aggregates.setdefault(model, {})[metric] = agg
    counts = store.output_counts(run_id)
    summary = RunSummary(run_id, run["suite_name"], run["status"], models, run.get("baseline"),
                         run.get("candidate"), metrics, aggregates,
                         {m: counts.get(m, (0, 0))[1] for m in models},
                         {m: counts.get(m, (0, 0))[0] for m in models})
    for m in models:
        total, errors = counts.get(m, (0, 0))
        if total and errors:
            summary.warnings.append(f"{m}: {errors} of {total} outputs are errors")
    return summary
