"""Paired comparison of two sides (a model in a run) case by case: the numbers behind every verdict.

A *side* is (run, model). Within one run the default pair is baseline (base) × candidate (tuned); across runs
it is the baseline run's candidate × this run's candidate, so "new checkpoint vs production" uses stored outputs.

Invariants: cases are matched by id AND content (input, golden, variables); cases added, removed or changed
between the sides are reported as drift and never mixed into the statistics; with repeats the statistics use
case-level means and a case whose pass/fail differs between repeats is marked unstable; every p-value family
(per tag) is Holm-corrected; outputs count as identical when ``" ".join(text.split())`` is equal. Cases,
scores and outputs are read through ``Store.query`` and ``Store.query_arrays`` (the documented schema), as
columns or aggregates, never as a Python object per row.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from . import stats
from .errors import StoreError

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
    a_values: np.ndarray = field(repr=False)
    """Each compared case's baseline value (mean over repeats), in the candidate's case order; NaN: none."""
    b_values: np.ndarray = field(repr=False)
    """The same for the candidate."""
    macro_f1: stats.Interval | None = None
    """For classification metrics: the paired interval of candidate − baseline macro-F1."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricComparison):
            return NotImplemented
        arrays = ("a_values", "b_values")
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name not in arrays) \
            and all(np.array_equal(getattr(self, n), getattr(other, n), equal_nan=True) for n in arrays)

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


# The store's typed readers build one object per row (Case, Score, Output with its request): at 8,000 cases
# that alone took longer than the statistics. These read only the columns needed, through Store.query and
# Store.query_arrays (the store still owns the connection; the tables are its documented schema).
#
# The compared cases are numbered (idx, 0 to n - 1) in the candidate's order. Within one run: every case of the
# run, numbered by its position (0, 1, 2, ... in a run: docs/store.md). Across runs: the candidate's cases that
# the baseline run has with the same content. Every whole-run read below joins this, so the statistics get case
# numbers, never a Python string per score; case ids are read only for the cases a listing names (flips,
# unstable cases). At 32,000 cases a run's peak RSS during the comparison went from 155-157 to 147 MB, with
# Store's capped reads (docs/benchmarks.md).
_WITHIN_RUN = "WITH compared AS (SELECT case_id, position::BIGINT AS idx FROM cases WHERE run_id = $run_b)\n"
_ACROSS_RUNS = """
WITH compared AS (
  SELECT cb.case_id, (row_number() OVER (ORDER BY cb.position, cb.case_id) - 1)::BIGINT AS idx
  FROM cases cb
  JOIN cases ca
    ON ca.run_id = $run_a AND ca.case_id = cb.case_id AND ca.content_hash IS NOT DISTINCT FROM cb.content_hash
  WHERE cb.run_id = $run_b)
"""

_COUNT_SQL = "SELECT count(*) AS n, count(DISTINCT idx) AS d, min(idx) AS lo, max(idx) AS hi FROM compared"

_TAGS_SQL = """
SELECT tag, list(idx ORDER BY idx) AS idx
FROM (SELECT unnest(cb.tags) AS tag, c.idx FROM cases cb JOIN compared c ON c.case_id = cb.case_id
      WHERE cb.run_id = $run_b)
GROUP BY tag ORDER BY tag
"""

_DRIFT_SQL = """
SELECT list(b.case_id ORDER BY b.position, b.case_id) FILTER (WHERE a.case_id IS NULL) AS added,
       list(a.case_id ORDER BY a.position, a.case_id) FILTER (WHERE b.case_id IS NULL) AS removed,
       list(b.case_id ORDER BY b.position, b.case_id) FILTER (
           WHERE a.case_id IS NOT NULL AND b.case_id IS NOT NULL AND a.content_hash IS DISTINCT FROM b.content_hash
       ) AS changed
FROM (SELECT case_id, position, content_hash FROM cases WHERE run_id = $run_a) a
FULL JOIN (SELECT case_id, position, content_hash FROM cases WHERE run_id = $run_b) b ON b.case_id = a.case_id
"""

# One side's scores of the compared cases as numeric columns (metric: its position in $metrics), unordered:
# case ids as numpy object columns cost ~8 MB at 32,000 cases, lists sorted by DuckDB (list(... ORDER BY ...))
# 3x the memory and 4x the time of numpy, and an ORDER BY here +15 MB at 128,000 cases. Rows are put in order
# in numpy, and only where a case has several (repeats).
_SCORES_SQL = """
SELECT (list_position($metrics, s.metric) - 1)::INTEGER AS m, c.idx, s.repeat, s.value, s.passed
FROM scores s JOIN compared c ON c.case_id = s.case_id
WHERE s.run_id = $run AND s.model = $model AND list_contains($metrics, s.metric)
"""

