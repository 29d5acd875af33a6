"""Cost metrics: how long the model took to answer (``Output.latency_ms``).

Invariants:
- lower is better (``higher_is_better = False``); with ``max_ms`` set, a case passes when its latency is
  at most ``max_ms``.
- a latency is never invented. A cached output (no request was sent) and an output without a measured latency
  get an error Score that says why; they count in ``n_errors``, not as 0 ms, so a warm cache cannot make a
  model look fast.
- the aggregate value is the mean; ``details`` adds ``p50``, ``p90``, ``p95``, ``p99`` (linear interpolation
  between closest ranks, numpy's default ``percentile`` method), ``mean``, ``min`` and ``max``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ._base import Metric, metric

__all__ = ["PERCENTILES", "Latency", "latency"]

PERCENTILES = (50, 90, 95, 99)


class Latency(Metric):
    """Per-case latency in milliseconds."""

    kind = "latency"
    higher_is_better = False

    def score(self, sample: Sample) -> Score:
        output = sample.output
        if output.cached:
            return Score(value=None, error="cached response: no latency measured")
        ms = output.latency_ms
        if ms is None:
            return Score(value=None, error="no latency measured: the runner did not report one")
        if not math.isfinite(ms) or ms < 0:
            return Score(value=None, error=f"invalid latency reported by the runner: {ms!r} ms")
        ms = float(ms)
        explanation = f"{ms:.0f} ms"
        if self.threshold is not None:
            explanation += f" ({'within' if ms <= self.threshold else 'over'} {self.threshold:g} ms)"
        return Score(value=ms, passed=self.passes(ms), explanation=explanation, details={"attempts": output.attempts})

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        base = super().aggregate(scores)
        values = [s.value for s in scores if s.error is None and s.value is not None]
        if not values:
            return base
        import numpy as np  # only needed once per run, at aggregation

        arr = np.asarray(values, dtype=float)
        details: dict[str, Any] = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
        details.update(mean=base.value, min=float(arr.min()), max=float(arr.max()))
        return Aggregate(value=base.value, n=base.n, n_errors=base.n_errors, pass_rate=base.pass_rate, details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "options": {"max_ms": self.threshold}}


@metric(
    "latency",
    description="response time in ms (lower is better); p50/p90/p95/p99 in the aggregate",
    family="cost",
)
def latency(*, max_ms: float | None = None) -> Latency:
    """Latency of each answer; ``max_ms`` makes a case pass when it answered within that many milliseconds."""
    if max_ms is not None and not (math.isfinite(max_ms) and max_ms > 0):
        raise ConfigError(
            f"latency: max_ms must be a positive number of milliseconds, got {max_ms!r}",
            hint="e.g. 'max_ms: 2000', or leave it out to report latency without pass/fail",
        )
    return Latency(threshold=max_ms)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the cost metrics."""
    register(latency)
