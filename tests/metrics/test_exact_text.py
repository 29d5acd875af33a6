"""exact_match, contains and regex: hand-checkable cases; punctuation checked against the `regex` module."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pydantic
import pytest
import regex as regex_module  # third-party `regex`: an independent Unicode \p{P} implementation

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import exact as exact_module
from tunebench.metrics import text as text_module
from tunebench.metrics.exact import exact_match, normalize_text
from tunebench.metrics.text import contains, regex
from tunebench.records import Case, Output, Sample


def sample(text: str, expected: str = "") -> Sample:
    case = Case(id="c1", input="question", expected=expected, source="golden.jsonl:1")
    return Sample(case, Output(case_id="c1", model="m", repeat=0, text=text))


def build(factory, **options):
    return factory.__tunebench_metric__.build(options, MetricContext(suite_dir=Path.cwd()))


# -- exact_match ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected", "options", "value"),
    [
        ("Hello  World\n", "hello world", {}, 1.0),
        ("  yes ", "Yes", {}, 1.0),
        ("Yes.", "Yes", {}, 0.0),  # punctuation counts by default
        ("Yes.", "Yes", {"ignore_punctuation": True}, 1.0),
        ("¿Qué?", "qué", {"ignore_punctuation": True}, 1.0),  # non-ASCII punctuation
        ("«Bonjour» — dit-il", "bonjour ditil", {"ignore_punctuation": True}, 1.0),
        ("a , b", "a b", {"ignore_punctuation": True}, 1.0),  # punctuation removed before whitespace collapses
        ("$5", "5", {"ignore_punctuation": True}, 0.0),  # "$" is a symbol (Sc), not punctuation
        ("A", "a", {"ignore_case": False}, 0.0),
        ("STRASSE", "straße", {}, 1.0),  # case folding, not just lower()
        ("a  b", "a b", {"ignore_whitespace": False}, 0.0),
        ("cafe\u0301", "caf\u00e9", {}, 1.0),  # decomposed and precomposed é are the same text (NFC)
        ("", "", {}, 1.0),
        ("", "something", {}, 0.0),
    ],
)
def test_exact_match_values(output, expected, options, value):
    score = build(exact_match, **options).score(sample(output, expected))
    assert score.value == value
    assert score.passed is (value == 1.0)
    json.dumps(score.details)  # JSON-serialisable


def test_exact_match_explains_where_texts_differ():
    score = build(exact_match).score(sample("the premium is due", "the premiums are due"))
    assert score.value == 0.0
    assert score.explanation == "differs from expected at character 11"
    assert score.details == {"output": "the premium is due", "expected": "the premiums are due"}


def test_punctuation_matches_unicode_category_p_everywhere():
    # Every assigned BMP character: our category-P filter must agree with regex's \p{P}.
    chars = "".join(chr(cp) for cp in range(0x20, 0x10000) if unicodedata.category(chr(cp)) not in ("Cn", "Cs", "Co"))
    ours = normalize_text(chars, ignore_case=False, ignore_whitespace=False, ignore_punctuation=True)
    reference = regex_module.sub(r"\p{P}", "", unicodedata.normalize("NFC", chars))
    assert len(ours) < len(chars) - 500  # it did remove a lot
    assert ours == reference


def test_punctuation_of_ascii_text_matches_unicode_category_p():
    chars = "".join(chr(cp) for cp in range(128)) * 2  # ASCII-only text takes the translate-table path
    ours = normalize_text(chars, ignore_case=False, ignore_whitespace=False, ignore_punctuation=True)
    assert ours == regex_module.sub(r"\p{P}", "", chars) and len(ours) == 2 * (128 - 23)


def test_whitespace_collapses_exactly_as_regular_expression_whitespace():
    # Every code point re's \s matches in text, alone, in runs and at the ends, against re itself.
    spaces = [chr(cp) for cp in range(0x110000) if re.fullmatch(r"\s", chr(cp))]
    assert len(spaces) > 20
    text = "".join(f"{s}a{s}{s}b{s}" for s in spaces) + "c\u00a0\u2003d \x1c e\u200b"  # U+200B is not a space
    ours = normalize_text(text, ignore_case=False, ignore_whitespace=True, ignore_punctuation=False)
    assert ours == re.sub(r"\s+", " ", text).strip()


def test_exact_match_rejects_unknown_option():
    with pytest.raises(pydantic.ValidationError, match="ignore_punctuaton"):
        build(exact_match, ignore_punctuaton=True)


# -- contains ---------------------------------------------------------------------------------------------------


def test_contains_any_and_all():
    text = "Your Premium is due monthly."
    score = build(contains, values=["deductible", "premium"]).score(sample(text))
    assert (score.value, score.passed) == (1.0, True)
    assert score.details == {"found": ["premium"], "missing": ["deductible"]}
    assert score.explanation == "found: premium"

    score = build(contains, values=["deductible", "premium"], mode="all").score(sample(text))
    assert (score.value, score.passed) == (0.0, False)
    assert score.explanation == "missing: deductible"

    score = build(contains, values=["deductible", "copayment"]).score(sample(text))
    assert score.explanation == "none found of: deductible, copayment"


def test_contains_single_value_and_case_sensitivity():
    assert build(contains, value="premium").score(sample("PREMIUM")).value == 1.0
    assert build(contains, value="premium", ignore_case=False).score(sample("PREMIUM")).value == 0.0
    assert build(contains, value="straße").score(sample("STRASSE")).value == 1.0  # casefold


def test_contains_negate():
    metric = build(contains, values=["as an AI", "I cannot"], negate=True)
    ok = metric.score(sample("The deductible is $500."))
    assert (ok.value, ok.passed, ok.explanation) == (1.0, True, "none found")
    bad = metric.score(sample("As an AI, I cannot say."))
    assert (bad.value, bad.passed) == (0.0, False)
    assert bad.explanation == "found (not allowed): as an AI, I cannot"
    # all + negate: fails only when every value is present
    both = build(contains, values=["a", "b"], mode="all", negate=True)
    assert both.score(sample("a only")).passed is True
    assert both.score(sample("a and b")).passed is False


def test_contains_expected_placeholder():
    metric = build(contains, value="{expected}")
    assert metric.score(sample("The answer is Paris.", "paris")).value == 1.0
    assert metric.score(sample("The answer is Lyon.", "Paris")).value == 0.0
    assert metric.score(sample("The answer is Lyon.", "Paris")).explanation == "none found of: {expected}"
    empty = metric.score(sample("anything", ""))
    assert empty.value is None and "no expected text" in empty.error
    # Other braces are literal: no str.format.
    assert build(contains, value='{"ok": true}').score(sample('reply {"ok": true}')).value == 1.0


@pytest.mark.parametrize(
    "options",
    [{}, {"value": "a", "values": ["b"]}, {"values": []}, {"values": ["a", ""]}],
)
def test_contains_bad_options(options):
    with pytest.raises(ConfigError, match="contains"):
        build(contains, **options)


# -- regex ------------------------------------------------------------------------------------------------------


def test_regex_any_all_and_matches():
    metric = build(regex, patterns=[r"\b\d{3}-\d{4}\b", r"call us"], mode="all")
    score = metric.score(sample("Please CALL US at 555-0199 today."))
    assert (score.value, score.passed) == (1.0, True)
    assert score.details["matches"] == {r"\b\d{3}-\d{4}\b": "555-0199", "call us": "CALL US"}
    score = metric.score(sample("Please call us."))
    assert score.passed is False
    assert score.details["missing"] == [r"\b\d{3}-\d{4}\b"]
    assert score.explanation == r"missing: \b\d{3}-\d{4}\b"


def test_regex_ignore_case_and_negate():
    assert build(regex, pattern="^yes$", ignore_case=False).score(sample("YES")).value == 0.0
    assert build(regex, pattern="^yes$").score(sample("YES")).value == 1.0
    no_urls = build(regex, pattern=r"https?://", negate=True)
    assert no_urls.score(sample("see the plan")).passed is True
    assert no_urls.score(sample("see http://x.example")).passed is False


def test_regex_bad_pattern_is_config_error_with_the_regex_message():
    with pytest.raises(re.error) as reference:
        re.compile("(unclosed")
    with pytest.raises(ConfigError) as err:
        build(regex, pattern="(unclosed")
    assert str(reference.value) in str(err.value)
    assert "'(unclosed'" in str(err.value)
    # A pattern using {expected} is checked at build time too.
    with pytest.raises(ConfigError, match="invalid pattern"):
        build(regex, pattern="({expected}")


def test_regex_expected_is_inserted_literally():
    metric = build(regex, pattern=r"^costs {expected}$")
    assert metric.score(sample("costs $5 (approx.)", "$5 (approx.)")).value == 1.0
    assert metric.score(sample("costs $5 approx", "$5 (approx.)")).value == 0.0  # "(" and "." are literal
    assert metric.score(sample("costs x", "")).error is not None


def test_plugin_hooks_register_the_factories():
    registered = []
    exact_module.register_metrics(register=registered.append)
    text_module.register_metrics(register=registered.append)
    kinds = {f.__tunebench_metric__.kind: f.__tunebench_metric__.family for f in registered}
    assert kinds == {"exact_match": "accuracy", "contains": "format", "regex": "format"}
