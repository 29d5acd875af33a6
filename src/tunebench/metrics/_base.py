"""The metric contract.

A metric *kind* is registered as a factory decorated with ``@metric("kind", description=…)``; its keyword-only
parameters are the YAML options. Calling the factory returns a :class:`Metric` instance that scores samples.

Invariants:
- ``score_batch`` returns exactly one :class:`Score` per sample, in order; a case that cannot be scored gets a
  Score with ``error`` set and ``value=None`` -- never NaN, never dropped.
- direction (``higher_is_better``) and aggregation are attributes of the metric, not side tables.
- ``aggregate`` sees only Scores, so corpus-level metrics keep their sufficient statistics in ``details``.
- metrics are called from a worker thread; they may block (or run their own event loop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..factory import make_decorator
from ..records import Aggregate, Sample, Score

__all__ = ["Metric", "MetricContext", "mean_aggregate", "metric"]

metric = make_decorator("__tunebench_metric__")
"""Decorator marking a metric factory: ``@metric("rouge", description="…", family="similarity")``."""


@dataclass(frozen=True)
class MetricContext:
    """What a metric factory may need from the run."""

    suite_dir: Path = field(default_factory=Path.cwd)
    """Directory of the suite file: relative option paths (glossaries, schemas) resolve against it."""
    cache_dir: Path | None = None
    """Where a metric may keep a persistent cache (embeddings, judge replies)."""
    suite_vars: dict[str, Any] = field(default_factory=dict)
    """Suite-level data a metric may read (``labels``, ``glossary``, ``prices``)."""
    runners: dict[str, Any] = field(default_factory=dict)
    """Configured runners by model name, for metrics that call a model (judges)."""


class Metric:
    """Base class: set ``kind``; override ``score`` (or ``score_batch``) and, for corpus metrics, ``aggregate``."""

    kind: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    labelled: ClassVar[bool] = False
    """Its scores' details carry ``gold`` and ``predicted`` labels: the paired comparison reads them (for a
    macro-F1 interval) only from metrics that say so."""
    name: str = ""
    """The instance name in the suite (``rougeL``); set by the host after the factory returns."""

    def __init__(self, *, threshold: float | None = None) -> None:
        self.threshold = threshold

    def passes(self, value: float) -> bool | None:
        """Compare a value with the threshold in the metric's direction; ``None`` without a threshold."""
        if self.threshold is None:
            return None
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def score(self, sample: Sample) -> Score:
        raise NotImplementedError(f"{type(self).__name__} must implement score() or score_batch()")

    def score_batch(self, samples: Sequence[Sample]) -> list[Score]:
        return [self.score(s) for s in samples]

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        """Mean of the values and the pass rate over the cases that scored."""
        ok = [s for s in scores if s.error is None and s.value is not None]
        return mean_aggregate([s.value for s in ok], [s.passed for s in ok if s.passed is not None],  # type: ignore[misc]
                              len(scores))

    def describe(self) -> dict[str, Any]:
        """Identity of this configured metric (kind, options) for the store."""
        return {"kind": self.kind, "threshold": self.threshold, "higher_is_better": self.higher_is_better}


def mean_aggregate(values: Sequence[float], judged: Sequence[bool], n_scores: int) -> Aggregate:
    """The default :meth:`Metric.aggregate` of ``n_scores`` scores: the mean of the ``values`` of those that scored
    (no error, a value; ``math.fsum``) and the pass rate over the ``judged`` pass/fail of those; the rest are
    errors. Sequences or numpy arrays (a run reads them as arrays, ``Store.score_values``)."""
    n_errors = n_scores - len(values)
    if not len(values):
        return Aggregate(value=None, n=0, n_errors=n_errors)
    passes = sum(bool(p) for p in judged)
    return Aggregate(value=math.fsum(values) / len(values), n=len(values), n_errors=n_errors,
                     pass_rate=passes / len(judged) if len(judged) else None)
