"""Paired statistics: is the difference between the candidate (tuned) and the baseline (base) model real?

Both models answered the same golden cases, so every comparison here is *paired* case by case: the unit of
analysis is the per-case difference ``d[i] = b[i] - a[i]`` (candidate minus baseline), which removes the
case-difficulty variance that an unpaired test (lm-eval's z-test) leaves in. Pure numerical core: numpy and
the standard library only, no I/O; the random draws live in :mod:`.resampling`.

Invariants:
- Orientation: ``a`` is always the baseline, ``b`` the candidate; differences, intervals and ``delta`` are
  ``b - a`` in the metric's own units. Only verdicts, wins and non-inferiority read ``higher_is_better``.
- ``None`` or NaN marks an errored case (or repeat). Paired functions drop a case when *either* side errored
  and count the dropped cases; they never impute. Infinite values are rejected.
- Every random quantity is a deterministic function of ``seed``: one ``numpy.random.default_rng(seed)`` draws
  the resamples row after row, so results do not depend on the chunk size that bounds memory, and all
  statistics of one comparison see the same resamples. A resample is either ``n`` case indices, or (for a
  mean whose per-case differences take few distinct values) the multinomial count of each distinct value:
  both give the same bootstrap distribution (see :data:`Resampling`); which one is used depends only on the
  data and the ``resampling`` argument, never on memory.
- Caller misuse (misaligned lengths, no usable case, confidence outside (0, 1)) raises ``ValueError``: user
  configuration is validated, with file and line, by the layer that reads it before it reaches this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from .resampling import Resampling, mean_replicates, replicates, sign_flip_null_sums

__all__ = [
    "Flip", "Flips", "Interval", "McNemar", "NonInferiority", "PairedComparison", "RepeatSummary",
    "Resampling", "StatFn", "Verdict", "WinTieLoss", "accuracy_stat", "case_means", "compare_paired",
    "flipped_cases", "flips", "holm", "identity_rate", "macro_f1_stat", "mcnemar_exact", "minimum_detectable_effect",
    "minimum_detectable_pass_rate_effect", "non_inferiority", "paired_bootstrap", "paired_bootstrap_stat",
    "row_statistic", "sign_flip_pvalue", "win_tie_loss",
]

Verdict = Literal["better", "worse", "no clear difference"]

StatFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``stat_fn(items, idx) -> values``: ``idx`` is an int matrix of shape (m, n) whose rows are resampled case
indices; return the statistic of ``items[row]`` for every row, shape (m,). Row ``arange(n)`` is the observed
data."""

# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Interval:
    """A paired bootstrap confidence interval for candidate minus baseline."""

    estimate: float
    """The statistic on the observed cases: ``mean(b - a)``, or ``stat(b) - stat(a)``."""
    low: float
    """Lower end of the two-sided interval (percentile of the bootstrap distribution)."""
    high: float
    """Upper end of the two-sided interval."""
    confidence: float
    """Two-sided coverage, e.g. 0.95."""
    n: int
    """Paired cases used (after dropping errored ones)."""
    n_resamples: int
    """Bootstrap resamples drawn."""
    seed: int
    """Seed of the resample indices; the same seed gives the same interval."""
    method: str = "percentile"
    """How the ends were read off the bootstrap distribution."""

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely on one side of zero (the two-sided test at 1 - confidence rejects)."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True, slots=True)
class WinTieLoss:
    """Per-case record of the candidate against the baseline, direction-aware."""

    wins: int
    """Cases where the candidate is better by more than the tolerance."""
    ties: int
    """Cases within the tolerance."""
    losses: int
    """Cases where the candidate is worse by more than the tolerance."""

    @property
    def n(self) -> int:
        """Cases counted."""
        return self.wins + self.ties + self.losses


@dataclass(frozen=True, slots=True)
class McNemar:
    """Exact McNemar test on paired pass/fail outcomes."""

    n: int
    """Paired cases with a pass/fail on both sides."""
    b01: int
    """Regressions: baseline passed, candidate failed."""
    b10: int
    """Fixes: baseline failed, candidate passed."""
    both_pass: int
    """Cases both models pass (carry no information about the difference)."""
    both_fail: int
    """Cases both models fail."""
    pvalue: float
    """Exact two-sided binomial p-value of ``b10`` among the discordant pairs with p = 0.5; 1 with none."""

    @property
    def n_discordant(self) -> int:
        """Cases whose outcome flipped (regressions plus fixes)."""
        return self.b01 + self.b10


