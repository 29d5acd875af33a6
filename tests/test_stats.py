"""Paired statistics checked against independent implementations (plain loops, scipy, scikit-learn) and by
simulation (A/A false-positive rate, power at the computed MDE, non-inferiority calibration)."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import f1_score

from tunebench import stats

# ---------------------------------------------------------------------------------------------- references


def loop_quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default definition), written out."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def loop_bootstrap(d: list[float], n_resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """One resample at a time, each drawn with its own ``integers`` call, summed exactly."""
    rng = np.random.default_rng(seed)
    n = len(d)
    reps = []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        reps.append(math.fsum(d[i] for i in idx) / n)
    return loop_quantile(reps, (1 - confidence) / 2), loop_quantile(reps, (1 + confidence) / 2)


def loop_holm(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def scored_pair(rng: np.random.Generator, n: int, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two models' [0, 1] scores on the same n cases: a shared case difficulty plus independent noise."""
    difficulty = rng.beta(2, 2, size=n)
    a = np.clip(difficulty + rng.normal(0, 0.15, size=n), 0, 1)
    b = np.clip(difficulty + effect + rng.normal(0, 0.15, size=n), 0, 1)
    return a, b


# ------------------------------------------------------------------------------------------------ bootstrap
def test_vectorised_bootstrap_equals_python_loop_on_the_same_draws():
    rng = np.random.default_rng(11)
    n = 1501  # 2**20 // 1501 = 698 rows per chunk, so 3000 resamples span five chunks
    a, b = scored_pair(rng, n, effect=0.01)
    a_with_errors = [None if i % 97 == 0 else float(v) for i, v in enumerate(a)]
    b_with_errors = [float("nan") if i % 89 == 0 else float(v) for i, v in enumerate(b)]
    interval = stats.paired_bootstrap(a_with_errors, b_with_errors, n_resamples=3000, confidence=0.9, seed=5)

    d = [y - x for x, y in zip(a_with_errors, b_with_errors, strict=True)
         if x is not None and not math.isnan(y)]
    low, high = loop_bootstrap(d, 3000, 0.9, seed=5)
    assert interval.n == len(d) < n
    assert interval.estimate == pytest.approx(math.fsum(d) / len(d), abs=1e-12)
    assert interval.low == pytest.approx(low, abs=1e-12)
    assert interval.high == pytest.approx(high, abs=1e-12)
    assert interval.low < interval.estimate < interval.high


def test_bootstrap_is_deterministic_and_stable_to_the_second_decimal_across_seeds():
    a, b = scored_pair(np.random.default_rng(3), 300, effect=0.03)
    first = stats.paired_bootstrap(a, b, seed=0)
    assert stats.paired_bootstrap(a, b, seed=0) == first
    intervals = [stats.paired_bootstrap(a, b, seed=s) for s in range(6)]
    lows, highs = [i.low for i in intervals], [i.high for i in intervals]
    assert len(set(lows)) > 1  # the seed matters...
    assert max(lows) - min(lows) < 0.005  # ...but not at the second decimal
    assert max(highs) - min(highs) < 0.005


def test_paired_interval_is_much_narrower_than_an_unpaired_one():
    a, b = scored_pair(np.random.default_rng(4), 300)
    paired = stats.paired_bootstrap(a, b, n_resamples=4000)
    rng = np.random.default_rng(0)  # unpaired: each model's cases resampled independently
    reps = b[rng.integers(0, 300, (4000, 300))].mean(1) - a[rng.integers(0, 300, (4000, 300))].mean(1)
    unpaired_width = np.quantile(reps, 0.975) - np.quantile(reps, 0.025)
    assert paired.high - paired.low < 0.6 * unpaired_width


def _resampled_rows(n: int, n_resamples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=n) for _ in range(n_resamples)]


