"""label: extraction on real label sets, and every aggregate number checked against scikit-learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pydantic
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import classification as classification_module
from tunebench.metrics.classification import INVALID, label
from tunebench.records import Case, Output, Sample

DATA = Path(__file__).resolve().parents[2] / "evals"  # verbatim copies of the shared golden data


def read_jsonl(name: str) -> list[dict]:
    with (DATA / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


BANKING = read_jsonl("support_intent/cases.jsonl")
SENTIMENT = read_jsonl("sentiment/cases.jsonl")
BANKING_LABELS = BANKING[0]["labels"]


def build(options: dict | None = None, suite_vars: dict | None = None):
    return label.__tunebench_metric__.build(options or {}, MetricContext(suite_vars=suite_vars or {}))


def sample(text: str, expected: str, *, labels: list[str] | None = None, case_id: str = "c1",
           error: str | None = None) -> Sample:
    case = Case(id=case_id, input="q", expected=expected, vars={"labels": labels} if labels else {})
    return Sample(case, Output(case_id=case_id, model="m", repeat=0, text=text, error=error))


def case_from_row(row: dict) -> Case:
    # What the JSONL loader builds with fields.vars = "all": every field but id/input/expected is a variable.
    extra = {k: v for k, v in row.items() if k not in ("id", "input", "expected")}
    return Case(id=row["id"], input=row["input"], expected=row["expected"], vars=extra)


def surface(lab: str, rng: random.Random) -> str:
    """A way a chat model might write a label that the normalized extractor must read back."""
    spaced = lab.replace("_", " ")
    return rng.choice([lab, f"Label: {lab}", f"{spaced}.", f'"{lab.upper()}"', f"**{spaced.title()}**",
                       f"  {lab}\n", f"`{lab}`", f"Intent: {spaced}"])


def synthetic_predictions(rows: list[dict], labels: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Outputs and the label each one is meant to name (INVALID for garbage), drawn deterministically."""
    rng = random.Random(seed)
    outputs, intended = [], []
    for row in rows:
        roll = rng.random()
        if roll < 0.55:
            lab = row["expected"]
        elif roll < 0.85:
            lab = rng.choice(labels)
        else:
            outputs.append(rng.choice(["", "I am not sure.", "None of these", "???", "\u200b",
                                       f"{labels[0]} or {labels[-1]}", "label: unknown_intent", "🙂 ¿qué?"]))
            intended.append(INVALID)
            continue
        outputs.append(surface(lab, rng))
        intended.append(lab)
    return outputs, intended


def sklearn_report(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": accuracy_score(gold, predicted),
        "macro_f1": f1_score(gold, predicted, labels=labels, average="macro", zero_division=0),
        "micro_f1": f1_score(gold, predicted, labels=labels, average="micro", zero_division=0),
        "weighted_f1": f1_score(gold, predicted, labels=labels, average="weighted", zero_division=0),
        "per_class": {lab: (p[i], r[i], f[i], s[i]) for i, lab in enumerate(labels)},
        "confusion": confusion_matrix(gold, predicted, labels=[*labels, INVALID]).tolist(),
    }


def check_against_sklearn(metric, samples: list[Sample], intended: list[str], labels: list[str]) -> dict:
    scores = metric.score_batch(samples)
    assert all(s.error is None for s in scores)
    # Extraction read every synthetic output back as the label it was written for.
    assert [s.details["predicted"] or INVALID for s in scores] == intended
    agg = metric.aggregate(scores)
    gold = [s.case.expected for s in samples]
    ref = sklearn_report(gold, intended, labels)
    assert agg.n == len(samples) and agg.n_errors == 0
    assert agg.value == pytest.approx(ref["accuracy"], abs=1e-12)
    assert agg.pass_rate == pytest.approx(ref["accuracy"], abs=1e-12)
    for key in ("macro_f1", "micro_f1", "weighted_f1"):
        assert agg.details[key] == pytest.approx(ref[key], abs=1e-12), key
    for lab in labels:
        got = agg.details["per_class"][lab]
        p, r, f, s = ref["per_class"][lab]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f), abs=1e-12), lab
        assert got["support"] == s
    assert agg.details["confusion"]["labels"] == [*labels, INVALID]
    # sklearn adds a row for the INVALID "gold" class, which never occurs: all zeros.
    assert agg.details["confusion"]["matrix"] == ref["confusion"][: len(labels)]
    assert ref["confusion"][len(labels)] == [0] * (len(labels) + 1)
    n_invalid = intended.count(INVALID)
    assert agg.details["invalid_count"] == n_invalid
    assert agg.details["invalid_rate"] == pytest.approx(n_invalid / len(samples))
    return agg.details


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_banking77_matches_sklearn_with_labels_from_the_cases(seed):
    outputs, intended = synthetic_predictions(BANKING, BANKING_LABELS, seed)
    samples = [Sample(case_from_row(row), Output(row["id"], "m", 0, text))
               for row, text in zip(BANKING, outputs, strict=True)]
    details = check_against_sklearn(build(), samples, intended, BANKING_LABELS)
    assert len(details["per_class"]) == 77
    assert 0 < details["invalid_count"] < len(samples)
    # With invalid predictions, micro-F1 (over the label set) is not accuracy: invalids are nobody's FP.
    assert details["micro_f1"] != pytest.approx(details["accuracy"])


