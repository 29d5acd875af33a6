"""json_valid, json_schema, length and cost: checked against json, jsonschema and hand-computed prices."""

from __future__ import annotations

import json
import math

import jsonschema
import pydantic
import pytest

from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import cost as cost_module
from tunebench.metrics import structure as structure_module
from tunebench.metrics.cost import cost
from tunebench.metrics.structure import json_schema, json_valid, length
from tunebench.records import Case, Output, Sample


def build(factory, options=None, **context):
    return factory.__tunebench_metric__.build(options or {}, MetricContext(**context))


def sample(text: str = "", *, model: str = "base", error: str | None = None, prompt_tokens: int | None = None,
           completion_tokens: int | None = None, cached: bool = False) -> Sample:
    case = Case(id="c1", input="q", expected="")
    return Sample(case, Output(case_id="c1", model=model, repeat=0, text=text, error=error,
                               prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cached=cached))


# -- json_valid -----------------------------------------------------------------------------------------------

VALID = ['{"a": 1}', "[1, 2, 3]", "42", '"text"', "null", '{"término": "año 🙂", "n": -1.5e3}',
         '  {"nested": {"x": [true, false, null]}}  \n']
INVALID = ["", "   ", "{a: 1}", "{'a': 1}", '{"a": 1,}', '{"a": 1} trailing', "NaN", '{"x": Infinity}',
           "Here is the JSON: {\"a\": 1}", "\x00\ufffd", "[" * 100_000]


@pytest.mark.parametrize("text", VALID)
def test_valid_json(text):
    score = build(json_valid).score(sample(text))
    assert (score.value, score.passed, score.error) == (1.0, True, None)
    assert score.details["type"] == {dict: "object", list: "array", str: "string", type(None): "null"}.get(
        type(json.loads(text)), "number")


@pytest.mark.parametrize("text", INVALID)
def test_invalid_json_fails_but_is_scored(text):
    score = build(json_valid).score(sample(text))
    assert (score.value, score.passed, score.error) == (0.0, False, None)
    assert score.explanation.startswith("not valid JSON")
    json.dumps(score.details)


def test_parse_error_position_comes_from_the_parser():
    text = '{\n  "a": 1,\n  "b": oops\n}'
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        expected = (exc.lineno, exc.colno)
    score = build(json_valid).score(sample(text))
    assert (score.details["line"], score.details["column"]) == expected == (3, 8)


def test_fences():
    fenced = '```json\n{"a": [1, 2]}\n```'
    assert build(json_valid).score(sample(fenced)).value == 1.0
    assert build(json_valid).score(sample("\n```\n[1]\n```\n")).value == 1.0
    assert build(json_valid, {"allow_fence": False}).score(sample(fenced)).value == 0.0
    assert build(json_valid).score(sample('Sure!\n```json\n{"a": 1}\n```')).value == 0.0
    assert build(json_valid).score(sample("```json\n```")).details["message"] == "empty output"


def test_require_object():
    metric = build(json_valid, {"require_object": True})
    assert metric.score(sample('{"a": 1}')).value == 1.0
    array = metric.score(sample("[1]"))
    assert (array.value, array.passed) == (0.0, False) and "not an object" in array.explanation


def test_very_long_json():
    text = json.dumps({"items": [{"id": i, "name": f"ítem {i}"} for i in range(50_000)]})
    assert build(json_valid).score(sample(text)).value == 1.0


def test_failed_output_is_an_error():
    score = build(json_valid).score(sample("", error="HTTP 429"))
    assert score.value is None and "HTTP 429" in score.error