# Labels (for macro-F1) come from the first repeat of a score without error whose details name both a gold
# and a predicted label, read only for the metrics that may have them: details can quote whole outputs, and
# reading them for every score of a long run cost ~1 MB of memory per 1,000 cases. The substring test only
# spares parsing every row's JSON (the store writes keys unescaped, with json.dumps).
_LABELS_SQL = """
SELECT s.metric, list({'idx': c.idx, 'details': s.details::VARCHAR}) AS labels
FROM scores s JOIN compared c ON c.case_id = s.case_id
WHERE s.run_id = $run AND s.model = $model AND list_contains($metrics, s.metric) AND s.repeat = 0
  AND s.error IS NULL AND CASE WHEN contains(s.details::VARCHAR, '"predicted"')
      THEN json_exists(s.details, '$.gold') AND json_exists(s.details, '$.predicted') ELSE false END
GROUP BY s.metric
"""

_NAMES_SQL = "SELECT c.idx, c.case_id FROM compared c SEMI JOIN (SELECT unnest($want) AS idx) w ON w.idx = c.idx"

_OUTPUT_COUNTS_SQL = """
SELECT count(*) AS n, count(*) FILTER (WHERE error <> '') AS n_error
FROM outputs WHERE run_id = $run AND model = $model
"""

# The (case, repeat) outputs that both sides answered without error, over the cases compared (across runs:
# joined with `compared`; within one run, every output of the run, all of whose cases are compared: no join
# with cases, which doubled the query's memory); compared in the database over outputs.text_key (the MD5 of
# the normalised text, written with the output), so the texts are not even read: scanning them cost ~1 MB per
# 1,000 outputs of RSS that stayed.
_PAIRS_SQL = """
SELECT count(*) AS total, count(*) FILTER (WHERE a.text_key = b.text_key) AS same
FROM outputs a
JOIN outputs b ON b.case_id = a.case_id AND b.repeat = a.repeat
{compared}
WHERE a.run_id = $run_a AND a.model = $model_a AND b.run_id = $run_b AND b.model = $model_b
  AND coalesce(a.error, '') = '' AND coalesce(b.error, '') = ''
"""


class _Numbered(Sequence[str]):
    """The ids of ``n`` compared cases, by number, of which only those read (``names``) can be looked up: what
    ``stats.flips`` indexes, for the flipped cases alone."""

    def __init__(self, n: int, names: dict[int, str]) -> None:
        self.n, self.names = n, names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        return self.names[i]


class _Reader:
    """Whole-run reads over the compared cases of two sides (``_WITHIN_RUN`` or ``_ACROSS_RUNS``)."""

    def __init__(self, store: Any, a: Side, b: Side) -> None:
        self.store, self.a, self.b = store, a, b
        within = a.run_id == b.run_id
        self._with = _WITHIN_RUN if within else _ACROSS_RUNS
        self._runs = {"run_b": b.run_id} if within else {"run_a": a.run_id, "run_b": b.run_id}

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return self.store.query(self._with + sql, {**self._runs, **params})

    def arrays(self, sql: str, **params: Any) -> dict[str, Any]:
        return self.store.query_arrays(self._with + sql, {**self._runs, **params})

    def count(self) -> int:
        """How many cases are compared (numbered 0 to n - 1)."""
        row = self.rows(_COUNT_SQL)[0]
        n = int(row["n"])
        if n and (row["d"], row["lo"], row["hi"]) != (n, 0, n - 1):  # a store tunebench did not write
            raise StoreError(f"{self.store.path}: the positions of run {self.b.run_id}'s cases are not 0, 1, 2, … "
                             f"as docs/store.md defines them; the run cannot be compared")
        return n

    def names(self, idx: Collection[int]) -> dict[int, str]:
        """The ids of the compared cases numbered ``idx``: read only for the cases a listing names."""
        if not idx:
            return {}
        cols = self.arrays(_NAMES_SQL, want=sorted(idx))
        return dict(zip(np.asarray(cols["idx"]).tolist(), np.asarray(cols["case_id"]).tolist(), strict=True))

    def drift(self) -> Drift:
        if self.a.run_id == self.b.run_id:
            return Drift()
        row = self.store.query(_DRIFT_SQL, {"run_a": self.a.run_id, "run_b": self.b.run_id})[0]
        return Drift(added=row["added"] or [], removed=row["removed"] or [], changed=row["changed"] or [])