@dataclass(frozen=True, slots=True)
class NonInferiority:
    """One-sided test that the candidate is not worse than the baseline by more than a margin."""

    margin: float
    """The margin δ ≥ 0, in the metric's units: how much worse is still acceptable."""
    estimate: float
    """Observed improvement: ``mean(b - a)`` if higher is better, else ``mean(a - b)``."""
    lower: float
    """Lower bound of the one-sided ``confidence`` interval of the improvement."""
    confidence: float
    """One-sided coverage, e.g. 0.95 (a test at α = 1 - confidence)."""
    n: int
    """Paired cases used."""
    non_inferior: bool
    """``lower > -margin``: a loss larger than the margin is ruled out at this confidence."""


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Everything :func:`compare_paired` knows about one metric, base against tuned."""

    n: int
    """Paired cases used."""
    n_excluded: int
    """Cases dropped because either side errored (no value, or no pass/fail when pass/fail was given)."""
    mean_a: float
    """Baseline mean over the paired cases."""
    mean_b: float
    """Candidate mean over the paired cases."""
    delta: float
    """``mean_b - mean_a`` (metric units, not direction-adjusted)."""
    sd_diff: float
    """Standard deviation (ddof=1) of the per-case differences; 0 with fewer than two cases."""
    interval: Interval
    """Paired bootstrap interval of ``delta``."""
    win_tie_loss: WinTieLoss
    """Per-case wins, ties and losses of the candidate (direction-aware)."""
    mcnemar: McNemar | None
    """Exact McNemar test when pass/fail outcomes were given."""
    mde: float
    """Smallest true ``|delta|`` detectable with the requested power at this n and observed ``sd_diff``."""
    mde_pass_rate: float | None
    """Smallest detectable pass-rate change in percentage points, when pass/fail outcomes were given."""
    higher_is_better: bool
    """Direction of the metric."""
    significant: bool
    """The interval excludes 0."""
    verdict: Verdict
    """``better`` / ``worse`` when significant (direction-aware), else ``no clear difference``."""


@dataclass(frozen=True, slots=True)
class Flip:
    """One case whose pass/fail outcome changed between baseline and candidate."""

    case_id: str
    """The golden case."""
    a_value: float | None
    """Baseline metric value."""
    b_value: float | None
    """Candidate metric value."""
    change: float | None
    """``b_value - a_value``; ``None`` when either value is missing."""


@dataclass(frozen=True, slots=True)
class Flips:
    """Cases whose outcome flipped, each list sorted by ``|change|`` (largest first, then case id)."""

    regressions: tuple[Flip, ...]
    """Baseline passed, candidate failed."""
    fixes: tuple[Flip, ...]
    """Baseline failed, candidate passed."""


@dataclass(frozen=True, eq=False)
class RepeatSummary:
    """Per-case summary over repeats (arrays aligned with the input rows)."""

    mean: np.ndarray
    """Mean over the case's successful repeats; NaN when every repeat errored (an errored case)."""
    std: np.ndarray
    """Sample standard deviation (ddof=1) over successful repeats; 0 with fewer than two."""
    min: np.ndarray
    """Smallest value over successful repeats; NaN when none."""
    max: np.ndarray
    """Largest value over successful repeats; NaN when none."""
    n_ok: np.ndarray
    """Successful repeats per case."""
    pass_rate: np.ndarray | None
    """Share of passing repeats per case (NaN when none was judged); ``None`` without pass/fail."""
    unstable: np.ndarray
    """True when the case both passed and failed across its repeats."""

    @property
    def n_unstable(self) -> int:
        """Cases whose pass/fail is not reproducible across repeats."""
        return int(self.unstable.sum())


# ---------------------------------------------------------------------------------------------- input shaping
def _values(x: Sequence[float | None] | np.ndarray, name: str) -> np.ndarray:
    """1-D float array; ``None`` becomes NaN (an errored case)."""
    if isinstance(x, np.ndarray) and x.dtype != object:
        arr = x.astype(float, copy=False)
    else:
        arr = np.array([np.nan if v is None else v for v in x], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} holds an infinite value; mark errored cases with None or NaN")
    return arr