@pytest.mark.parametrize("seed", [3, 4])
def test_sentiment_matches_sklearn_with_labels_from_the_suite(seed):
    labels = SENTIMENT[0]["labels"]
    outputs, intended = synthetic_predictions(SENTIMENT, labels, seed)
    samples = [Sample(Case(id=row["id"], input=row["input"], expected=row["expected"]), Output(row["id"], "m", 0,
                                                                                             text))
               for row, text in zip(SENTIMENT, outputs, strict=True)]
    metric = build(suite_vars={"labels": labels})
    check_against_sklearn(metric, samples, intended, labels)
    assert "labels" not in metric.score(samples[0]).details  # a suite-level set is not copied into every score


def test_macro_f1_counts_labels_nobody_predicted_or_has():
    labels = ["a", "b", "c", "d"]
    metric = build({"labels": labels})
    samples = [sample("a", "a"), sample("b", "a"), sample("b", "b"), sample("nonsense", "b")]
    agg = metric.aggregate(metric.score_batch(samples))
    gold, pred = ["a", "a", "b", "b"], ["a", "b", "b", INVALID]
    assert agg.details["macro_f1"] == pytest.approx(
        f1_score(gold, pred, labels=labels, average="macro", zero_division=0), abs=1e-12)
    assert agg.details["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


BANKING_CASES = [
    # (extract, output, predicted label or None for invalid)
    ("normalized", "card_arrival", "card_arrival"),
    ("normalized", "Label: Card Arrival.", "card_arrival"),
    ("normalized", "**card_arrival**", "card_arrival"),
    ("normalized", "'card_arrival'", "card_arrival"),
    ("normalized", "refund not showing up", "Refund_not_showing_up"),
    ("normalized", "reverted card payment", "reverted_card_payment?"),
    ("normalized", "The intent is: top_up_failed", "top_up_failed"),
    ("normalized", "I think it is card_arrival", None),
    ("normalized", "card", None),
    ("normalized", "card_arrival\nbecause the card has not arrived", None),
    ("first_line", "\n\ncard_arrival\nbecause the card has not arrived", "card_arrival"),
    ("first_line", "Because the card has not arrived:\ncard_arrival", None),
    ("exact", "card_arrival\n", "card_arrival"),
    ("exact", "CARD_ARRIVAL", "card_arrival"),
    ("exact", "card arrival", None),
    ("mention", "This is about card arrival, I believe.", "card_arrival"),
    ("mention", "card_arrival", "card_arrival"),
    ("mention", "Sounds like card_delivery_estimate or card_arrival.", None),
    ("mention", "Is my card ok?", None),
    ("mention", "my_card_arrival_ticket", None),
    ("mention", "lost_or_stolen_phone", "lost_or_stolen_phone"),
    ("mention", "The customer asks about a reverted card payment.", "reverted_card_payment?"),
]


@pytest.mark.parametrize(("extract", "output", "predicted"), BANKING_CASES)
def test_extraction_on_banking77_labels(extract, output, predicted):
    metric = build({"extract": extract, "labels": BANKING_LABELS})
    score = metric.score(sample(output, "card_arrival"))
    assert score.error is None
    assert score.details["predicted"] == predicted
    assert score.details["gold"] == "card_arrival"
    assert score.details["invalid"] is (predicted is None)
    assert score.value == (1.0 if predicted == "card_arrival" else 0.0)
    assert score.passed is (predicted == "card_arrival")
    if predicted is None:
        assert score.explanation.startswith("invalid prediction: ")


def test_mention_reports_which_labels_were_named():
    metric = build({"extract": "mention", "labels": ["negative", "positive"]})
    score = metric.score(sample("Not negative; positive overall.", "positive"))
    assert score.details["invalid"] is True
    assert "negative, positive" in score.explanation


def test_regex_extraction():
    metric = build({"extract": "regex", "pattern": r"(?i)answer:\s*([\w?]+)", "labels": BANKING_LABELS})
    assert metric.score(sample("Reasoning...\nAnswer: card_arrival", "card_arrival")).value == 1.0
    missing = metric.score(sample("card_arrival", "card_arrival"))
    assert missing.details["invalid"] is True and "did not match" in missing.explanation
    not_a_label = metric.score(sample("Answer: banana", "card_arrival"))
    assert not_a_label.details["invalid"] is True and "banana" in not_a_label.explanation


@pytest.mark.parametrize("options", [
    {"extract": "regex"},
    {"extract": "regex", "pattern": r"answer: \w+"},
    {"extract": "regex", "pattern": r"(a)(b)"},
    {"extract": "regex", "pattern": r"(unclosed"},
    {"pattern": r"(\w+)"},
])
def test_bad_regex_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        build({**options, "labels": ["a", "b"]})


def test_labels_differing_only_in_case():
    with pytest.raises(ConfigError, match="differ only in case"):
        build({"labels": ["Positive", "positive"]})
    metric = build({"labels": ["Positive", "positive"], "case_sensitive": True, "extract": "exact"})
    assert metric.score(sample("Positive", "Positive")).details["predicted"] == "Positive"
    assert metric.score(sample("positive", "Positive")).details["predicted"] == "positive"
    assert metric.score(sample("POSITIVE", "Positive")).details["invalid"] is True
    mention = build({"labels": ["Apple", "apple"], "case_sensitive": True, "extract": "mention"})
    assert mention.score(sample("I mean Apple, the company", "Apple")).details["predicted"] == "Apple"


def test_case_insensitive_gold_maps_to_the_declared_spelling():
    metric = build({"labels": BANKING_LABELS})
    score = metric.score(sample("refund_not_showing_up", "refund_not_showing_up"))
    assert score.details["gold"] == "Refund_not_showing_up" and score.value == 1.0


def test_labels_colliding_after_normalisation_need_exact():
    with pytest.raises(ConfigError, match="extract: exact"):
        build({"labels": ["top_up", "top-up"]})
    metric = build({"labels": ["top_up", "top-up"], "extract": "exact"})
    assert metric.score(sample("top-up", "top-up")).value == 1.0


def test_gold_outside_the_label_set_is_an_error_naming_case_and_label():
    metric = build({"labels": BANKING_LABELS})
    score = metric.score(sample("card_arrival", "card_arival", case_id="support:7"))
    assert score.value is None
    assert "support:7" in score.error and "card_arival" in score.error and "card_arrival" in score.error


def test_no_label_set_anywhere_is_a_per_case_error():
    metric = build()
    score = metric.score(sample("positive", "positive"))
    assert score.value is None and "no label set" in score.error
    agg = metric.aggregate([score])
    assert agg.value is None and agg.n == 0 and agg.n_errors == 1


def test_bad_suite_labels_are_a_config_error():
    with pytest.raises(ConfigError, match="labels"):
        build(suite_vars={"labels": "positive,negative"})
    with pytest.raises(ConfigError, match="listed twice"):
        build({"labels": ["a", "a"]})
    with pytest.raises(ConfigError, match="reserved"):
        build({"labels": ["a", INVALID]})
    with pytest.raises(pydantic.ValidationError):
        build({"extract": "fuzzy"})


def test_failed_output_is_an_error_not_a_wrong_answer():
    score = build({"labels": ["a"]}).score(sample("", "a", error="HTTP 500"))
    assert score.value is None and "HTTP 500" in score.error


def test_edge_outputs():
    labels = ["négatif", "positif", "正面"]
    metric = build({"labels": labels})
    assert metric.score(sample("NÉGATIF", "négatif")).value == 1.0
    assert metric.score(sample("ne\u0301gatif", "négatif")).value == 1.0  # decomposed accent (NFD)
    assert metric.score(sample("「正面」", "正面")).value == 1.0
    for garbage in ["", "   \n\t", "\x00\x01\ufffd", "{}" * 50_000]:
        score = metric.score(sample(garbage, "positif"))
        assert score.value == 0.0 and score.details["invalid"] is True and score.error is None
    long_mention = build({"labels": labels, "extract": "mention"})
    text = "lorem ipsum " * 20_000 + "positif"
    assert long_mention.score(sample(text, "positif")).value == 1.0


def test_scores_and_aggregate_are_json_serialisable():
    metric = build({"labels": ["a", "b"]})
    scores = metric.score_batch([sample("a", "a"), sample("zzz", "b")])
    json.dumps([s.details for s in scores])
    json.dumps(metric.aggregate(scores).details)


def test_registered_through_the_hook():
    seen = []
    classification_module.register_metrics(register=seen.append)
    assert [f.__tunebench_metric__.kind for f in seen] == ["label"]
    assert seen[0].__tunebench_metric__.family == "accuracy"


def test_a_run_of_the_shipped_intent_suite_compares_macro_f1_from_the_labels(tmp_path):
    """`label` says its scores carry labels, so the run's paired comparison reads them: a macro-F1 interval whose
    estimate is the difference of the two models' aggregate macro-F1 (the only metric whose labels are read)."""
    from tunebench import api

    suite = Path(__file__).resolve().parents[2] / "suites" / "support_intent.yaml"
    result = api.run(api.RunConfig(suite=suite, db=tmp_path / "s.duckdb", cache_dir=tmp_path / "cache",
                                   write_report=False))
    assert result.comparison is not None
    interval = result.comparison.metrics["intent"].macro_f1
    base, tuned = (result.metric(m, "intent").details["macro_f1"] for m in ("base", "tuned"))
    assert interval is not None and interval.estimate == pytest.approx(tuned - base, abs=1e-12)
    assert interval.low <= interval.estimate <= interval.high
    assert result.comparison.metrics["latency"].macro_f1 is None
