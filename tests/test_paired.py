"""``paired.compare_sides`` on real DuckDB stores, checked against a reference built from the store's typed
readers (``get_cases``, ``case_hashes``, ``get_scores``, ``iter_outputs``) the plain way: per-case loops,
``statistics.fmean``, ``" ".join(text.split())`` and scikit-learn's macro-F1."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from pathlib import Path

import duckdb
import numpy as np
import pytest
from sklearn.metrics import f1_score

from tunebench import paired, stats, storeformat
from tunebench.errors import StoreError
from tunebench.paired import Side, compare_sides
from tunebench.records import Case, Output, Score
from tunebench.store import Store

LABELS = ("refund", "shipping", "billing")
# Spellings of one answer that differ only in whitespace (Unicode spaces and separators included).
SPACINGS = (" ", "  ", "\n", "\t ", "\u00a0", "\u3000", "\x1c", "\u2028")
METRICS = {"exact": True, "similarity": True, "latency": False, "intent": True}


def _text(rng: random.Random) -> str:
    words = [rng.choice(("your", "claim", "is", "open", "closed")) for _ in range(rng.randrange(0, 6))]
    return rng.choice(("", " ", "\n", "\u2003")) + rng.choice(SPACINGS).join(words) + rng.choice(("", "\n", " "))


def _scores(rng: random.Random, case: Case, model: str, repeat: int) -> list[tuple[str, str, int, str, Score]]:
    exact = rng.random() < 0.55
    similarity = rng.random()
    gold = LABELS[int(case.id[-3:]) % 3]
    predicted = rng.choice((gold, gold, *LABELS, None))
    intent = Score(value=float(predicted == gold), passed=predicted == gold,
                   details={"gold": gold, "predicted": predicted} if rng.random() > 0.05 else {"gold": gold},
                   error="unparseable" if rng.random() < 0.03 else None)
    return [(case.id, model, repeat, "exact",
             Score(value=None if rng.random() < 0.04 else float(exact), passed=None if rng.random() < 0.03 else exact,
                   details={"output": "x", "expected": "y"})),
            (case.id, model, repeat, "similarity",
             Score(value=None if rng.random() < 0.04 else similarity, passed=similarity > 0.5)),
            (case.id, model, repeat, "latency", Score(value=rng.uniform(100, 900))),
            (case.id, model, repeat, "intent", intent)]


def _write_run(store: Store, rng: random.Random, n: int, repeats: int, variant: int) -> str:
    """One run: base and tuned answered n cases (a few skipped per run, a few edited: drift)."""
    run_id = store.start_run({"suite_name": "s", "suite_hash": "h", "baseline": "base", "candidate": "tuned"})
    store.add_models(run_id, [{"model": m, "runner": "mock"} for m in ("base", "tuned")])
    store.add_metrics(run_id, [{"metric": k, "kind": k, "higher_is_better": h} for k, h in METRICS.items()])
    cases = [Case(id=f"case-{i:03d}", input=f"question {i}" + (" (edited)" if variant and i % 17 == 0 else ""),
                  expected="answer", tags=tuple(t for j, t in enumerate(("billing", "claims", "motor")) if i >> j & 1))
             for i in range(n) if i % (23 if variant else 29) != 5]
    store.add_cases(run_id, cases)
    outputs, scores = [], []
    for model in ("base", "tuned"):
        for case in cases:
            for repeat in range(repeats):
                error = rng.choice(("timeout", "")) if rng.random() < 0.06 else None
                outputs.append(Output(case_id=case.id, model=model, repeat=repeat,
                                      text="" if error else _text(rng), error=error))
                scores += _scores(rng, case, model, repeat)
    store.add_outputs(run_id, outputs)
    store.add_scores(run_id, scores)
    store.finish_run(run_id)
    return run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    path = tmp_path_factory.mktemp("paired") / "runs.duckdb"
    rng = random.Random(5)
    with Store.open(path) as store:
        first = _write_run(store, rng, 160, repeats=1, variant=0)
        second = _write_run(store, rng, 160, repeats=3, variant=1)
    return path, first, second


# ----------------------------------------------------------------------------------------------- reference
def _reference(store: Store, a: Side, b: Side, metric: str) -> dict:
    """The comparison's inputs computed case by case from the typed readers."""
    cases_a = {c.id: c for c in store.get_cases(a.run_id)}
    cases_b = {c.id: c for c in store.get_cases(b.run_id)}
    hashes_a, hashes_b = store.case_hashes(a.run_id), store.case_hashes(b.run_id)
    changed = [c for c in cases_b if c in cases_a and hashes_a[c] != hashes_b[c]]
    common = [c for c in cases_b if c in cases_a and c not in changed]

    def side(s: Side) -> tuple[dict, dict, set, dict]:
        rows: dict[str, list[Score]] = defaultdict(list)
        labels = {}
        for case_id, _model, repeat, _metric, score in store.get_scores(s.run_id, model=s.model, metric=metric):
            rows[case_id].append(score)
            if repeat == 0 and score.error is None and {"gold", "predicted"} <= score.details.keys():
                labels[case_id] = (score.details["gold"], score.details["predicted"] or "<invalid>")
        values, passes, unstable = {}, {}, set()
        for c in common:
            vals = [x.value for x in rows[c] if x.value is not None]
            judged = [x.passed for x in rows[c] if x.passed is not None]
            values[c] = statistics.fmean(vals) if vals else None
            passes[c] = sum(judged) * 2 >= len(judged) if judged else None
            if judged and 0 < sum(judged) < len(judged):
                unstable.add(c)
        return values, passes, unstable, labels

    (va, pa, ua, la), (vb, pb, ub, lb) = side(a), side(b)

    def outputs(s: Side) -> dict:
        return {(o.case_id, o.repeat): o for o in store.iter_outputs(s.run_id, model=s.model)}

    out_a, out_b = outputs(a), outputs(b)
    pairs = [(o, out_a.get(key)) for key, o in out_b.items() if o.case_id in common]
    compared = [(x, y) for x, y in pairs if y is not None and not x.error and not y.error]
    return {
        "ids": common, "a": [va[c] for c in common], "b": [vb[c] for c in common],
        "a_pass": [pa[c] for c in common], "b_pass": [pb[c] for c in common],
        "unstable": [c for c in common if c in ua or c in ub], "labels": (la, lb),
        "tags": {c: cases_b[c].tags for c in common},
        "drift": paired.Drift(added=[c for c in cases_b if c not in cases_a],
                              removed=[c for c in cases_a if c not in cases_b], changed=changed),
        "identical": (sum(" ".join(x.text.split()) == " ".join(y.text.split()) for x, y in compared), len(compared)),
        "errors": {s.label: (sum(bool(o.error) for o in out.values()), len(out))
                   for s, out in ((a, out_a), (b, out_b))},
    }


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values])