def test_macro_f1_bootstrap_matches_sklearn_on_every_resample():
    rng = np.random.default_rng(8)
    labels = np.array([f"intent_{k}" for k in range(12)])
    gold = labels[rng.integers(0, 12, 60)]  # 60 cases, 12 classes: resamples often miss a class
    pred_a = np.where(rng.random(60) < 0.55, gold, labels[rng.integers(0, 12, 60)])
    pred_b = np.where(rng.random(60) < 0.75, gold, labels[rng.integers(0, 12, 60)])
    pred_b[0] = "unseen_label"  # a predicted class that no gold case has
    interval = stats.paired_bootstrap_stat(pred_a, pred_b, stats.macro_f1_stat(gold), n_resamples=200,
                                           confidence=0.8, seed=2)

    def f1(pred, rows):
        return f1_score(gold[rows], pred[rows], average="macro", zero_division=0)

    full = np.arange(60)
    assert interval.estimate == pytest.approx(f1(pred_b, full) - f1(pred_a, full), abs=1e-12)
    reps = [f1(pred_b, rows) - f1(pred_a, rows) for rows in _resampled_rows(60, 200, seed=2)]
    assert interval.low == pytest.approx(loop_quantile(reps, 0.1), abs=1e-12)
    assert interval.high == pytest.approx(loop_quantile(reps, 0.9), abs=1e-12)


def test_accuracy_stat_and_row_statistic_agree_with_a_loop():
    rng = np.random.default_rng(9)
    gold = rng.integers(0, 3, 80)
    pred_a = np.where(rng.random(80) < 0.6, gold, (gold + 1) % 3)
    pred_b = np.where(rng.random(80) < 0.8, gold, (gold + 2) % 3)
    vectorised = stats.paired_bootstrap_stat(pred_a, pred_b, stats.accuracy_stat(gold), n_resamples=500)
    looped = stats.paired_bootstrap_stat(
        pred_a, pred_b, stats.row_statistic(lambda pred, rows: float(np.mean(pred[rows] == gold[rows]))),
        n_resamples=500)
    reps = [np.mean(pred_b[r] == gold[r]) - np.mean(pred_a[r] == gold[r]) for r in _resampled_rows(80, 500, 0)]
    assert vectorised.low == pytest.approx(loop_quantile(reps, 0.025), abs=1e-12)
    assert vectorised.high == pytest.approx(loop_quantile(reps, 0.975), abs=1e-12)
    assert (looped.low, looped.high) == pytest.approx((vectorised.low, vectorised.high), abs=1e-12)
    # Accuracy is the mean of per-case correctness, so the mean bootstrap on case indices (the same draws)
    # gives the same interval.
    as_means = stats.paired_bootstrap((pred_a == gold) * 1.0, (pred_b == gold) * 1.0, n_resamples=500,
                                      resampling="cases")
    assert (as_means.low, as_means.high) == pytest.approx((vectorised.low, vectorised.high), abs=1e-12)