@dataclass
class _CaseLevel:
    """One side's scores of one metric collapsed to one value per compared case (arrays aligned with ids)."""

    value: np.ndarray
    """Mean over the case's repeats with a value; NaN when none (errored or not scored)."""
    passed: np.ndarray
    """Majority pass over judged repeats (a tie passes) as 1/0; NaN when none was judged."""
    unstable: np.ndarray
    """The case passed on some judged repeats and failed on others."""
    labels: dict[int, tuple[Any, Any]]
    """For classification metrics: case number → (gold, predicted) of the first repeat."""


def _case_level(idx: np.ndarray, repeat: np.ndarray, values: np.ndarray, passes: np.ndarray,
                labelled: list[dict[str, Any]], n: int) -> _CaseLevel:
    """Collapse one metric's scores (rows in any order: the numbers of compared cases, repeats, values and passes
    with NaN for none) onto the ``n`` compared cases, in numpy."""
    if idx.size == 0 or np.bincount(idx, minlength=n).max() == 1:  # one score per case: it is the case's level
        value, passed = np.full(n, np.nan), np.full(n, np.nan)
        value[idx], passed[idx] = values, passes  # a pass is 1 = a majority of one; NaN stays "none"
        return _CaseLevel(value, passed, np.zeros(n, dtype=bool), _labels(labelled))
    order = np.lexsort((repeat, idx))  # by case, then repeat: each case's repeats are summed in order
    idx, values, passes = idx[order], values[order], passes[order]
    has_value = ~np.isnan(values)
    judged = ~np.isnan(passes)
    n_values = np.bincount(idx[has_value], minlength=n)
    # bincount adds in row order, i.e. repeat after repeat (with 3+ repeats a mean may differ from np.mean's
    # pairwise sum in the last bit; with one repeat it is the value itself).
    total = np.bincount(idx[has_value], weights=values[has_value], minlength=n)
    mean = np.divide(total, n_values, out=np.full(n, np.nan), where=n_values > 0)
    n_judged = np.bincount(idx[judged], minlength=n)
    n_passed = np.bincount(idx[judged], weights=passes[judged], minlength=n)
    passed = np.where(n_judged > 0, 2 * n_passed >= n_judged, np.nan)
    unstable = (n_passed > 0) & (n_passed < n_judged)
    return _CaseLevel(mean, passed, unstable, _labels(labelled))


def _labels(labelled: list[dict[str, Any]]) -> dict[int, tuple[Any, Any]]:
    labels: dict[int, tuple[Any, Any]] = {}
    for row in labelled:
        details = json.loads(row["details"])
        predicted = details["predicted"]
        labels[row["idx"]] = (details["gold"], "<invalid>" if predicted is None else predicted)
    return labels


def _side_scores(reader: _Reader, side: Side, metrics: list[str], labelled: list[str], n: int
                 ) -> dict[str, _CaseLevel]:
    """Every metric's case-level scores of one side (a metric without a stored score comes out all NaN), with the
    labels of the ``labelled`` metrics."""
    if not metrics:
        return {}
    where = {"run": side.run_id, "model": side.model}
    cols = reader.arrays(_SCORES_SQL, **where, metrics=metrics)
    # A NULL becomes NaN: an errored score, or an unjudged pass/fail.
    values = np.ma.filled(np.ma.asarray(cols["value"], dtype=float), np.nan)
    passes = np.ma.filled(np.ma.asarray(cols["passed"], dtype=float), np.nan)
    idx, repeat, metric_of = (np.asarray(cols[c]) for c in ("idx", "repeat", "m"))
    labels = {r["metric"]: r["labels"] for r in reader.rows(_LABELS_SQL, **where, metrics=labelled)
              } if labelled else {}
    levels = {}
    for i, m in enumerate(metrics):
        mine = metric_of == i if len(metrics) > 1 else slice(None)
        levels[m] = _case_level(idx[mine], repeat[mine], values[mine], passes[mine], labels.get(m) or [], n)
    return levels


def _identical(reader: _Reader) -> tuple[int, int]:
    """(outputs identical after whitespace normalisation, outputs compared): both answered, case compared."""
    a, b = reader.a, reader.b
    sql = _PAIRS_SQL.replace("{compared}", "" if a.run_id == b.run_id else
                             "JOIN compared c ON c.case_id = b.case_id")
    row = reader.rows(sql, run_a=a.run_id, model_a=a.model, model_b=b.model)[0]
    return int(row["same"]), int(row["total"])


