"""Score: outputs × cases → one Score per (case, model, repeat, metric); then aggregates per model and metric.

Invariants: every output gets exactly one Score per metric -- an error output gets an error Score (``value``
None, the reason kept), a metric that raises gets error Scores naming the metric and the exception; never NaN
(a NaN/inf value is turned into an error Score); aggregates see every Score of a model, errors included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .metrics import Metric
from .records import Aggregate, Case, Output, Sample, Score

__all__ = ["ScoreRow", "aggregate_scores", "score_outputs"]

ScoreRow = tuple[str, str, int, str, Score]
"""(case_id, model, repeat, metric name, Score)."""


def score_outputs(metrics: dict[str, Metric], items: Sequence[tuple[Case, Output]]) -> list[ScoreRow]:
    """Score a batch of outputs with every metric."""
    ok = [(case, out) for case, out in items if out.error is None]
    failed = [(case, out) for case, out in items if out.error is not None]
    samples = [Sample(case, out) for case, out in ok]
    rows: list[ScoreRow] = []
    for name, metric in metrics.items():
        try:
            scores = metric.score_batch(samples) if samples else []
            if len(scores) != len(samples):
                raise RuntimeError(f"returned {len(scores)} scores for {len(samples)} outputs")
        except Exception as exc:  # a broken metric is reported on every case it could not score
            reason = f"metric {name!r} failed: {type(exc).__name__}: {exc}"
            scores = [Score(None, None, "", {}, reason) for _ in samples]
        for (case, out), score in zip(ok, scores, strict=True):
            rows.append((case.id, out.model, out.repeat, name, _finite(score, name)))
        for case, out in failed:
            rows.append((case.id, out.model, out.repeat, name,
                         Score(None, None, "", {}, f"no output: {out.error}")))
    return rows


def _finite(score: Score, name: str) -> Score:
    if score.value is not None and not math.isfinite(score.value):
        return Score(None, None, score.explanation, score.details,
                     f"metric {name!r} produced a non-finite value ({score.value})")
    return score


def aggregate_scores(metric: Metric, scores: Iterable[Score]) -> Aggregate:
    """The metric's own aggregation over one model's scores."""
    return metric.aggregate(list(scores))