# -- json_schema ----------------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "required": ["intent", "confidence", "slots"],
    "properties": {
        "intent": {"type": "string", "enum": ["refund", "card_arrival"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "slots": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def reference_errors(schema: dict, instance) -> list[tuple[str, str]]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted((e.json_path, e.message) for e in validator.iter_errors(instance))


@pytest.mark.parametrize("instance", [
    {"intent": "refund", "confidence": 0.9, "slots": ["amount"]},
    {"intent": "other", "confidence": 2, "slots": [1, "x", 3]},
    {"intent": "refund"},
    {"intent": "refund", "confidence": 0.5, "slots": [], "extra": True},
    [1, 2],
    {"intent": "card_arrival", "confidence": "high", "slots": list(range(12))},
])
def test_schema_errors_match_jsonschema(instance):
    score = build(json_schema, {"schema": SCHEMA}).score(sample(json.dumps(instance)))
    ref = reference_errors(SCHEMA, instance)
    assert score.value == (0.0 if ref else 1.0) and score.passed is (not ref)
    assert score.details["n_errors"] == len(ref)
    if ref:
        shown = [(e["path"], e["message"]) for e in score.details["errors"]]
        assert len(shown) == min(5, len(ref))
        assert set(shown) <= set(ref)
        assert shown[0][0] in score.explanation


def test_schema_from_files_relative_to_the_suite(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "s.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    (tmp_path / "schemas" / "s.yaml").write_text("type: object\nrequired: [intent]\n", encoding="utf-8")
    good = '```json\n{"intent": "refund", "confidence": 1, "slots": []}\n```'
    assert build(json_schema, {"schema": "schemas/s.json"}, suite_dir=tmp_path).score(sample(good)).value == 1.0
    from_yaml = build(json_schema, {"schema": "schemas/s.yaml"}, suite_dir=tmp_path)
    assert from_yaml.score(sample('{"intent": 1}')).value == 1.0
    assert from_yaml.score(sample("{}")).details["errors"][0]["path"] == "$"
    bad = from_yaml.score(sample("not json"))
    assert bad.value == 0.0 and bad.details["parse_error"]["line"] == 1


@pytest.mark.parametrize(("files", "schema", "match"), [
    ({}, "missing.json", "not found"),
    ({"s.json": "{ nope"}, "s.json", r"s\.json:1:3: schema is not valid JSON"),
    ({"s.txt": "{}"}, "s.txt", "unsupported schema file type"),
    ({"s.yaml": "- a\n- b\n"}, "s.yaml", "must be an object"),
    ({}, {"type": "strin"}, "not a valid JSON Schema"),
    ({}, {"properties": {"a": {"minimum": "zero"}}}, r"not a valid JSON Schema.*\$\.properties\.a\.minimum"),
])
def test_bad_schemas_are_config_errors(tmp_path, files, schema, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        build(json_schema, {"schema": schema}, suite_dir=tmp_path)


# -- length ---------------------------------------------------------------------------------------------------


def test_length_units_and_bounds():
    text = "Hola  mundo,\n¿qué tal?  🙂"
    words = build(length, {"min": 2, "max": 5}).score(sample(text))
    assert (words.value, words.passed) == (len(text.split()), True)
    chars = build(length, {"unit": "chars", "max": 10}).score(sample(text))
    assert (chars.value, chars.passed) == (len(text), False) and "> max 10" in chars.explanation
    tokens = build(length, {"unit": "tokens", "min": 10}).score(sample(text, completion_tokens=7))
    assert (tokens.value, tokens.passed) == (7, False) and "< min 10" in tokens.explanation
    unbounded = build(length).score(sample(""))
    assert (unbounded.value, unbounded.passed) == (0, None)


def test_chars_count_characters_not_code_points_of_decomposed_text():
    assert build(length, {"unit": "chars"}).score(sample("ne\u0301")).value == 2  # "né", decomposed


def test_tokens_without_usage_is_an_error():
    score = build(length, {"unit": "tokens"}).score(sample("hello"))
    assert score.value is None and "completion_tokens" in score.error


def test_length_aggregate():
    metric = build(length, {"max": 3})
    texts = ["a", "a b", "a b c d", "a b c d e f", ""]
    agg = metric.aggregate(metric.score_batch([sample(t) for t in texts]))
    counts = [len(t.split()) for t in texts]
    assert agg.value == pytest.approx(sum(counts) / len(counts))
    assert agg.pass_rate == pytest.approx(sum(c <= 3 for c in counts) / len(counts))
    assert (agg.details["median"], agg.details["max"], agg.details["n_too_long"]) == (2, 6, 2)


@pytest.mark.parametrize("options", [{"min": 5, "max": 2}, {"min": -1}, {"unit": "lines"}])
def test_bad_length_options(options):
    with pytest.raises((ConfigError, pydantic.ValidationError)):
        build(length, options)


def test_very_long_output():
    text = "palabra " * 200_000
    assert build(length, {"max": 1000}).score(sample(text)).passed is False


# -- cost -----------------------------------------------------------------------------------------------------

PRICES = {"base": {"input_per_1k": 0.5, "output_per_1k": 1.5},
          "tuned": {"input_per_million": 300, "output_per_million": 1200}}


def test_cost_per_case_and_aggregate():
    metric = build(cost, {"prices": PRICES, "threshold": 0.01})
    assert metric.higher_is_better is False
    runs = [("base", 1200, 300, False), ("tuned", 1000, 200, False), ("base", 10, 5, True)]
    scores = metric.score_batch([sample("x", model=m, prompt_tokens=p, completion_tokens=c, cached=k)
                                 for m, p, c, k in runs])
    expected = [1200 * 0.5 / 1000 + 300 * 1.5 / 1000, 1000 * 300 / 1e6 + 200 * 1200 / 1e6,
                10 * 0.5 / 1000 + 5 * 1.5 / 1000]
    assert [s.value for s in scores] == pytest.approx(expected, rel=1e-12)
    assert [s.passed for s in scores] == [v <= 0.01 for v in expected]
    agg = metric.aggregate(scores)
    assert agg.details["total_cost"] == pytest.approx(math.fsum(expected))
    assert agg.details["mean_cost"] == pytest.approx(math.fsum(expected) / 3)
    assert agg.value == pytest.approx(math.fsum(expected) / 3)
    assert agg.details["total_uncached"] == pytest.approx(expected[0] + expected[1])
    assert (agg.details["total_prompt_tokens"], agg.details["total_completion_tokens"]) == (2210, 505)
    json.dumps(agg.details)


def test_prices_from_the_suite_vars():
    metric = build(cost, suite_vars={"prices": PRICES})
    assert metric.score(sample(model="tuned", prompt_tokens=0, completion_tokens=0)).value == 0.0


def test_missing_usage_and_unknown_model_are_errors():
    metric = build(cost, {"prices": PRICES})
    no_usage = metric.score(sample(model="base", prompt_tokens=10))
    assert no_usage.value is None and "no token usage recorded" in no_usage.error
    unknown = metric.score(sample(model="tunedd", prompt_tokens=1, completion_tokens=1))
    assert unknown.value is None
    assert "'tunedd'" in unknown.error and "did you mean 'tuned'" in unknown.error and "input_per_1k" in unknown.error
    agg = metric.aggregate([no_usage, unknown])
    assert agg.value is None and agg.n_errors == 2


@pytest.mark.parametrize(("options", "suite_vars", "match"), [
    ({}, {}, "needs a price table"),
    ({"prices": {"base": {"input_per_1k": 1}}}, {}, "exactly one output price"),
    ({"prices": {"base": {"input_per_1k": 1, "input_per_million": 1, "output_per_1k": 1}}}, {},
     "exactly one input price"),
    ({"prices": {"base": {"input_per_1K": 1, "output_per_1k": 1}}}, {}, "did you mean 'input_per_1k'"),
    ({"prices": {"base": {"input_per_1k": -1, "output_per_1k": 1}}}, {}, "≥ 0"),
    ({}, {"prices": {"base": "cheap"}}, "suite variable 'prices'.*must be a mapping"),
])
def test_bad_price_tables(options, suite_vars, match):
    with pytest.raises(ConfigError, match=match):
        build(cost, options, suite_vars=suite_vars)


def test_registered_through_the_hooks():
    seen = []
    structure_module.register_metrics(register=seen.append)
    cost_module.register_metrics(register=seen.append)
    assert {f.__tunebench_metric__.kind: f.__tunebench_metric__.family for f in seen} == {
        "json_valid": "format", "json_schema": "format", "length": "format", "cost": "cost"}