SIDES = {"within a run": lambda first, second: (Side(second, "base"), Side(second, "tuned")),
         "across runs": lambda first, second: (Side(first, "tuned"), Side(second, "tuned")),
         "a model against itself": lambda first, second: (Side(first, "base"), Side(first, "base"))}


@pytest.mark.parametrize("sides", SIDES.values(), ids=SIDES.keys())
def test_compare_sides_matches_the_case_by_case_reference(runs, sides):
    path, first, second = runs
    a, b = sides(first, second)
    with Store.open(path, read_only=True) as store:
        comparison = compare_sides(store, a, b, METRICS, seed=3, n_resamples=2000)
        refs = {m: _reference(store, a, b, m) for m in METRICS}
        # Naming the labelled metric (as a run does from its metric objects) reads labels from it alone: the same
        # comparison. Naming none gives no macro-F1 and changes nothing else.
        assert compare_sides(store, a, b, METRICS, seed=3, n_resamples=2000, labelled={"intent"}) == comparison
        unlabelled = compare_sides(store, a, b, METRICS, seed=3, n_resamples=2000, labelled=())
        assert unlabelled.metrics["intent"].macro_f1 is None
        unlabelled.metrics["intent"].macro_f1 = comparison.metrics["intent"].macro_f1
        assert unlabelled == comparison
    ref = refs["exact"]
    assert comparison.drift == ref["drift"] and (comparison.drift.any == (a.run_id != b.run_id))
    assert comparison.identical == ref["identical"] and comparison.errors == ref["errors"]
    # The data exercise what is checked: whitespace-only differences, repeats that disagree, labels, tags.
    assert 0 < comparison.identical[0] < comparison.identical[1] or a == b
    assert comparison.metrics["exact"].unstable or b.run_id == first
    assert comparison.metrics["intent"].macro_f1 is not None and len(comparison.metrics["exact"].by_tag) >= 3
    for metric, higher in METRICS.items():
        ref, got = refs[metric], comparison.metrics[metric]
        assert got.unstable == ref["unstable"]
        # Values come in the reference's case order (its ids), NaN where the reference has None.
        np.testing.assert_allclose(got.a_values, _nan(ref["a"]), rtol=1e-12)
        np.testing.assert_allclose(got.b_values, _nan(ref["b"]), rtol=1e-12)
        a_arr, b_arr = _nan(ref["a"]), _nan(ref["b"])
        has_pass = any(p is not None for p in ref["a_pass"]) and any(p is not None for p in ref["b_pass"])
        want = stats.compare_paired(a_arr, b_arr, higher_is_better=higher, a_pass=ref["a_pass"] if has_pass else None,
                                    b_pass=ref["b_pass"] if has_pass else None, seed=3, n_resamples=2000)
        assert got.paired is not None
        assert (got.paired.n, got.paired.n_excluded, got.paired.verdict) == (want.n, want.n_excluded, want.verdict)
        assert (got.paired.delta, got.paired.interval.low) == pytest.approx(
            (want.delta, want.interval.low), abs=1e-12)
        assert got.paired.mcnemar == want.mcnemar
        want_flips = (stats.flips(ref["ids"], ref["a_pass"], ref["b_pass"], ref["a"], ref["b"]) if has_pass
                      else stats.Flips((), ()))
        for got_list, want_list in ((got.flips.regressions, want_flips.regressions),
                                    (got.flips.fixes, want_flips.fixes)):
            assert [f.case_id for f in got_list] == [f.case_id for f in want_list]
            # Means over repeats may differ from fmean's correctly rounded ones in the last bit.
            assert _nan([v for f in got_list for v in (f.a_value, f.b_value)]).tolist() == pytest.approx(
                _nan([v for f in want_list for v in (f.a_value, f.b_value)]).tolist(), rel=1e-12, nan_ok=True)
        _check_tags(got.by_tag, ref, a_arr, b_arr)
        _check_macro_f1(got.macro_f1, ref)