def _passes(x: Sequence[bool | None] | np.ndarray, name: str) -> np.ndarray:
    """1-D float array of 1 (pass), 0 (fail) and NaN (not judged)."""
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        # The array form of _pass_value: NaN stays "not judged", any other non-zero value is a pass.
        arr = np.where(np.isnan(x), np.nan, x != 0) if x.dtype.kind == "f" else (x != 0).astype(float)
    else:
        arr = np.array([_pass_value(v) for v in x], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    return arr


def _pass_value(v: Any) -> float:
    # NaN is truthy, so it must be caught before bool(): a NaN pass/fail means "not judged", not "passed".
    if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
        return math.nan
    return float(bool(v))


def _same_length(**arrays: Any) -> int:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"paired inputs must be aligned case by case, got lengths {detail}")
    return next(iter(lengths.values()))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _paired(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Aligned values with every case where either side errored dropped."""
    av, bv = _values(a, "a"), _values(b, "b")
    _same_length(a=av, b=bv)
    keep = ~(np.isnan(av) | np.isnan(bv))
    if not keep.any():
        raise ValueError("no case has a value from both models (every case errored on one side)")
    return av[keep], bv[keep]


# ------------------------------------------------------------------------------------------------- bootstrap
def _interval(estimate: float, reps: np.ndarray, confidence: float, n: int, seed: int) -> Interval:
    # Percentile ends, not BCa: for means of bounded per-case scores at n ≳ 50 the percentile interval is
    # already close to nominal (the A/A simulation in tests/test_stats.py checks it), while BCa needs a
    # jackknife (n more stat_fn calls) and its acceleration term is erratic on the many exact ties (d = 0)
    # of pass/fail and exact-match metrics.
    low, high = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(estimate), float(low), float(high), confidence, n, int(reps.size), seed)


def paired_bootstrap(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    resampling: Resampling = "auto",
) -> Interval:
    """Percentile bootstrap interval of the mean per-case difference ``b - a``, cases resampled as pairs.

    Cases where either side is None/NaN are dropped first (``Interval.n`` counts the rest). Cost with
    ``cases`` resampling: one gather of ``n_resamples × n`` values, about 15 ms for n = 300 and 10 000
    resamples; with ``counts`` (pass/fail-like differences, see :data:`Resampling`) 2-4 ms at any n.
    """
    _check_confidence(confidence)
    av, bv = _paired(a, b)
    d = bv - av
    reps = mean_replicates(d, n_resamples, seed, resampling)
    return _interval(float(d.mean()), reps, confidence, d.size, seed)


def paired_bootstrap_stat(
    a_items: Sequence[Any] | np.ndarray,
    b_items: Sequence[Any] | np.ndarray,
    stat_fn: StatFn,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired bootstrap interval of ``stat_fn(b) - stat_fn(a)`` for a statistic that is not a per-case mean.

    ``a_items`` / ``b_items`` are the two models' per-case items (predicted labels, sufficient statistics…),
    aligned case by case and already filtered to cases both models answered. Both sides are evaluated on the
    same resampled case sets, which is what makes the interval paired. See :data:`StatFn`,
    :func:`accuracy_stat`, :func:`macro_f1_stat` and :func:`row_statistic`.
    """
    _check_confidence(confidence)
    av, bv = np.asarray(a_items), np.asarray(b_items)
    n = _same_length(a_items=av, b_items=bv)
    if n == 0:
        raise ValueError("no paired cases to bootstrap")
    full = np.arange(n)[None, :]
    estimate = float(np.asarray(stat_fn(bv, full))[0] - np.asarray(stat_fn(av, full))[0])
    reps = replicates(n, lambda idx: np.asarray(stat_fn(bv, idx)) - np.asarray(stat_fn(av, idx)),
                       n_resamples, seed)
    return _interval(estimate, reps, confidence, n, seed)


def accuracy_stat(gold: Sequence[Any] | np.ndarray) -> StatFn:
    """Accuracy of predicted labels against ``gold`` (resampled with the same indices)."""
    gold_arr = np.asarray(gold)

    def stat(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return (pred == gold_arr)[idx].mean(axis=1)

    return stat


def macro_f1_stat(gold: Sequence[Any] | np.ndarray, *, exclude: Any = None) -> StatFn:
    """Macro-F1 of predicted labels against ``gold``, vectorised over resamples.

    Matches ``sklearn.metrics.f1_score(gold[row], pred[row], average="macro", zero_division=0)`` on every
    row: the classes averaged are those present in that resample's gold or predictions, and a class's F1 is
    ``2·tp / (gold count + predicted count)``. Cost: one gather and one ``bincount`` over ``m × n`` codes of
    (gold, predicted) pairs, then per-class sums over the distinct pairs (about 0.1 s for n = 2 000 and
    10 000 resamples), not ``m`` separate F1 computations. The codes of the last two prediction arrays are
    kept between calls (the two models' predictions, chunk after chunk): do not modify one in place between
    calls.

    ``exclude`` names a prediction that is never a class of its own (an *invalid* prediction): it counts as
    wrong for its gold class but is not averaged, as with sklearn's ``labels=`` the declared label set.
    """
    gold_arr = np.asarray(gold)
    seen: list[tuple[np.ndarray, _PairCodes]] = []

    def codes_of(pred: np.ndarray) -> _PairCodes:
        for arr, codes in seen:
            if arr is pred:
                return codes
        codes = _PairCodes.of(gold_arr, pred, exclude)
        seen[:] = [(pred, codes), *seen[:1]]
        return codes

    def stat(pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
        c = codes_of(pred)
        m, k = idx.shape[0], c.n_classes
        # One bincount for everything: row r's (gold, predicted) pair t lands in bin r*T + t.
        n_pairs = c.gold_of_pair.size
        bins = (c.pair_of_case[idx] + (np.arange(m) * n_pairs)[:, None]).ravel()
        counts = np.bincount(bins, minlength=m * n_pairs).reshape(m, n_pairs)
        gold_n = np.zeros((m, k), dtype=np.int64)
        pred_n = np.zeros((m, k), dtype=np.int64)
        tp = np.zeros((m, k), dtype=np.int64)
        # Pairs are sorted by gold class, so each gold class's pairs are one run of columns.
        gold_n[:, c.gold_classes] = np.add.reduceat(counts, c.gold_starts, axis=1)
        pred_n[:, c.pred_classes] = np.add.reduceat(counts[:, c.by_pred], c.pred_starts, axis=1)
        tp[:, c.diagonal_classes] = counts[:, c.diagonal_pairs]
        denom = gold_n + pred_n
        present = (denom > 0) & c.averaged
        f1 = np.divide(2 * tp, denom, out=np.zeros((m, k)), where=present)
        return f1.sum(axis=1) / present.sum(axis=1)

    return stat


@dataclass(frozen=True, eq=False)
class _PairCodes:
    """Labels coded once for :func:`macro_f1_stat`: each case's (gold, predicted) pair among the distinct pairs."""

    n_classes: int
    averaged: np.ndarray
    """Per class: may count in the average (every class but ``exclude``)."""
    pair_of_case: np.ndarray
    gold_of_pair: np.ndarray
    gold_classes: np.ndarray
    gold_starts: np.ndarray
    by_pred: np.ndarray
    pred_classes: np.ndarray
    pred_starts: np.ndarray
    diagonal_pairs: np.ndarray
    diagonal_classes: np.ndarray

    @classmethod
    def of(cls, gold: np.ndarray, pred: np.ndarray, exclude: Any) -> _PairCodes:
        uniques, codes = np.unique(np.concatenate([gold, pred]), return_inverse=True)
        k = uniques.size
        pairs, pair_of_case = np.unique(codes[: gold.size] * k + codes[gold.size :], return_inverse=True)
        gold_of_pair, pred_of_pair = pairs // k, pairs % k
        gold_classes, gold_starts = np.unique(gold_of_pair, return_index=True)
        by_pred = np.argsort(pred_of_pair, kind="stable")
        pred_classes, pred_starts = np.unique(pred_of_pair[by_pred], return_index=True)
        diagonal = np.flatnonzero(gold_of_pair == pred_of_pair)
        averaged = np.ones(k, dtype=bool) if exclude is None else uniques != exclude
        return cls(k, averaged, pair_of_case.reshape(-1), gold_of_pair, gold_classes, gold_starts, by_pred,
                   pred_classes, pred_starts, diagonal, gold_of_pair[diagonal])


def row_statistic(fn: Callable[[np.ndarray, np.ndarray], float]) -> StatFn:
    """Adapt a one-resample statistic ``fn(items, row_indices) -> float`` to a :data:`StatFn`.

    It loops in Python, one call per resample: use it for statistics with no vectorised form (corpus-level
    scores computed from per-case sufficient statistics are better written as ``counts @ stats``), and lower
    ``n_resamples`` if one call is slow.
    """

    def stat(items: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.array([fn(items, row) for row in idx], dtype=float)

    return stat


# ------------------------------------------------------------------------------------- randomisation test
def sign_flip_pvalue(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    n_perm: int = 4000,
    seed: int = 0,
) -> float:
    """Two-sided paired randomisation (sign-flip) test of ``mean(b - a) = 0``, Monte Carlo.

    Under the null each difference is as likely to have either sign, so the p-value is
    ``(1 + #{|mean(s·d)| >= |mean(d)|}) / (n_perm + 1)`` over ``n_perm`` random sign vectors ``s`` (never 0,
    valid at any n); 1 when every difference is 0. Cases where either side errored are dropped.

    Zero differences do not move the null mean, so only the non-zero ones are flipped, and two draws give the
    same null distribution at a fraction of the cost of ``n_perm × n`` signs: with few distinct ``|d|``
    (pass/fail metrics: one) the flips of a value ``v`` met ``c`` times add ``v·(2·Binomial(c, ½) - c)``;
    otherwise each random byte picks one of the 256 precomputed sign sums of a block of 8 cases.
    """
    if n_perm < 1:
        raise ValueError(f"n_perm must be at least 1, got {n_perm}")
    av, bv = _paired(a, b)
    d = bv - av
    n = d.size
    observed = abs(float(d.mean()))
    nonzero = d[d != 0]
    if nonzero.size == 0:
        return 1.0
    null_sums = sign_flip_null_sums(nonzero, n_perm, seed)
    # The tolerance counts sign vectors that reproduce the observed |mean| up to rounding as "as extreme".
    extreme = int(np.sum(np.abs(null_sums) / n >= observed - 1e-12))
    return (1 + extreme) / (n_perm + 1)


# ------------------------------------------------------------------------------------------ per-case counts
def win_tie_loss(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    tol: float = 1e-9,
    higher_is_better: bool = True,
) -> WinTieLoss:
    """Count cases where the candidate beats, ties (``|b - a| <= tol``) or loses to the baseline."""
    av, bv = _paired(a, b)
    d = bv - av if higher_is_better else av - bv
    wins, losses = int((d > tol).sum()), int((d < -tol).sum())
    return WinTieLoss(wins, int(d.size) - wins - losses, losses)


def _binom_half_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n trials at p = 0.5: ``min(1, 2·P(X ≤ min(k, n-k)))``.

    Exact integer arithmetic (Python's int / int is correctly rounded), O(min(k, n-k)) steps on n-bit ints.
    """
    k = min(k, n - k)
    if 2 * k >= n:
        return 1.0
    term = total = 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return min(1.0, (2 * total) / (1 << n))


def mcnemar_exact(
    a_pass: Sequence[bool | None] | np.ndarray,
    b_pass: Sequence[bool | None] | np.ndarray,
) -> McNemar:
    """Exact McNemar test of paired pass/fail outcomes (cases judged on one side only are dropped).

    Equals ``scipy.stats.binomtest(b10, b01 + b10, 0.5).pvalue``; with no discordant pair the p-value is 1.
    """
    ap, bp = _passes(a_pass, "a_pass"), _passes(b_pass, "b_pass")
    _same_length(a_pass=ap, b_pass=bp)
    keep = ~(np.isnan(ap) | np.isnan(bp))
    ap, bp = ap[keep].astype(bool), bp[keep].astype(bool)
    b01, b10 = int((ap & ~bp).sum()), int((~ap & bp).sum())
    return McNemar(
        n=int(ap.size), b01=b01, b10=b10, both_pass=int((ap & bp).sum()), both_fail=int((~ap & ~bp).sum()),
        pvalue=_binom_half_two_sided(b10, b01 + b10),
    )


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone in the raw order, clipped to 1).

    Reject hypothesis i at family-wise level α when ``adjusted[i] <= α``.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError("pvalues must be one-dimensional")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p-values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# ---------------------------------------------------------------------------------------------------- power
def _z_sum(alpha: float, power: float) -> float:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    z = NormalDist().inv_cdf
    return z(1 - alpha / 2) + z(power)


def minimum_detectable_effect(
    diffs_or_sd: Sequence[float | None] | np.ndarray | float,
    n: int | None = None,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """Smallest true mean paired difference a two-sided level-α test detects with probability ``power``.

    Normal approximation ``(z_{1-α/2} + z_{power}) · sd / √n``. Pass the per-case differences (their sample
    SD is used, NaN dropped, ``n`` defaults to their count) or a planning SD together with ``n``. Returns
    ``inf`` when fewer than two differences leave the SD unknown.
    """
    zs = _z_sum(alpha, power)
    if np.ndim(diffs_or_sd) == 0:
        sd = float(diffs_or_sd)  # type: ignore[arg-type]
        if n is None:
            raise ValueError("n is required when a standard deviation is given")
    else:
        d = _values(diffs_or_sd, "diffs")  # type: ignore[arg-type]
        d = d[~np.isnan(d)]
        n = d.size if n is None else n
        if d.size < 2:
            return math.inf
        sd = float(d.std(ddof=1))
    if sd < 0 or math.isnan(sd):
        raise ValueError(f"standard deviation must be a non-negative number, got {sd}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return zs * sd / math.sqrt(n)


def minimum_detectable_pass_rate_effect(
    discordant_rate: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest detectable pass-rate change, in percentage points, for paired pass/fail outcomes.

    Under no difference a case's pass/fail difference is ±1 with probability ``discordant_rate`` (the share
    of cases that flip either way) and 0 otherwise, so its SD is ``√discordant_rate``; the MDE is the normal
    approximation of :func:`minimum_detectable_effect` with that SD. It is never below the count the exact
    McNemar test needs at all: ``k`` one-directional flips with ``2·0.5^k ≤ α`` (6 at α = 0.05), i.e.
    ``100·k/n`` points — which also keeps an observed discordant rate of 0 from promising an MDE of 0.
    """
    if not 0 <= discordant_rate <= 1:
        raise ValueError(f"discordant_rate must be in [0, 1], got {discordant_rate}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    normal = _z_sum(alpha, power) * math.sqrt(discordant_rate / n)
    k_min = math.ceil(math.log2(2 / alpha))
    return 100 * min(1.0, max(normal, k_min / n))


def non_inferiority(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    delta: float,
    *,
    confidence: float = 0.95,
    higher_is_better: bool = True,
    n_resamples: int = 10_000,
    seed: int = 0,
    resampling: Resampling = "auto",
) -> NonInferiority:
    """Is the candidate not worse than the baseline by more than ``delta`` (metric units)?

    Bootstrap lower bound of the one-sided ``confidence`` interval of the improvement (``b - a``, or
    ``a - b`` when lower is better); non-inferior when it exceeds ``-delta``. The same resamples as
    :func:`paired_bootstrap` with the same seed and ``resampling``.
    """
    _check_confidence(confidence)
    if not delta >= 0:
        raise ValueError(f"the non-inferiority margin must be >= 0, got {delta}")
    av, bv = _paired(a, b)
    # Resample b - a and negate afterwards, not a - b: the count path orders its categories by value, so only
    # this keeps the resamples those of paired_bootstrap(a, b) whatever the direction.
    reps = mean_replicates(bv - av, n_resamples, seed, resampling)
    improvement, reps = (bv - av, reps) if higher_is_better else (av - bv, -reps)
    lower = float(np.quantile(reps, 1 - confidence))
    return NonInferiority(
        margin=float(delta), estimate=float(improvement.mean()), lower=lower, confidence=confidence,
        n=int(improvement.size), non_inferior=lower > -delta,
    )


# ------------------------------------------------------------------------------------------------ one metric
def compare_paired(
    a: Sequence[float | None] | np.ndarray,
    b: Sequence[float | None] | np.ndarray,
    *,
    higher_is_better: bool = True,
    a_pass: Sequence[bool | None] | np.ndarray | None = None,
    b_pass: Sequence[bool | None] | np.ndarray | None = None,
    seed: int = 0,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    power: float = 0.8,
    tol: float = 1e-9,
    resampling: Resampling = "auto",
) -> PairedComparison:
    """Compare one metric's per-case values, baseline ``a`` against candidate ``b``.

    A case is used only when both values exist and, if pass/fail is given, both outcomes exist, so every
    number in the result describes the same ``n`` cases. ``significant`` means the two-sided ``confidence``
    interval excludes 0; the MDE uses α = 1 - confidence. The interval is :func:`paired_bootstrap`'s with the
    same ``seed``, ``n_resamples`` and ``resampling``.
    """
    _check_confidence(confidence)
    av, bv = _values(a, "a"), _values(b, "b")
    if (a_pass is None) != (b_pass is None):
        raise ValueError("give pass/fail outcomes for both models or for neither")
    keep = ~(np.isnan(av) | np.isnan(bv))
    if a_pass is not None and b_pass is not None:
        ap, bp = _passes(a_pass, "a_pass"), _passes(b_pass, "b_pass")
        _same_length(a=av, b=bv, a_pass=ap, b_pass=bp)
        keep &= ~(np.isnan(ap) | np.isnan(bp))
    else:
        _same_length(a=av, b=bv)
    if not keep.any():
        raise ValueError("no case has a value from both models (every case errored on one side)")
    av, bv = av[keep], bv[keep]
    d = bv - av
    n = int(d.size)
    reps = mean_replicates(d, n_resamples, seed, resampling)
    interval = _interval(float(d.mean()), reps, confidence, n, seed)
    alpha = 1 - confidence
    mc = mde_pp = None
    if a_pass is not None and b_pass is not None:
        mc = mcnemar_exact(ap[keep].astype(bool), bp[keep].astype(bool))
        mde_pp = minimum_detectable_pass_rate_effect(mc.n_discordant / n, n, alpha=alpha, power=power)
    improvement = interval.estimate if higher_is_better else -interval.estimate
    significant = interval.excludes_zero
    verdict: Verdict = "no clear difference"
    if significant:
        verdict = "better" if improvement > 0 else "worse"
    return PairedComparison(
        n=n,
        n_excluded=int(keep.size - n),
        mean_a=float(av.mean()),
        mean_b=float(bv.mean()),
        delta=float(bv.mean() - av.mean()),
        sd_diff=float(d.std(ddof=1)) if n >= 2 else 0.0,
        interval=interval,
        win_tie_loss=win_tie_loss(av, bv, tol=tol, higher_is_better=higher_is_better),
        mcnemar=mc,
        mde=minimum_detectable_effect(d, alpha=alpha, power=power) if n >= 2 else math.inf,
        mde_pass_rate=mde_pp,
        higher_is_better=higher_is_better,
        significant=significant,
        verdict=verdict,
    )


# -------------------------------------------------------------------------------------------- case listings
def flipped_cases(a_pass: Sequence[bool | None] | np.ndarray, b_pass: Sequence[bool | None] | np.ndarray
                  ) -> np.ndarray:
    """Indices of the cases judged on both sides whose pass/fail differs: those :func:`flips` lists."""
    ap, bp = _passes(a_pass, "a_pass"), _passes(b_pass, "b_pass")
    return np.flatnonzero((ap != bp) & ~(np.isnan(ap) | np.isnan(bp)))


def flips(
    case_ids: Sequence[str],
    a_pass: Sequence[bool | None] | np.ndarray,
    b_pass: Sequence[bool | None] | np.ndarray,
    a_val: Sequence[float | None] | np.ndarray,
    b_val: Sequence[float | None] | np.ndarray,
) -> Flips:
    """Cases that flipped: regressions (pass → fail) and fixes (fail → pass), largest ``|b - a|`` first.

    Cases not judged on either side are skipped; flips with a missing value sort last; ties by case id.
    """
    ap, bp = _passes(a_pass, "a_pass"), _passes(b_pass, "b_pass")
    av, bv = _values(a_val, "a_val"), _values(b_val, "b_val")
    _same_length(case_ids=case_ids, a_pass=ap, b_pass=bp, a_val=av, b_val=bv)
    regressions: list[Flip] = []
    fixes: list[Flip] = []
    # Only flipped cases (judged on both sides) reach the Python loop, as plain floats (NaN: no value).
    flipped = flipped_cases(ap, bp)
    for i, a_pass_i, a_v, b_v in zip(flipped.tolist(), ap[flipped].tolist(), av[flipped].tolist(),
                                     bv[flipped].tolist(), strict=True):
        a_v = None if math.isnan(a_v) else a_v
        b_v = None if math.isnan(b_v) else b_v
        change = None if a_v is None or b_v is None else b_v - a_v
        (regressions if a_pass_i else fixes).append(Flip(str(case_ids[i]), a_v, b_v, change))

    def key(f: Flip) -> tuple[float, str]:
        return (-abs(f.change) if f.change is not None else math.inf, f.case_id)

    return Flips(tuple(sorted(regressions, key=key)), tuple(sorted(fixes, key=key)))


def case_means(
    values_by_case_and_repeat: Sequence[Sequence[float | None]] | np.ndarray,
    passes_by_case_and_repeat: Sequence[Sequence[bool | None]] | np.ndarray | None = None,
) -> RepeatSummary:
    """Collapse repeats: a (cases × repeats) matrix, None/NaN for an errored repeat, to per-case summaries.

    Use ``mean`` as the per-case value in the paired functions (a case whose repeats all errored comes out
    NaN, i.e. errored). ``unstable`` flags cases that passed on some repeats and failed on others.
    """
    vals = np.array([[np.nan if v is None else v for v in row] for row in values_by_case_and_repeat],
                    dtype=float)
    if vals.ndim != 2:
        raise ValueError(f"values must be a cases × repeats matrix, got shape {vals.shape}")
    if np.isinf(vals).any():
        raise ValueError("values hold an infinite value; mark errored repeats with None or NaN")
    ok = ~np.isnan(vals)
    n_ok = ok.sum(axis=1)
    has = n_ok > 0
    total = np.where(ok, vals, 0.0).sum(axis=1)
    mean = np.divide(total, n_ok, out=np.full(n_ok.shape, np.nan), where=has)
    sq = np.where(ok, (vals - mean[:, None]) ** 2, 0.0).sum(axis=1)
    std = np.sqrt(np.divide(sq, n_ok - 1, out=np.zeros(n_ok.shape), where=n_ok >= 2))
    vmin = np.where(has, np.where(ok, vals, np.inf).min(axis=1), np.nan)
    vmax = np.where(has, np.where(ok, vals, -np.inf).max(axis=1), np.nan)
    pass_rate = None
    unstable = np.zeros(n_ok.shape, dtype=bool)
    if passes_by_case_and_repeat is not None:
        ps = np.array([[_pass_value(v) for v in row] for row in passes_by_case_and_repeat], dtype=float)
        if ps.shape != vals.shape:
            raise ValueError(f"passes shape {ps.shape} differs from values shape {vals.shape}")
        judged = ~np.isnan(ps)
        n_judged = judged.sum(axis=1)
        n_pass = np.where(judged, ps, 0.0).sum(axis=1)
        pass_rate = np.divide(n_pass, n_judged, out=np.full(n_ok.shape, np.nan), where=n_judged > 0)
        unstable = (n_pass > 0) & (n_pass < n_judged)
    return RepeatSummary(mean, std, vmin, vmax, n_ok, pass_rate, unstable)


def identity_rate(texts_a: Sequence[str | None], texts_b: Sequence[str | None]) -> float:
    """Share of cases whose two outputs are identical after whitespace normalisation (0 with no case).

    Near 1.0 the candidate almost certainly is the baseline (an adapter or endpoint never applied): warn.
    Cases with a missing output on either side are not counted.
    """
    _same_length(texts_a=texts_a, texts_b=texts_b)
    pairs = [(x, y) for x, y in zip(texts_a, texts_b, strict=True) if x is not None and y is not None]
    if not pairs:
        return 0.0
    same = sum(" ".join(x.split()) == " ".join(y.split()) for x, y in pairs)
    return same / len(pairs)
