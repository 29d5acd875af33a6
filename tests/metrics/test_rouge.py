"""rouge: every value is compared with rouge_score.RougeScorer called directly (the reference)."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pydantic
import pytest
from rouge_score import rouge_scorer

from tunebench.metrics import MetricContext
from tunebench.metrics import rouge as rouge_module
from tunebench.metrics.rouge import rouge
from tunebench.records import Case, Output, Sample

REPO = Path(__file__).resolve().parents[2]

# Golden answers in the style of the HealthCare.gov FAQ (public domain) and made-up model answers.
PAIRS = [
    (
        "Yes. The rules about paying penalties are the same whether the Marketplace is run by your state or the "
        "federal government.",
        "Yes, the penalty rules are the same in every state, whether your state or the federal government runs "
        "the Marketplace.",
    ),
    (
        "The most you pay during a policy period before your health insurance begins to pay 100% of the allowed "
        "amount.",
        "It is the maximum amount you pay in a plan year; after that your insurer pays 100% of covered costs.",
    ),
    ("Generally, yes.", "No."),
    ("Running runners ran quickly.", "The runner runs quick."),  # only equal with the stemmer
]


def sample(text: str, expected: str) -> Sample:
    case = Case(id="c1", input="q", expected=expected)
    return Sample(case, Output(case_id="c1", model="m", repeat=0, text=text))


def build(**options):
    return rouge.__tunebench_metric__.build(options, MetricContext(suite_dir=Path.cwd()))


def reference(variant: str, stemmer: bool, expected: str, output: str):
    return rouge_scorer.RougeScorer([variant], use_stemmer=stemmer).score(expected, output)[variant]


@pytest.mark.parametrize("variant", ["rouge1", "rouge2", "rougeL", "rougeLsum"])
@pytest.mark.parametrize("stemmer", [True, False])
@pytest.mark.parametrize("measure", ["fmeasure", "precision", "recall"])
def test_values_equal_rouge_score(variant, stemmer, measure):
    metric = build(variant=variant, use_stemmer=stemmer, measure=measure)
    for expected, output in PAIRS:
        score = metric.score(sample(output, expected))
        ref = reference(variant, stemmer, expected, output)
        assert score.value == getattr(ref, measure)
        assert score.details == {"precision": ref.precision, "recall": ref.recall, "fmeasure": ref.fmeasure}
        assert score.passed is None  # no threshold by default
        json.dumps(score.details)


def test_stemmer_option_changes_the_value():
    expected, output = PAIRS[3]
    with_stem = build(variant="rouge1").score(sample(output, expected)).value
    without = build(variant="rouge1", use_stemmer=False).score(sample(output, expected)).value
    assert with_stem > without


def test_rougelsum_splits_sentences_on_newlines():
    expected = "the plan covers preventive care\nyou pay the deductible first"
    output = "you pay the deductible first\nthe plan covers preventive care"
    lsum = build(variant="rougeLsum").score(sample(output, expected)).value
    assert lsum == reference("rougeLsum", True, expected, output).fmeasure == 1.0
    # The same texts on one line are a single sentence: the swapped order now costs LCS.
    flat = build(variant="rougeLsum").score(sample(output.replace("\n", " "), expected.replace("\n", " "))).value
    assert flat == reference("rougeL", True, expected, output).fmeasure
    assert flat < 1.0


def test_threshold():
    metric = build(threshold=0.5)
    good = metric.score(sample("the deductible is paid first", "the deductible is paid first"))
    bad = metric.score(sample("no idea", "the deductible is paid first"))
    assert (good.value, good.passed) == (1.0, True)
    assert (bad.value, bad.passed) == (0.0, False)


def test_empty_output_scores_zero_without_error():
    score = build(threshold=0.1).score(sample("", "The deductible is what you pay first."))
    assert score.value == 0.0 and isinstance(score.value, float)
    assert score.error is None and score.passed is False
    assert "empty output" in score.explanation
    both_empty = build().score(sample("", ""))
    assert both_empty.value == 0.0


def test_unicode():
    expected = "Le médecin a prescrit un traitement coûteux."
    output = "Le médecin a prescrit un traitement très coûteux."
    score = build().score(sample(output, expected))
    assert score.value == reference("rougeL", True, expected, output).fmeasure
    assert 0.0 < score.value < 1.0
    # rouge-score keeps only ASCII letters and digits: a Japanese answer has no tokens at all.
    cjk = build().score(sample("保険料は毎月支払います。", "保険料は毎月支払います。"))
    assert cjk.value == reference("rougeL", True, "保険料は毎月支払います。", "保険料は毎月支払います。").fmeasure
    assert cjk.value == 0.0
    assert "chrF" in cjk.explanation


def test_aggregate_is_the_mean():
    metric = build(variant="rouge2")
    scores = metric.score_batch([sample(o, e) for e, o in PAIRS])
    agg = metric.aggregate(scores)
    expected_mean = statistics.fmean(reference("rouge2", True, e, o).fmeasure for e, o in PAIRS)
    assert math.isclose(agg.value, expected_mean, rel_tol=0, abs_tol=1e-12)
    assert (agg.n, agg.n_errors, agg.pass_rate) == (len(PAIRS), 0, None)


def test_thousand_long_pairs_are_fast():
    rng = random.Random(7)
    words = sorted({word for pair in PAIRS for text in pair for word in text.split()})
    pairs = [
        (" ".join(rng.choices(words, k=60)), " ".join(rng.choices(words, k=rng.randint(30, 90)))) for _ in range(1000)
    ]
    pairs.append(("", " ".join(rng.choices(words, k=5000))))  # one very long output
    metric = build()
    samples = [sample(o, e) for e, o in pairs]
    # CPU time of this process: other test workers on the same cores must not make this test flaky.
    start = time.process_time()
    scores = metric.score_batch(samples)
    elapsed = time.process_time() - start
    assert elapsed < 3.0, f"1,000 ROUGE-L pairs took {elapsed:.2f} s of CPU"
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for (expected, output), score in zip(pairs, scores, strict=True):  # the memoised stemmer changes nothing
        assert score.value == scorer.score(expected, output)["rougeL"].fmeasure


def test_bad_options_are_rejected():
    with pytest.raises(pydantic.ValidationError):
        build(variant="rouge3")
    with pytest.raises(pydantic.ValidationError):
        build(measure="f1")


def test_plugin_hook_registers_rouge():
    registered = []
    rouge_module.register_metrics(register=registered.append)
    assert [(f.__tunebench_metric__.kind, f.__tunebench_metric__.family) for f in registered] == [
        ("rouge", "similarity")
    ]


def test_building_the_metric_imports_no_nltk():
    # rouge-score imports all of NLTK (~1 s with SciPy installed): validating a suite must not pay for it, and a
    # run pays for it on the writer thread at the first score, while the first requests are in flight.
    code = ("import sys; from pathlib import Path; from tunebench import api; "
            "_, plan, _ = api.prepare(api.RunConfig(suite=Path('suites/insurance.yaml'))); "
            "print(type(plan.metrics['rougeL']).__name__, 'nltk' in sys.modules, 'rouge_score' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Rouge", "False", "False"]


def test_the_scorer_is_built_once_at_the_first_score():
    metric = rouge(variant="rouge1")
    assert metric._built is None
    first = metric.score(sample("a b c", "a b d"))
    parts = metric._built
    assert parts is not None and metric.score(sample("a b c", "a b d")) == first and metric._built is parts