# ------------------------------------------------------------------------------- resampling by counts
def pass_fail_pair(rng: np.random.Generator, n: int, flip: float = 0.2,
                   effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two models' 0/1 outcomes on n cases: a share ``flip`` of cases differ, ``effect`` more often upwards."""
    a = rng.random(n) < 0.6
    discordant = rng.random(n) < flip
    up = rng.random(n) < (1 + effect / flip) / 2
    return np.where(discordant, ~up, a) * 1.0, np.where(discordant, up, a) * 1.0


def loop_count_bootstrap(d: np.ndarray, n_resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """One multinomial draw of the distinct values' counts per resample, summed exactly."""
    values, counts = np.unique(d, return_counts=True)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_resamples):
        drawn = rng.multinomial(d.size, counts / d.size)
        reps.append(math.fsum(c * v for c, v in zip(drawn.tolist(), values.tolist(), strict=True)) / d.size)
    return loop_quantile(reps, (1 - confidence) / 2), loop_quantile(reps, (1 + confidence) / 2)


def test_counts_resampling_equals_a_loop_on_the_same_draws():
    # Scores on a 0-64 scale: up to 129 distinct differences, so 3000 resamples span several chunks of
    # count vectors; multiples of 1/64 keep every sum exact.
    rng = np.random.default_rng(31)
    a = rng.integers(0, 65, 900) / 64
    b = np.clip(a + rng.integers(-12, 14, 900) / 64, 0, 1)
    interval = stats.paired_bootstrap(a, b, n_resamples=3000, confidence=0.9, seed=8, resampling="counts")
    low, high = loop_count_bootstrap(b - a, 3000, 0.9, seed=8)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert interval.estimate == pytest.approx(float(np.mean(b - a)), abs=1e-12)


def test_auto_resampling_counts_only_few_valued_differences():
    rng = np.random.default_rng(32)
    a, b = pass_fail_pair(rng, 96)  # 3 distinct differences, 32 cases each: counts
    assert stats.paired_bootstrap(a, b) == stats.paired_bootstrap(a, b, resampling="counts")
    a, b = a[:95], b[:95]  # fewer than 32 cases per distinct value: case indices
    assert stats.paired_bootstrap(a, b) == stats.paired_bootstrap(a, b, resampling="cases")
    c, d = scored_pair(rng, 2000)  # continuous scores: every difference distinct
    assert stats.paired_bootstrap(c, d, n_resamples=500) == stats.paired_bootstrap(
        c, d, n_resamples=500, resampling="cases")
    with pytest.raises(ValueError, match="resampling"):
        stats.paired_bootstrap(a, b, resampling="multinomial")  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_counts_and_case_resampling_agree_with_scipy_on_a_real_sized_pass_fail_suite(confidence):
    from scipy.stats import bootstrap

    a, b = pass_fail_pair(np.random.default_rng(33), 2000, flip=0.25, effect=0.02)
    d = b - a
    se = d.std() / math.sqrt(d.size)  # SD of the bootstrap distribution of the mean
    by_counts = stats.paired_bootstrap(a, b, confidence=confidence, seed=1, resampling="counts")
    by_cases = stats.paired_bootstrap(a, b, confidence=confidence, seed=2, resampling="cases")
    reference = bootstrap((d,), np.mean, n_resamples=10_000, confidence_level=confidence, method="percentile",
                          random_state=3, vectorized=True).confidence_interval
    # Three independent Monte Carlo estimates of the same percentiles: equal up to a fifth of a standard
    # error (Monte Carlo error at 10 000 resamples is ~0.04-0.07 SE, the grid of means 1/2000 = 0.05 SE).
    for other in (by_cases, reference):
        assert abs(by_counts.low - other.low) < 0.2 * se and abs(by_counts.high - other.high) < 0.2 * se
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    assert by_counts.high - by_counts.low == pytest.approx(2 * z * se, rel=0.08)


def test_non_inferiority_reads_the_intervals_resamples_in_either_direction_with_counts():
    rng = np.random.default_rng(34)
    a = rng.choice([0.0, 0.31, 0.74, 1.0], 1000)  # a judge's 4-point scale: 13 distinct differences
    b = np.where(rng.random(1000) < 0.3, rng.choice([0.0, 0.31, 0.74, 1.0], 1000), a)
    interval = stats.paired_bootstrap(a, b, confidence=0.9, seed=6)  # drawn as counts
    higher = stats.non_inferiority(a, b, 0.03, seed=6)
    lower = stats.non_inferiority(a, b, 0.03, seed=6, higher_is_better=False)
    # One-sided 95% bounds are the ends of the two-sided 90% interval of the same resamples.
    assert higher.lower == pytest.approx(interval.low, abs=1e-12)
    assert lower.lower == pytest.approx(-interval.high, abs=1e-12)


def test_a_a_pass_fail_suites_trip_the_gate_at_the_nominal_rate_with_either_resampling():
    rng = np.random.default_rng(2026)
    trips = {"counts": 0, "cases": 0}
    for seed in range(SUITES):
        a, b = pass_fail_pair(rng, N_CASES)
        for resampling in trips:
            trips[resampling] += stats.compare_paired(a, b, seed=seed, n_resamples=RESAMPLES,
                                                      resampling=resampling).significant
    for count in trips.values():
        assert abs(count / SUITES - 0.05) <= binomial_tolerance(0.05)


def test_a_planted_pass_rate_effect_is_detected_at_the_nominal_power_with_counts():
    rng = np.random.default_rng(77)
    flip = 0.2
    # Under this alternative the per-case difference has SD sqrt(flip - effect**2); detection needs
    # effect = (z_0.975 + z_0.8) * SD / sqrt(n), solved for effect.
    z = statistics.NormalDist().inv_cdf(0.975) + statistics.NormalDist().inv_cdf(0.8)
    effect = z * math.sqrt(flip / (N_CASES + z * z))
    detected = 0
    for seed in range(SUITES):
        a, b = pass_fail_pair(rng, N_CASES, flip=flip, effect=effect)
        detected += stats.compare_paired(a, b, seed=seed, n_resamples=RESAMPLES).verdict == "better"
    assert abs(detected / SUITES - 0.8) <= binomial_tolerance(0.8)


# ------------------------------------------------------------------------------------- sign-flip test
def exact_sign_flip_p(d: np.ndarray) -> float:
    """Every one of the 2**n sign vectors, enumerated."""
    signs = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
    null = np.abs(signs @ d) / d.size
    return float(np.mean(null >= abs(d.mean()) - 1e-12))


def test_sign_flip_pvalue_matches_full_enumeration_on_small_samples():
    rng = np.random.default_rng(41)
    for n, shift in [(10, 0.0), (13, 0.1), (14, 0.25)]:
        a = rng.random(n)
        b = a + rng.normal(shift, 0.2, n)
        exact = exact_sign_flip_p(b - a)
        got = stats.sign_flip_pvalue(a, b, n_perm=20_000, seed=n)
        assert abs(got - exact) <= 3.5 * math.sqrt(exact * (1 - exact) / 20_000) + 1 / 20_001


def test_sign_flip_pvalue_of_pass_fail_outcomes_matches_the_exact_binomial():
    from scipy.stats import binom

    # 0/1 outcomes: the differences are ±1, so the null sum is 2·Binomial(c, ½) - c over the c flips.
    a, b = pass_fail_pair(np.random.default_rng(42), 2000, flip=0.25, effect=0.015)
    d = b - a
    c, total = int(np.count_nonzero(d)), int(abs(d.sum()))
    exact = float(binom.cdf((c - total) / 2, c, 0.5) + binom.sf((c + total) / 2 - 1, c, 0.5))
    got = stats.sign_flip_pvalue(a, b, n_perm=20_000, seed=3)
    assert 0.001 < exact < 0.5
    assert abs(got - exact) <= 3.5 * math.sqrt(exact * (1 - exact) / 20_000) + 1 / 20_001


def test_sign_flip_pvalue_agrees_with_scipy_permutation_test():
    from scipy.stats import permutation_test

    rng = np.random.default_rng(43)
    a = rng.integers(0, 5, 600) / 4  # a 0-4 rubric: few distinct differences
    b = np.clip(a + rng.choice([-0.25, 0, 0.25, 0.5], 600, p=[0.3, 0.4, 0.2, 0.1]), 0, 1)
    c, d = scored_pair(rng, 400, effect=0.02)  # continuous
    for x, y in [(a, b), (c, d)]:
        got = stats.sign_flip_pvalue(x, y, n_perm=10_000, seed=1)
        ref = permutation_test((y - x,), np.mean, permutation_type="samples", n_resamples=10_000,
                               vectorized=True, random_state=2).pvalue
        assert 0.01 < ref < 0.9
        assert abs(got - ref) <= 3.5 * math.sqrt(2 * ref * (1 - ref) / 10_000)


def test_sign_flip_pvalue_is_calibrated_under_the_null():
    rng = np.random.default_rng(44)
    rejected = {"continuous": 0, "pass/fail": 0}
    for seed in range(SUITES):
        rejected["continuous"] += stats.sign_flip_pvalue(*scored_pair(rng, N_CASES), n_perm=1000, seed=seed) <= 0.05
        rejected["pass/fail"] += stats.sign_flip_pvalue(*pass_fail_pair(rng, 1000), n_perm=1000, seed=seed) <= 0.05
    for count in rejected.values():
        assert abs(count / SUITES - 0.05) <= binomial_tolerance(0.05)


def test_sign_flip_pvalue_edge_cases():
    assert stats.sign_flip_pvalue([0.5, 0.2, 0.1], [0.5, 0.2, 0.1]) == 1.0  # no difference at all
    a, b = scored_pair(np.random.default_rng(45), 50, effect=0.05)
    first = stats.sign_flip_pvalue(a, b, seed=7)
    assert stats.sign_flip_pvalue(a, b, seed=7) == first and 1 / 4001 <= first <= 1
    with_errors = stats.sign_flip_pvalue([*a, None], [*b, 0.3], seed=7)  # an errored case is dropped
    assert with_errors == first
    # Only the two constant sign vectors reach |mean| = 1 (chance 2^-29): the Monte Carlo floor 1/(n_perm + 1).
    assert stats.sign_flip_pvalue([0.0] * 30, [1.0] * 30, n_perm=999) == pytest.approx(1 / 1000)
    with pytest.raises(ValueError, match="n_perm"):
        stats.sign_flip_pvalue(a, b, n_perm=0)


# ---------------------------------------------------------------------------------- counts and exact tests
def test_win_tie_loss_counts_match_a_loop_in_both_directions():
    rng = np.random.default_rng(5)
    a = np.round(rng.random(200), 1)  # coarse values give many exact ties
    b = np.round(rng.random(200), 1)
    b[:5] = a[:5] + 1e-12  # differences within the tolerance are ties
    for higher in (True, False):
        wtl = stats.win_tie_loss(a, b, higher_is_better=higher)
        sign = 1 if higher else -1
        wins = sum(sign * (y - x) > 1e-9 for x, y in zip(a, b, strict=True))
        losses = sum(sign * (y - x) < -1e-9 for x, y in zip(a, b, strict=True))
        assert (wtl.wins, wtl.losses, wtl.ties) == (wins, losses, 200 - wins - losses)


@pytest.mark.parametrize("flip_a, flip_b", [(0.0, 0.0), (0.05, 0.05), (0.1, 0.02), (0.3, 0.3), (0.5, 0.49)])
def test_mcnemar_matches_scipy_binomtest(flip_a, flip_b):
    rng = np.random.default_rng(int(flip_a * 100 + flip_b * 1000))
    base = rng.random(250) < 0.6
    cand = base.copy()
    cand[base & (rng.random(250) < flip_a)] = False
    cand[~base & (rng.random(250) < flip_b)] = True
    a_pass: list[bool | None] = [bool(v) for v in base]
    a_pass[7] = None  # not judged: dropped from the pair
    result = stats.mcnemar_exact(a_pass, cand)
    kept = [i for i in range(250) if i != 7]
    b01 = sum(base[i] and not cand[i] for i in kept)
    b10 = sum(cand[i] and not base[i] for i in kept)
    assert (result.n, result.b01, result.b10) == (249, b01, b10)
    assert result.both_pass + result.both_fail + result.n_discordant == 249
    expected = binomtest(b10, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0
    assert result.pvalue == pytest.approx(expected, rel=1e-10)


def test_mcnemar_exact_p_value_for_extreme_and_large_counts():
    for b01, b10 in [(0, 1), (0, 6), (3, 3), (1, 40), (480, 560), (0, 1200)]:
        a = [True] * b01 + [False] * b10
        b = [False] * b01 + [True] * b10
        expected = binomtest(b10, b01 + b10, 0.5).pvalue
        assert stats.mcnemar_exact(a, b).pvalue == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_holm_matches_a_direct_implementation():
    rng = np.random.default_rng(6)
    cases = [[], [0.03], [0.01, 0.04, 0.03, 0.005], [0.2, 0.2, 0.2], list(rng.random(25) ** 3),
             list(rng.choice([0.001, 0.02, 0.5, 0.9], 12))]
    for p in cases:
        adjusted = stats.holm(p)
        assert adjusted.tolist() == pytest.approx(loop_holm(p), abs=1e-15)
        assert (adjusted >= np.asarray(p)).all() and (adjusted <= 1).all()
        order = np.argsort(p, kind="stable")
        assert (np.diff(adjusted[order]) >= 0).all()
    with pytest.raises(ValueError):
        stats.holm([0.1, 1.5])


# --------------------------------------------------------------------------------------------------- power
def test_mde_matches_the_scipy_normal_formula():
    d = np.random.default_rng(7).normal(0.01, 0.21, 180)
    for alpha, power in [(0.05, 0.8), (0.01, 0.9), (0.1, 0.5)]:
        z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
        assert stats.minimum_detectable_effect(0.2, 150, alpha=alpha, power=power) == pytest.approx(
            z * 0.2 / math.sqrt(150), rel=1e-12)
        assert stats.minimum_detectable_effect(d, alpha=alpha, power=power) == pytest.approx(
            z * statistics.stdev(d) / math.sqrt(180), rel=1e-12)
        assert stats.minimum_detectable_pass_rate_effect(0.2, 400, alpha=alpha, power=power) == pytest.approx(
            100 * max(z * math.sqrt(0.2 / 400), math.ceil(math.log2(2 / alpha)) / 400), rel=1e-12)
    assert stats.minimum_detectable_effect([0.3]) == math.inf


def test_pass_rate_mde_floor_is_the_fewest_flips_exact_mcnemar_can_reject_on():
    floor_pp = stats.minimum_detectable_pass_rate_effect(0.0, 200)
    k = round(floor_pp * 200 / 100)
    assert binomtest(k, k, 0.5).pvalue <= 0.05 < binomtest(k - 1, k - 1, 0.5).pvalue


def test_non_inferiority_reads_the_one_sided_bound_and_respects_direction():
    a, b = scored_pair(np.random.default_rng(12), 300, effect=-0.01)
    result = stats.non_inferiority(a, b, 0.05)
    reps = [np.mean(b[r] - a[r]) for r in _resampled_rows(300, 10_000, seed=0)]
    assert result.lower == pytest.approx(loop_quantile(reps, 0.05), abs=1e-12)
    assert result.non_inferior == (result.lower > -0.05)
    assert result.non_inferior and not stats.non_inferiority(a, b, 0.0).non_inferior
    # A lower-is-better metric: the same data negated must give the same decision.
    flipped = stats.non_inferiority(-a, -b, 0.05, higher_is_better=False)
    assert (flipped.lower, flipped.estimate) == pytest.approx((result.lower, result.estimate), abs=1e-12)


# ------------------------------------------------------------------------------------------------ simulation
SUITES, N_CASES, RESAMPLES = 600, 150, 1000


def binomial_tolerance(p: float) -> float:
    return 3.5 * math.sqrt(p * (1 - p) / SUITES)


def test_a_a_suites_trip_the_significance_gate_at_the_nominal_rate():
    rng = np.random.default_rng(2024)
    trips = mcnemar_trips = 0
    for seed in range(SUITES):
        a, b = scored_pair(rng, N_CASES)
        result = stats.compare_paired(a, b, a_pass=a > 0.5, b_pass=b > 0.5, seed=seed, n_resamples=RESAMPLES)
        trips += result.significant
        mcnemar_trips += result.mcnemar is not None and result.mcnemar.pvalue <= 0.05
    assert abs(trips / SUITES - 0.05) <= binomial_tolerance(0.05)
    # The exact test is conservative: at most the nominal rate.
    assert mcnemar_trips / SUITES <= 0.05 + binomial_tolerance(0.05)


def test_a_true_effect_equal_to_the_mde_is_detected_at_the_nominal_power():
    rng = np.random.default_rng(7)
    sd_case, sd_noise = 0.2, 0.15
    effect = stats.minimum_detectable_effect(sd_noise * math.sqrt(2), N_CASES)  # SD of b - a
    detected = 0
    for seed in range(SUITES):
        difficulty = rng.normal(0.5, sd_case, N_CASES)
        a = difficulty + rng.normal(0, sd_noise, N_CASES)
        b = difficulty + effect + rng.normal(0, sd_noise, N_CASES)
        detected += stats.compare_paired(a, b, seed=seed, n_resamples=RESAMPLES).verdict == "better"
    assert abs(detected / SUITES - 0.8) <= binomial_tolerance(0.8)


def test_non_inferiority_at_exactly_the_margin_passes_at_the_nominal_rate():
    rng = np.random.default_rng(99)
    margin, passed = 0.03, 0
    for seed in range(SUITES):
        difficulty = rng.normal(0.5, 0.2, N_CASES)
        a = difficulty + rng.normal(0, 0.15, N_CASES)
        b = difficulty - margin + rng.normal(0, 0.15, N_CASES)
        passed += stats.non_inferiority(a, b, margin, seed=seed, n_resamples=RESAMPLES).non_inferior
    assert abs(passed / SUITES - 0.05) <= binomial_tolerance(0.05)


# --------------------------------------------------------------------------------------------- compare_paired
def test_compare_paired_bundles_consistent_numbers():
    a, b = scored_pair(np.random.default_rng(13), 300, effect=0.04)
    a_vals: list[float | None] = list(a)
    b_vals: list[float | None] = list(b)
    a_vals[3] = None  # baseline errored
    b_vals[10] = None  # candidate errored
    a_pass: list[bool | None] = [v is not None and v > 0.5 for v in a_vals]
    b_pass: list[bool | None] = [v is not None and v > 0.5 for v in b_vals]
    a_pass[20] = None  # not judged
    result = stats.compare_paired(a_vals, b_vals, a_pass=a_pass, b_pass=b_pass, seed=4, n_resamples=2000)

    keep = [i for i in range(300) if i not in (3, 10, 20)]
    ka, kb = a[keep], b[keep]
    assert (result.n, result.n_excluded) == (297, 3)
    assert result.mean_a == pytest.approx(statistics.fmean(ka)) and result.delta == pytest.approx(
        statistics.fmean(kb) - statistics.fmean(ka))
    assert result.interval == stats.paired_bootstrap(ka, kb, seed=4, n_resamples=2000)
    assert result.sd_diff == pytest.approx(statistics.stdev(kb - ka))
    assert result.mde == pytest.approx(stats.minimum_detectable_effect(kb - ka))
    assert result.win_tie_loss == stats.win_tie_loss(ka, kb)
    assert result.mcnemar == stats.mcnemar_exact(ka > 0.5, kb > 0.5)
    assert result.mde_pass_rate == pytest.approx(
        stats.minimum_detectable_pass_rate_effect(result.mcnemar.n_discordant / 297, 297))
    assert result.significant and result.verdict == "better"


def test_verdict_follows_the_metric_direction():
    a, b = scored_pair(np.random.default_rng(14), 300, effect=0.06)  # b is higher
    assert stats.compare_paired(a, b, higher_is_better=True).verdict == "better"
    lower = stats.compare_paired(a, b, higher_is_better=False)  # e.g. latency: higher is worse
    assert lower.verdict == "worse" and lower.win_tie_loss.wins < lower.win_tie_loss.losses
    same = stats.compare_paired(a, a)
    assert not same.significant and same.verdict == "no clear difference"
    assert same.win_tie_loss.ties == 300 and same.mde == 0.0


def test_misuse_raises_value_error():
    with pytest.raises(ValueError, match="aligned"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="both models"):
        stats.compare_paired([None, 1.0], [1.0, None])
    with pytest.raises(ValueError, match="both models or for neither"):
        stats.compare_paired([1.0, 2.0], [1.0, 2.0], a_pass=[True, False])
    with pytest.raises(ValueError, match="infinite"):
        stats.paired_bootstrap([1.0, math.inf], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        stats.paired_bootstrap([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="margin"):
        stats.non_inferiority([1.0, 2.0], [1.0, 2.0], -0.1)


# ---------------------------------------------------------------------------------------- case listings
def test_flips_split_regressions_and_fixes_sorted_by_size_of_change():
    ids = ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    a_pass = [True, True, False, False, True, None, True]
    b_pass = [False, False, True, True, True, False, False]
    a_val = [0.9, 0.8, 0.1, 0.3, 0.9, 0.9, 0.7]
    b_val = [0.7, 0.1, 0.9, 0.6, 0.95, 0.0, None]
    result = stats.flips(ids, a_pass, b_pass, a_val, b_val)
    assert [f.case_id for f in result.regressions] == ["c2", "c1", "c7"]  # |−0.7|, |−0.2|, missing value
    assert [f.case_id for f in result.fixes] == ["c3", "c4"]
    assert result.regressions[0].change == pytest.approx(0.1 - 0.8)
    assert result.regressions[2].change is None and result.regressions[2].b_value is None


def test_case_means_summarise_repeats_and_flag_unstable_cases():
    values = [[0.5, 0.7, 0.6], [0.2, None, 0.4], [None, None, None], [0.9, 0.9, 0.9], [0.1, 0.1, 0.2]]
    passes = [[True, True, True], [False, None, True], [None, None, None], [True, False, True],
              [False, False, False]]
    summary = stats.case_means(values, passes)
    for i in (0, 1, 3, 4):
        ok = [v for v in values[i] if v is not None]
        assert summary.mean[i] == pytest.approx(statistics.fmean(ok))
        assert summary.std[i] == pytest.approx(statistics.stdev(ok))
        assert (summary.min[i], summary.max[i]) == (min(ok), max(ok))
    assert math.isnan(summary.mean[2]) and summary.n_ok.tolist() == [3, 2, 0, 3, 3]
    assert summary.unstable.tolist() == [False, True, False, True, False] and summary.n_unstable == 2
    assert summary.pass_rate is not None and summary.pass_rate[3] == pytest.approx(2 / 3)
    # An all-errored case is an errored case downstream.
    assert stats.paired_bootstrap(summary.mean, summary.mean + 0.1, n_resamples=50).n == 4


def test_identity_rate_normalises_whitespace_and_skips_missing_outputs():
    a = ["Hello  world\n", "same", "x", None, "tab\tsep"]
    b = ["Hello world", "different", "x ", "y", " tab sep "]
    assert stats.identity_rate(a, b) == pytest.approx(3 / 4)
    assert stats.identity_rate([], []) == 0.0


def test_importing_stats_loads_neither_scipy_nor_sklearn():
    code = "import sys, tunebench.stats; print(any(m in sys.modules for m in ('scipy', 'sklearn')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_macro_f1_excluding_invalid_matches_sklearn_with_declared_labels() -> None:

    rng = np.random.default_rng(5)
    labels = [f"l{i}" for i in range(6)]
    gold = rng.choice(labels, size=80)
    pred = np.where(rng.random(80) < 0.15, "<invalid>", np.where(rng.random(80) < 0.6, gold, rng.choice(labels, 80)))
    stat = stats.macro_f1_stat(gold, exclude="<invalid>")
    idx = rng.integers(0, 80, size=(40, 80))
    got = stat(pred, idx)
    for row, value in zip(idx, got, strict=True):
        present = sorted(set(gold[row]) | (set(pred[row]) - {"<invalid>"}))
        want = f1_score(gold[row], pred[row], labels=present, average="macro", zero_division=0)
        assert value == pytest.approx(want, abs=1e-12)
