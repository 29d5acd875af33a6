"""latency: per-case values, honest errors for cached / unmeasured outputs, percentiles checked with statistics."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import latency as latency_module
from tunebench.metrics.latency import latency
from tunebench.records import Case, Output, Sample


def sample(latency_ms: float | None, *, cached: bool = False) -> Sample:
    case = Case(id="c1", input="q", expected="a")
    return Sample(case, Output(case_id="c1", model="m", repeat=0, text="a", latency_ms=latency_ms, cached=cached))


def build(**options):
    return latency.__tunebench_metric__.build(options, MetricContext(suite_dir=Path.cwd()))


def test_value_is_the_latency_and_lower_is_better():
    metric = build()
    assert metric.higher_is_better is False
    score = metric.score(sample(812.4))
    assert (score.value, score.passed, score.error) == (812.4, None, None)
    assert score.explanation == "812 ms"
    json.dumps(score.details)


def test_max_ms_passes_at_or_below():
    metric = build(max_ms=1000)
    assert metric.score(sample(999.9)).passed is True
    assert metric.score(sample(1000.0)).passed is True
    over = metric.score(sample(1000.1))
    assert over.passed is False
    assert over.explanation == "1000 ms (over 1000 ms)"


def test_cached_and_unmeasured_outputs_are_errors_not_zero():
    metric = build(max_ms=500)
    cached = metric.score(sample(3.0, cached=True))
    assert cached.value is None and cached.passed is None
    assert cached.error == "cached response: no latency measured"
    missing = metric.score(sample(None))
    assert missing.value is None and "no latency measured" in missing.error
    for bad in (float("nan"), float("inf"), -5.0):
        score = metric.score(sample(bad))
        assert score.value is None and "invalid latency" in score.error


def test_aggregate_percentiles_match_statistics_quantiles():
    rng = random.Random(3)
    values = [rng.lognormvariate(6.5, 0.6) for _ in range(137)]
    metric = build(max_ms=1200)
    scores = metric.score_batch([sample(v) for v in values] + [sample(1.0, cached=True), sample(None)])
    agg = metric.aggregate(scores)
    # statistics' "inclusive" method is the linear interpolation numpy.percentile uses by default.
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for p in (50, 90, 95, 99):
        assert math.isclose(agg.details[f"p{p}"], cuts[p - 1], rel_tol=1e-12)
    assert math.isclose(agg.value, statistics.fmean(values), rel_tol=1e-12)
    assert agg.details["mean"] == agg.value
    assert (agg.details["min"], agg.details["max"]) == (min(values), max(values))
    assert (agg.n, agg.n_errors) == (137, 2)
    assert agg.pass_rate == sum(v <= 1200 for v in values) / 137
    json.dumps(agg.details)


def test_aggregate_small_hand_checked():
    agg = build().aggregate(build().score_batch([sample(v) for v in (100.0, 200.0, 300.0, 400.0, 500.0)]))
    # Linear interpolation on ranks 0..4: p50 = 300, p90 = 460, p95 = 480, p99 = 496.
    assert agg.details == {
        "p50": 300.0,
        "p90": 460.0,
        "p95": 480.0,
        "p99": 496.0,
        "mean": 300.0,
        "min": 100.0,
        "max": 500.0,
    }


def test_aggregate_with_nothing_measured():
    metric = build()
    agg = metric.aggregate(metric.score_batch([sample(5.0, cached=True), sample(None)]))
    assert (agg.value, agg.n, agg.n_errors, agg.details) == (None, 0, 2, {})


@pytest.mark.parametrize("max_ms", [0, -10, float("nan")])
def test_bad_max_ms(max_ms):
    with pytest.raises(ConfigError, match="max_ms"):
        build(max_ms=max_ms)


def test_plugin_hook_registers_latency():
    registered = []
    latency_module.register_metrics(register=registered.append)
    assert [(f.__tunebench_metric__.kind, f.__tunebench_metric__.family) for f in registered] == [("latency", "cost")]
