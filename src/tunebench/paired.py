"""Paired comparison of two sides (a model in a run) case by case: the numbers behind every verdict.

A *side* is (run, model). Within one run the default pair is baseline (base) × candidate (tuned); across runs
it is the baseline run's candidate × this run's candidate, so "new checkpoint vs production" uses stored outputs.

Invariants: cases are matched by id AND content (input, golden, variables); cases added, removed or changed
between the sides are reported as drift and never mixed into the statistics; with repeats the statistics use
case-level means and a case whose pass/fail differs between repeats is marked unstable; every p-value family
(per tag) is Holm-corrected.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import stats

__all__ = ["Comparison", "Drift", "MetricComparison", "Side", "TagComparison", "compare_sides"]

MIN_TAG_CASES = 5
"""Tags with fewer paired cases are not tested (their interval would be meaningless)."""


@dataclass(frozen=True)
class Side:
    """One model's answers in one run."""

    run_id: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.model}@{self.run_id}"


@dataclass
class Drift:
    """How the golden cases differ between the two sides (empty within one run)."""

    added: list[str] = field(default_factory=list)
    """Case ids only the candidate side has."""
    removed: list[str] = field(default_factory=list)
    """Case ids only the baseline side has."""
    changed: list[str] = field(default_factory=list)
    """Same id, different input/golden/variables: excluded from the comparison."""

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass
class TagComparison:
    """The paired comparison restricted to one tag."""

    tag: str
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    """Holm-adjusted over all tags tested for this metric."""
    significant: bool
    """``p_holm < 0.05``."""


@dataclass
class MetricComparison:
    """One metric, baseline side against candidate side."""

    metric: str
    higher_is_better: bool
    paired: stats.PairedComparison | None
    """None when fewer than two cases could be paired."""
    flips: stats.Flips
    by_tag: list[TagComparison]
    unstable: list[str]
    """Cases whose pass/fail differed between repeats (either side)."""
    case_ids: list[str]
    a_values: list[float | None]
    b_values: list[float | None]
    macro_f1: stats.Interval | None = None
    """For classification metrics: the paired interval of candidate − baseline macro-F1."""

    def to_json(self) -> dict[str, Any]:
        p = self.paired
        out: dict[str, Any] = {"metric": self.metric, "higher_is_better": self.higher_is_better, "n": 0}
        if p is not None:
            out.update(n=p.n, n_excluded=p.n_excluded, mean_baseline=p.mean_a, mean_candidate=p.mean_b,
                       delta=p.delta, ci_low=p.interval.low, ci_high=p.interval.high,
                       confidence=p.interval.confidence, wins=p.win_tie_loss.wins, ties=p.win_tie_loss.ties,
                       losses=p.win_tie_loss.losses, significant=p.significant, verdict=p.verdict, mde=p.mde,
                       mde_pass_rate=p.mde_pass_rate,
                       mcnemar_p=p.mcnemar.pvalue if p.mcnemar else None,
                       regressions_n=p.mcnemar.b01 if p.mcnemar else None,
                       fixes_n=p.mcnemar.b10 if p.mcnemar else None)
        out["regressions"] = [_flip(f) for f in self.flips.regressions]
        out["fixes"] = [_flip(f) for f in self.flips.fixes]
        if self.macro_f1 is not None:
            out["macro_f1"] = {"delta": self.macro_f1.estimate, "ci_low": self.macro_f1.low,
                               "ci_high": self.macro_f1.high, "n": self.macro_f1.n}
        out["by_tag"] = [t.__dict__ for t in self.by_tag]
        out["unstable"] = self.unstable
        return out


def _flip(f: stats.Flip) -> dict[str, Any]:
    return {"case_id": f.case_id, "baseline": f.a_value, "candidate": f.b_value, "change": f.change}


@dataclass
class Comparison:
    """Baseline side × candidate side over every metric."""

    baseline: Side
    candidate: Side
    metrics: dict[str, MetricComparison]
    drift: Drift
    identical: tuple[int, int]
    """(cases with identical output text, cases compared)."""
    errors: dict[str, tuple[int, int]]
    """Side label → (error outputs, outputs)."""

    def to_json(self) -> dict[str, Any]:
        return {"baseline": self.baseline.__dict__, "candidate": self.candidate.__dict__,
                "metrics": {k: v.to_json() for k, v in self.metrics.items()},
                "drift": self.drift.__dict__, "identical": list(self.identical),
                "errors": {k: list(v) for k, v in self.errors.items()}}


def _side_scores(store: Any, side: Side, metric: str
                 ) -> tuple[dict[str, list[tuple[float | None, bool | None]]], dict[str, tuple[Any, Any]]]:
    """Per case: (value, passed) of every repeat; and for classification the first repeat's (gold, predicted)."""
    by_case: dict[str, list[tuple[float | None, bool | None]]] = defaultdict(list)
    labels: dict[str, tuple[Any, Any]] = {}
    for case_id, _model, repeat, _metric, score in store.get_scores(side.run_id, model=side.model, metric=metric):
        by_case[case_id].append((score.value, score.passed))
        if repeat == 0 and score.error is None and "gold" in score.details and "predicted" in score.details:
            predicted = score.details["predicted"]
            labels[case_id] = (score.details["gold"], "<invalid>" if predicted is None else predicted)
    return by_case, labels


def _case_level(rows: list[tuple[float | None, bool | None]]) -> tuple[float | None, bool | None, bool]:
    """Mean value and majority pass over repeats; and whether pass/fail was unstable."""
    values = [v for v, _ in rows if v is not None]
    passes = [p for _, p in rows if p is not None]
    mean = float(np.mean(values)) if values else None
    passed = (sum(passes) * 2 >= len(passes)) if passes else None
    return mean, passed, bool(passes) and 0 < sum(passes) < len(passes)