def _check_tags(rows: list[paired.TagComparison], ref: dict, a: np.ndarray, b: np.ndarray) -> None:
    members: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(ref["ids"]):
        for t in ref["tags"][c]:
            members[t].append(i)
    expected = []
    for tag, idx in sorted(members.items()):
        ok = [i for i in idx if not (math.isnan(a[i]) or math.isnan(b[i]))]
        if len(ok) >= paired.MIN_TAG_CASES:
            interval = stats.paired_bootstrap(a[ok], b[ok], n_resamples=2000, seed=3)
            expected.append((tag, len(ok), interval.estimate, interval.low, interval.high,
                             stats.sign_flip_pvalue(a[ok], b[ok], seed=3)))
    assert [(r.tag, r.n) for r in rows] == [e[:2] for e in expected]
    assert [x for r in rows for x in (r.delta, r.ci_low, r.ci_high, r.p_value)] == pytest.approx(
        [x for e in expected for x in e[2:]], abs=1e-12)
    adjusted = stats.holm([r.p_value for r in rows])
    assert [r.p_holm for r in rows] == adjusted.tolist()
    assert [r.significant for r in rows] == [p < 0.05 for p in adjusted]


def _check_macro_f1(interval: stats.Interval | None, ref: dict) -> None:
    la, lb = ref["labels"]
    both = [c for c in ref["ids"] if c in la and c in lb]
    if len(both) < max(2, 0.5 * len(ref["ids"])):
        assert interval is None
        return
    assert interval is not None and interval.n == len(both)
    gold = [la[c][0] for c in both]
    present = sorted({*gold, *(la[c][1] for c in both), *(lb[c][1] for c in both)} - {"<invalid>"})

    def f1(side: dict) -> float:
        return f1_score(gold, [side[c][1] for c in both], labels=present, average="macro", zero_division=0)

    assert interval.estimate == pytest.approx(f1(lb) - f1(la), abs=1e-12)
    assert interval.low <= interval.estimate <= interval.high


def test_a_metric_without_scores_and_a_side_without_pass_fail(runs):
    path, first, _second = runs
    with Store.open(path, read_only=True) as store:
        comparison = compare_sides(store, Side(first, "base"), Side(first, "tuned"),
                                   {"latency": False, "not-scored": True}, n_resamples=200)
    latency, missing = comparison.metrics["latency"], comparison.metrics["not-scored"]
    assert latency.paired is not None and latency.paired.mcnemar is None and latency.flips == stats.Flips((), ())
    assert missing.paired is None and missing.by_tag == [] and missing.macro_f1 is None
    assert np.isnan(missing.a_values).all() and len(missing.a_values) == len(latency.a_values) > 0


def test_cases_numbered_other_than_the_store_numbers_them_are_refused(tmp_path: Path):
    path = tmp_path / "gap.duckdb"
    with Store.open(path) as store:
        run_id = _write_run(store, random.Random(1), 12, repeats=1, variant=0)
        assert compare_sides(store, Side(run_id, "base"), Side(run_id, "tuned"), METRICS, n_resamples=50)
    with duckdb.connect(str(path)) as conn:  # as a user's own SQL might leave it: a gap in the positions
        conn.execute("UPDATE cases SET position = position + 1 WHERE run_id = ? AND position >= 4", [run_id])
    with Store.open(path) as store, pytest.raises(StoreError, match=r"positions of run .* are not 0, 1, 2"):
        compare_sides(store, Side(run_id, "base"), Side(run_id, "tuned"), METRICS, n_resamples=50)


def test_whitespace_list_is_what_str_split_splits_on():
    # outputs.text_key normalises in SQL with this list; the meaning is Python's str.split().
    assert tuple(c for c in range(0x110000) if chr(c).isspace()) == storeformat._WHITESPACE


def test_sql_normalisation_equals_joining_the_split_words(tmp_path: Path):
    rng = random.Random(7)
    spaces = [chr(c) for c in storeformat._WHITESPACE]
    texts = ["", " ", "a", "  a  b  ", "\u3000policyholder\u00a0pays\n\tthe  deductible\u2029",
             *("".join(rng.choice(["x", "yz", "é", *spaces]) for _ in range(rng.randrange(1, 30))) for _ in range(300))]
    with Store.open(tmp_path / "s.duckdb") as store:
        (row,) = store.query(f"SELECT list_transform($texts, lambda t: {storeformat.normalised_text('t')}) AS n",
                             {"texts": texts})
    got = row["n"]
    assert got == [" ".join(t.split()) for t in texts]
