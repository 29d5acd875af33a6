"""Gates: the promotion decision, evaluated after every run from the summary and the paired comparison.

Invariants: every gate yields exactly one GateResult with a human-readable message carrying the numbers (value,
threshold, delta and interval, worst flips); a gate that cannot be evaluated (no paired cases, no value) FAILS
with the reason -- a promotion is never waved through on missing evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import stats
from .compare import RunSummary
from .paired import Comparison
from .suite import ErrorRateGate, FloorGate, ImprovementGate, NonInferiorityGate, RegressionsGate

__all__ = ["GateResult", "evaluate_gates"]

WORST_FLIPS = 5


@dataclass
class GateResult:
    """The outcome of one gate."""

    name: str
    kind: str
    passed: bool
    message: str
    """One line: what was required, what was measured."""
    numbers: dict[str, Any] = field(default_factory=dict)
    """The values behind the message (for JUnit properties, JSON, the store)."""
    flips: list[dict[str, Any]] = field(default_factory=list)
    """The worst regressions on the gate's metric (case id, values)."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "passed": self.passed, "message": self.message,
                "numbers": self.numbers, "flips": self.flips}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def evaluate_gates(gates: list[Any], summary: RunSummary, comparison: Comparison | None,
                   tags_of: dict[str, tuple[str, ...]] | None = None) -> list[GateResult]:
    """Evaluate every gate of a suite."""
    return [_evaluate(g, summary, comparison, tags_of or {}) for g in gates]


def _worst(comparison: Comparison | None, metric: str, only: set[str] | None = None) -> list[dict[str, Any]]:
    if comparison is None or metric not in comparison.metrics:
        return []
    flips = [f for f in comparison.metrics[metric].flips.regressions if only is None or f.case_id in only]
    return [{"case_id": f.case_id, "baseline": f.a_value, "candidate": f.b_value, "change": f.change}
            for f in flips[:WORST_FLIPS]]


def _evaluate(gate: Any, summary: RunSummary, comparison: Comparison | None,
              tags_of: dict[str, tuple[str, ...]]) -> GateResult:
    name, kind = gate.name, gate.kind
    candidate = comparison.candidate.label if comparison else summary.candidate

    if isinstance(gate, FloorGate):
        model = gate.model or summary.candidate or summary.baseline
        agg = summary.aggregates.get(model or "", {}).get(gate.metric)
        value = agg.value if agg else None
        ok = value is not None and (gate.min is None or value >= gate.min) and (gate.max is None or value <= gate.max)
        bound = " and ".join(p for p in (f"≥ {gate.min}" if gate.min is not None else "",
                                         f"≤ {gate.max}" if gate.max is not None else "") if p)
        msg = f"{model} {gate.metric} = {_fmt(value)} (required {bound})"
        return GateResult(name, kind, ok, msg, {"metric": gate.metric, "model": model, "value": value, "min": gate.min,
                                                  "max": gate.max},
                          [] if ok else _worst(comparison, gate.metric))

    if isinstance(gate, ErrorRateGate):
        model = gate.model or summary.candidate or summary.baseline or ""
        total, errors = summary.outputs.get(model, 0), summary.errors.get(model, 0)
        rate = errors / total if total else 1.0
        ok = total > 0 and rate <= gate.max
        return GateResult(name, kind, ok, f"{model} error rate {rate:.1%} ({errors}/{total}), max {gate.max:.1%}",
                          {"model": model, "rate": rate, "errors": errors, "outputs": total, "max": gate.max})

    mc = comparison.metrics.get(gate.metric) if comparison else None
    if mc is None or mc.paired is None:
        return GateResult(name, kind, False, f"{gate.metric}: no paired cases to compare {candidate} with the "
                          "baseline", {"metric": gate.metric})
    p = mc.paired
    sign = 1.0 if p.higher_is_better else -1.0
    interval = f"95% CI {p.interval.low:+.4g}…{p.interval.high:+.4g}"
    base_numbers = {"metric": gate.metric, "baseline": p.mean_a, "candidate": p.mean_b, "delta": p.delta,
                    "ci_low": p.interval.low, "ci_high": p.interval.high, "n": p.n}
    head = (f"{gate.metric}: baseline {p.mean_a:.4g} → candidate {p.mean_b:.4g}, delta {p.delta:+.4g} "
            f"({interval}, n={p.n})")

    if isinstance(gate, ImprovementGate):
        gain = sign * p.delta
        bound = min(sign * p.interval.low, sign * p.interval.high)
        ok = gain > gate.min_delta and (not gate.significant or bound > gate.min_delta)
        need = f"improvement > {gate.min_delta:g}" + (" with the whole interval above it" if gate.significant else "")
        return GateResult(name, kind, ok, f"{head}; required {need}", {**base_numbers, "min_delta": gate.min_delta,
                          "significant": gate.significant}, [] if ok else _worst(comparison, gate.metric))

    if isinstance(gate, NonInferiorityGate):
        ni = stats.non_inferiority(mc.a_values, mc.b_values, gate.margin, confidence=gate.confidence,
                                   higher_is_better=p.higher_is_better)
        msg = (f"{head}; one-sided {gate.confidence:.0%} lower bound of the change {ni.lower:+.4g} must be above "
               f"-{gate.margin:g}")
        return GateResult(name, kind, bool(ni.non_inferior), msg,
                          {**base_numbers, "margin": gate.margin, "lower": ni.lower},
                          [] if ni.non_inferior else _worst(comparison, gate.metric))

    if isinstance(gate, RegressionsGate):
        only = {c for c, t in tags_of.items() if gate.tag in t} if gate.tag else None
        regressions = [f for f in mc.flips.regressions if only is None or f.case_id in only]
        ok = len(regressions) <= gate.max
        scope = f" among cases tagged {gate.tag}" if gate.tag else ""
        msg = f"{gate.metric}: {len(regressions)} pass→fail regressions{scope} (max {gate.max}); " \
              f"{len(mc.flips.fixes)} fixes"
        return GateResult(name, kind, ok, msg, {"metric": gate.metric, "regressions": len(regressions),
                          "fixes": len(mc.flips.fixes), "max": gate.max, "tag": gate.tag},
                          _worst(comparison, gate.metric, only))
    raise TypeError(f"unknown gate kind {kind!r}")  # the suite schema makes this unreachable