def _signflip_p(d: np.ndarray, *, n_perm: int = 4000, seed: int = 0) -> float:
    """Two-sided paired randomisation (sign-flip) test of mean(d) = 0."""
    if len(d) == 0 or not np.any(d):
        return 1.0
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    return float((1 + np.sum(null >= abs(d.mean()) - 1e-12)) / (n_perm + 1))


def compare_sides(store: Any, a: Side, b: Side, metrics: dict[str, bool], *, seed: int = 0,
                  n_resamples: int = 10_000) -> Comparison:
    """Compare side ``b`` (candidate) with side ``a`` (baseline) on every metric (name → higher_is_better)."""
    cases_a = {c.id: c for c in store.get_cases(a.run_id)}
    cases_b = {c.id: c for c in store.get_cases(b.run_id)} if b.run_id != a.run_id else cases_a
    hashes_a = store.case_hashes(a.run_id)
    hashes_b = store.case_hashes(b.run_id) if b.run_id != a.run_id else hashes_a
    drift = Drift(added=[c for c in cases_b if c not in cases_a], removed=[c for c in cases_a if c not in cases_b],
                  changed=[c for c in cases_b if c in cases_a and hashes_a.get(c) != hashes_b.get(c)])
    common = [c for c in cases_b if c in cases_a and c not in set(drift.changed)]
    tags = {c: cases_b[c].tags for c in common}

    results: dict[str, MetricComparison] = {}
    for metric, higher in metrics.items():
        (sa, la), (sb, lb) = _side_scores(store, a, metric), _side_scores(store, b, metric)
        ids, av, bv, ap, bp, unstable = [], [], [], [], [], []
        for cid in common:
            va, pa, ua = _case_level(sa.get(cid, []))
            vb, pb, ub = _case_level(sb.get(cid, []))
            ids.append(cid)
            av.append(va)
            bv.append(vb)
            ap.append(pa)
            bp.append(pb)
            if ua or ub:
                unstable.append(cid)
        has_pass = any(p is not None for p in ap) and any(p is not None for p in bp)
        a_arr = np.array([np.nan if v is None else v for v in av], dtype=float)
        b_arr = np.array([np.nan if v is None else v for v in bv], dtype=float)
        ok = ~(np.isnan(a_arr) | np.isnan(b_arr))
        paired = None
        if ok.sum() >= 2:
            paired = stats.compare_paired(a_arr, b_arr, higher_is_better=higher,
                                          a_pass=ap if has_pass else None, b_pass=bp if has_pass else None,
                                          seed=seed, n_resamples=n_resamples)
        flips = stats.flips(ids, ap, bp, av, bv) if has_pass else stats.Flips((), ())
        results[metric] = MetricComparison(metric, higher, paired, flips,
                                           _by_tag(ids, tags, a_arr, b_arr, seed),
                                           unstable, ids, av, bv, _macro_f1(ids, la, lb, seed, n_resamples))

    same = total = 0
    # Only a digest of each baseline output is kept (None for an error), so memory does not hold every text.
    digests: dict[tuple[str, int], bytes | None] = {}
    n_a_err = 0
    for o in store.iter_outputs(a.run_id, model=a.model):
        n_a_err += bool(o.error)
        digests[(o.case_id, o.repeat)] = None if o.error else _digest(o.text)
    errors = {a.label: (n_a_err, len(digests))}
    n_b = n_b_err = 0
    for o in store.iter_outputs(b.run_id, model=b.model):
        n_b += 1
        n_b_err += bool(o.error)
        other = digests.get((o.case_id, o.repeat))
        if other is None or o.error or o.case_id not in tags:
            continue
        total += 1
        same += _digest(o.text) == other
    errors[b.label] = (n_b_err, n_b)
    return Comparison(a, b, results, drift, (same, total), errors)


def _digest(text: str) -> bytes:
    """Whitespace-insensitive fingerprint of an output, for the identical-output check."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _macro_f1(ids: list[str], la: dict[str, tuple[Any, Any]], lb: dict[str, tuple[Any, Any]], seed: int,
              n_resamples: int) -> stats.Interval | None:
    """Paired interval of the macro-F1 difference, for metrics whose scores carry gold and predicted labels."""
    both = [c for c in ids if c in la and c in lb]
    if len(both) < 2 or len(both) < 0.5 * len(ids):
        return None
    gold = [str(la[c][0]) for c in both]
    return stats.paired_bootstrap_stat([str(la[c][1]) for c in both], [str(lb[c][1]) for c in both],
                                       stats.macro_f1_stat(gold, exclude="<invalid>"), n_resamples=n_resamples,
                                       seed=seed)


def _by_tag(ids: list[str], tags: dict[str, tuple[str, ...]], a: np.ndarray, b: np.ndarray,
            seed: int) -> list[TagComparison]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, cid in enumerate(ids):
        for t in tags.get(cid, ()):
            members[t].append(i)
    rows = []
    for tag, idx in sorted(members.items()):
        sel = np.array(idx)
        aa, bb = a[sel], b[sel]
        ok = ~(np.isnan(aa) | np.isnan(bb))
        if ok.sum() < MIN_TAG_CASES:
            continue
        interval = stats.paired_bootstrap(aa[ok], bb[ok], n_resamples=2000, seed=seed)
        p = _signflip_p(bb[ok] - aa[ok], seed=seed)  # tests the same quantity the interval estimates
        rows.append(TagComparison(tag, int(ok.sum()), interval.estimate, interval.low, interval.high, p, p, False))
    if rows:
        adjusted = stats.holm([r.p_value for r in rows])
        for r, p in zip(rows, adjusted, strict=True):
            r.p_holm = float(p)
            r.significant = r.p_holm < 0.05
    return rows