def _error_counts(store: Any, side: Side) -> tuple[int, int]:
    row = store.query(_OUTPUT_COUNTS_SQL, {"run": side.run_id, "model": side.model})[0]
    return int(row["n_error"]), int(row["n"])


def _tag_members(reader: _Reader) -> dict[str, np.ndarray]:
    """Tag (as the candidate's cases carry it) → numbers of its compared cases, ascending; tags sorted."""
    return {r["tag"]: np.array(r["idx"], dtype=np.intp) for r in reader.rows(_TAGS_SQL)}


def compare_sides(store: Any, a: Side, b: Side, metrics: dict[str, bool], *, seed: int = 0,
                  n_resamples: int = 10_000, labelled: Collection[str] | None = None) -> Comparison:
    """Compare side ``b`` (candidate) with side ``a`` (baseline) on every metric (name → higher_is_better).

    ``labelled``: the metrics whose scores may carry gold and predicted labels (for the macro-F1 interval); None,
    when the metrics are not known (stored runs), looks for labels in every metric's scores."""
    reader = _Reader(store, a, b)
    drift = reader.drift()
    n = reader.count()
    members = _tag_members(reader)

    names = list(metrics)
    with_labels = names if labelled is None else [m for m in names if m in labelled]
    levels_a = _side_scores(reader, a, names, with_labels, n)
    levels_b = _side_scores(reader, b, names, with_labels, n)
    results: dict[str, MetricComparison] = {}
    for metric, higher in metrics.items():
        la, lb = levels_a[metric], levels_b[metric]
        unstable_idx = np.flatnonzero(la.unstable | lb.unstable).tolist()
        has_pass = bool((~np.isnan(la.passed)).any() and (~np.isnan(lb.passed)).any())
        ok = ~(np.isnan(la.value) | np.isnan(lb.value))
        paired = None
        if ok.sum() >= 2:
            paired = stats.compare_paired(la.value, lb.value, higher_is_better=higher,
                                          a_pass=la.passed if has_pass else None,
                                          b_pass=lb.passed if has_pass else None,
                                          seed=seed, n_resamples=n_resamples)
        # Case ids are read only for the cases listed: flipped (judged on both sides, differently) or unstable.
        flipped = stats.flipped_cases(la.passed, lb.passed).tolist() if has_pass else []
        ids = _Numbered(n, reader.names({*flipped, *unstable_idx}))
        flips = (stats.flips(ids, la.passed, lb.passed, la.value, lb.value) if has_pass
                 else stats.Flips((), ()))
        results[metric] = MetricComparison(metric, higher, paired, flips,
                                           _by_tag(members, la.value, lb.value, seed),
                                           [ids[i] for i in unstable_idx], la.value, lb.value,
                                           _macro_f1(n, la.labels, lb.labels, seed, n_resamples))

    errors = {a.label: _error_counts(store, a)}
    errors[b.label] = _error_counts(store, b)
    return Comparison(a, b, results, drift, _identical(reader), errors)


def _macro_f1(n: int, la: dict[int, tuple[Any, Any]], lb: dict[int, tuple[Any, Any]], seed: int,
              n_resamples: int) -> stats.Interval | None:
    """Paired interval of the macro-F1 difference over the ``n`` compared cases, for metrics whose scores carry
    gold and predicted labels."""
    both = sorted(la.keys() & lb.keys())
    if len(both) < 2 or len(both) < 0.5 * n:
        return None
    gold = [str(la[c][0]) for c in both]
    return stats.paired_bootstrap_stat([str(la[c][1]) for c in both], [str(lb[c][1]) for c in both],
                                       stats.macro_f1_stat(gold, exclude="<invalid>"), n_resamples=n_resamples,
                                       seed=seed)


def _by_tag(members: dict[str, np.ndarray], a: np.ndarray, b: np.ndarray, seed: int) -> list[TagComparison]:
    rows = []
    for tag, sel in members.items():
        aa, bb = a[sel], b[sel]
        ok = ~(np.isnan(aa) | np.isnan(bb))
        if ok.sum() < MIN_TAG_CASES:
            continue
        interval = stats.paired_bootstrap(aa[ok], bb[ok], n_resamples=2000, seed=seed)
        p = stats.sign_flip_pvalue(aa[ok], bb[ok], seed=seed)  # tests the same quantity the interval estimates
        rows.append(TagComparison(tag, int(ok.sum()), interval.estimate, interval.low, interval.high, p, p, False))
    if rows:
        adjusted = stats.holm([r.p_value for r in rows])
        for r, p in zip(rows, adjusted, strict=True):
            r.p_holm = float(p)
            r.significant = r.p_holm < 0.05
    return rows
