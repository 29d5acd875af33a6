"""The judge metric against a real loopback judge server: grading, reply formats, garbage, repeats, caching,
retries, configuration errors, and one run end to end through ``tunebench.api.run``."""

from __future__ import annotations

import collections
import json
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fakeserver import FakeOpenAI, Fault, FaultRule
from tunebench import api
from tunebench.errors import ConfigError
from tunebench.metrics import MetricContext
from tunebench.metrics import judge as judge_module
from tunebench.metrics.judge import CACHE_FILE, parse_judge_reply
from tunebench.records import Case, Output, Sample
from tunebench.store import Store

RUBRIC = ("Question: {{ input }}\n<reference>{{ expected }}</reference>\n<answer>{{ output }}</answer>\n"
          "Score 5 if the answer states the reference, else 1.")


def grade(model: str, text: str, body: dict) -> str:
    """A deterministic judge: 5 when the answer contains the reference (case-insensitively), else 1."""
    reference = re.search(r"<reference>(.*?)</reference>", text, re.S).group(1)
    answer = re.search(r"<answer>(.*?)</answer>", text, re.S).group(1)
    ok = reference.casefold() in answer.casefold()
    return json.dumps({"score": 5 if ok else 1, "reason": "states the reference" if ok else "reference missing"})


def build(options: dict, **context):
    return judge_module.judge.__tunebench_metric__.build(options, MetricContext(**context))


def judge_model(server: FakeOpenAI, **extra) -> dict:
    return {"runner": "openai", "base_url": server.base_url, "model": "judge-1", "backoff_s": 0.01, **extra}


def sample(case_id: str, output: str, expected: str = "", input: str = "q", **case_vars) -> Sample:
    case = Case(id=case_id, input=input, expected=expected, vars=case_vars)
    return Sample(case, Output(case_id=case_id, model="tuned", repeat=0, text=output))


# -- grading through a real server ------------------------------------------------------------------------------


def test_grades_each_output_and_normalises(tmp_path):
    samples = [sample("a", "The deductible is $500.", "$500"), sample("b", "I don't know.", "$500"),
               sample("c", "Café crème: ✓ <b>yes</b>", "crème")]
    with FakeOpenAI(reply=grade) as server:
        metric = build({"judge_model": judge_model(server), "rubric": RUBRIC, "pass_score": 4})
        scores = metric.score_batch(samples)
    assert [s.value for s in scores] == [1.0, 0.0, 1.0]
    assert [s.passed for s in scores] == [True, False, True]
    assert [s.details["score"] for s in scores] == [5.0, 1.0, 5.0]
    assert scores[1].explanation == "1/5: reference missing" and scores[1].error is None
    # the judge saw the rendered rubric, unicode and markup intact, after the default JSON instructions
    body = next(r.json for r in server.requests if "Café" in r.json["messages"][-1]["content"])
    assert body["model"] == "judge-1"
    assert body["messages"][0]["role"] == "system" and '"score"' in body["messages"][0]["content"]
    assert "<answer>Café crème: ✓ <b>yes</b></answer>" in body["messages"][1]["content"]
    assert server.count == 3
    agg = metric.aggregate(scores)
    assert agg.value == pytest.approx(np.mean([1.0, 0.0, 1.0]))
    assert agg.pass_rate == pytest.approx(2 / 3) and agg.details["mean_score"] == pytest.approx(11 / 3)


def test_raw_scale_without_normalising_and_custom_scale(tmp_path):
    with FakeOpenAI(reply=lambda m, t, b: "Score: 7/10") as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}", "scale": [0, 10],
                        "normalize": False, "pass_score": 8, "system": ""})
        score = metric.score_batch([sample("a", "x")])[0]
        assert server.requests[0].json["messages"] == [{"role": "user", "content": "x"}]  # system "" = none
    assert (score.value, score.passed, score.details["scale"]) == (7.0, False, [0.0, 10.0])


REPLIES = {
    "json": ('{"score": 4, "reason": "mostly right"}', 4.0, "mostly right"),
    "json_fenced": ('Here you go:\n```json\n{"Rating": "3/5", "explanation": "vague"}\n```', 3.0, "vague"),
    "marked": ("The answer is correct but terse.\nScore: 4", 4.0, "The answer is correct but terse."),
    "marked_bold": ("**Score:** 2\nReason: wrong amount", 2.0, "wrong amount"),
    "fraction": ("I would give it 4/5.", 4.0, None),
    "bold": ("Verdict: **5**", 5.0, None),
    "out_of": ("Rating: 3 out of 5", 3.0, None),
    "bare": ("4", 4.0, None),
    "bare_first_line": ("2.\nIt misses the exclusions.", 2.0, "It misses the exclusions."),
    "decimal": ("score = 4.5", 4.5, None),
    "marked_beats_loose": ("A score of 5 needs sources; 1/5 would be wrong. Final score: 3", 3.0, None),
}


def test_every_reply_format_is_parsed_from_a_real_judge():
    with FakeOpenAI(reply=lambda m, text, b: REPLIES[text][0]) as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}"})
        scores = metric.score_batch([sample(name, name) for name in REPLIES])
    for name, score in zip(REPLIES, scores, strict=True):
        _, raw, reason = REPLIES[name]
        assert score.error is None, (name, score.error)
        assert score.details["score"] == raw, name
        assert score.value == pytest.approx((raw - 1) / 4), name
        if reason is not None:
            assert score.details["reason"] == reason, name


@pytest.mark.parametrize(("text", "error"), [
    ("Score: 7", "judge score 7 is outside the scale 1–5"),
    ("Score: 0", "judge score 0 is outside the scale 1–5"),
    ('{"score": 6}', "judge score 6 is outside the scale 1–5"),
    ('{"score": NaN}', "judge score nan is outside the scale 1–5"),
    ("Score: 8/10", "judge scored on another scale (8/10, expected the scale 1–5)"),
    ("**4** or **5**", "unparseable judge reply"),
    ('{"score": "great"}', "unparseable judge reply"),
    ('{"score": true}', "unparseable judge reply"),
    ("It covers 1/2 of the points.", "unparseable judge reply"),
    ("", "unparseable judge reply"),
])
def test_bad_scores_are_rejected_not_clipped(text, error):
    parsed = parse_judge_reply(text, (1.0, 5.0))
    assert (parsed.score, parsed.error) == (None, error)


def test_garbage_judge_gives_error_rows_with_the_raw_reply():
    garbage = "As an AI I cannot grade this. <script>alert(1)</script> 🤷"
    with FakeOpenAI(reply=lambda m, t, b: garbage if "bad" in t else "Score: 5") as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}"})
        scores = metric.score_batch([sample("a", "bad one"), sample("b", "good one"), sample("c", "bad two")])
    bad = [scores[0], scores[2]]
    assert all(s.value is None and s.error == "unparseable judge reply" and s.details["raw"] == garbage
               for s in bad)
    assert scores[1].value == 1.0
    agg = metric.aggregate(scores)
    assert (agg.value, agg.n, agg.n_errors) == (1.0, 1, 2)


def test_undefined_rubric_variable_is_an_error_row_for_that_case_only():
    with FakeOpenAI(reply=lambda m, t, b: "Score: 3") as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }} vs {{ clause }}"})
        scores = metric.score_batch([sample("a", "x", clause="§4"), sample("b", "y")])
    assert scores[0].details["score"] == 3.0
    assert scores[1].value is None and "'clause' is undefined" in scores[1].error
    assert server.count == 1


# -- repeats and agreement --------------------------------------------------------------------------------------

REPEATED = {"steady": [4, 4, 4], "wobbly": [1, 3, 5]}


def test_repeats_report_mean_and_agreement():
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def reply(model: str, text: str, body: dict) -> str:
        with lock:
            n = seen[text]
            seen[text] += 1
        return f"Score: {REPEATED[text][n]}"

    with FakeOpenAI(reply=reply) as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}", "repeats": 3})
        scores = metric.score_batch([sample(name, name) for name in REPEATED])
    assert server.count == 6
    for name, score in zip(REPEATED, scores, strict=True):
        values = np.array(REPEATED[name], dtype=float)
        assert sorted(score.details["scores"]) == sorted(values.tolist())
        assert score.details["score"] == pytest.approx(values.mean())
        assert score.value == pytest.approx((values.mean() - 1) / 4)
        assert score.details["mad"] == pytest.approx(np.mean(np.abs(values - values.mean())))
        assert score.details["agree"] is (len(set(REPEATED[name])) == 1)
    agg = metric.aggregate(scores)
    assert agg.details["agreement"] == 0.5
    assert agg.details["mean_abs_deviation"] == pytest.approx(np.mean([0.0, np.mean(np.abs(
        np.array(REPEATED["wobbly"]) - np.mean(REPEATED["wobbly"])))]))
    assert agg.details["repeats"] == 3


def test_one_failed_repeat_makes_the_case_an_error_keeping_the_others():
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def reply(model: str, text: str, body: dict) -> str:
        with lock:
            seen[text] += 1
            n = seen[text]
        return "Score: 4" if n < 3 else "no idea"

    with FakeOpenAI(reply=reply) as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}", "repeats": 3})
        score = metric.score_batch([sample("a", "x")])[0]
    assert score.value is None and score.error == "unparseable judge reply"
    assert score.details["raw"] == "no idea"


# -- the judge cache ------------------------------------------------------------------------------------------


def test_second_scoring_sends_no_judge_request_and_uses_its_own_file(tmp_path):
    samples = [sample(f"c{i}", f"answer {i}", f"answer {i % 2}") for i in range(6)]
    with FakeOpenAI(reply=grade) as server:
        options = {"judge_model": judge_model(server), "rubric": RUBRIC, "repeats": 2}
        first = build(options, cache_dir=tmp_path).score_batch(samples)
        assert server.count == 12
        second = build(options, cache_dir=tmp_path).score_batch(samples)  # a fresh instance: from disk
        assert server.count == 12
        assert [s.value for s in second] == [s.value for s in first]
        build(options, cache_dir=tmp_path, ).score_batch([sample("new", "other", "x")])
        assert server.count == 14
        build({**options, "cache": False}, cache_dir=tmp_path).score_batch(samples[:1])
        assert server.count == 16
        build({**options, "rubric": RUBRIC + " Be strict."}, cache_dir=tmp_path).score_batch(samples[:1])
        assert server.count == 18  # another rubric is another question
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".sqlite") == [CACHE_FILE]
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 12 + 2 + 2


def test_identical_outputs_in_a_batch_are_judged_once(tmp_path):
    with FakeOpenAI(reply=grade) as server:
        metric = build({"judge_model": judge_model(server), "rubric": RUBRIC})
        scores = metric.score_batch([sample("a", "same", "same", input="q1")] * 3)
    assert server.count == 1 and [s.value for s in scores] == [1.0] * 3


def test_errors_and_unparseable_replies_are_not_cached(tmp_path):
    rules = [FaultRule(match="refused", fault=Fault.error(400), times=1),
             FaultRule(match="garbled", fault=Fault.malformed(), times=1)]
    replies = iter(["lol", "Score: 2"])
    with FakeOpenAI(reply=lambda m, t, b: next(replies) if "flaky" in t else "Score: 5", rules=rules) as server:
        options = {"judge_model": judge_model(server), "rubric": "{{ output }}"}
        samples = [sample("a", "refused"), sample("b", "garbled"), sample("c", "flaky"), sample("d", "fine")]
        first = build(options, cache_dir=tmp_path).score_batch(samples)
        assert "judge failed: HTTP 400" in first[0].error
        assert "judge failed: malformed JSON" in first[1].error
        assert first[2].error == "unparseable judge reply" and first[2].details["raw"] == "lol"
        assert first[3].value == 1.0
        before = server.count
        second = build(options, cache_dir=tmp_path).score_batch(samples)
        assert server.count == before + 3  # only the three failures were asked again
    assert [s.details["score"] for s in second] == [5.0, 5.0, 2.0, 5.0]


def test_transient_failures_are_retried_and_then_given_up(tmp_path):
    rules = [FaultRule(match="once", fault=Fault.rate_limit("0"), times=1),
             FaultRule(match="dropped", fault=Fault.drop(), times=1),
             FaultRule(match="always", fault=Fault.error(503))]
    with FakeOpenAI(reply=lambda m, t, b: "Score: 4", rules=rules) as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}"})
        scores = metric.score_batch([sample("a", "once"), sample("b", "dropped"), sample("c", "always")])
    assert [s.details.get("score") for s in scores[:2]] == [4.0, 4.0]
    assert "HTTP 503" in scores[2].error and "gave up after 3 attempts" in scores[2].error
    assert server.count == 2 + 2 + 3


def test_batch_runs_concurrently_within_the_limit():
    with FakeOpenAI(reply=lambda m, t, b: "Score: 3", latency_ms=100) as server:
        metric = build({"judge_model": judge_model(server), "rubric": "{{ output }}", "concurrency": 8})
        started = time.perf_counter()
        scores = metric.score_batch([sample(f"c{i}", f"out {i}") for i in range(16)])
        elapsed = time.perf_counter() - started
    assert all(s.value == 0.5 for s in scores)
    assert server.connections <= 8
    assert elapsed < 16 * 0.1 / 2  # one at a time would take 1.6 s; eight at a time about 0.2 s


def test_judge_names_a_model_of_the_suite(tmp_path):
    from tunebench.runners import RunnerContext
    from tunebench.runners.openai import openai

    with FakeOpenAI(reply=grade) as server:
        runner = openai.__tunebench_runner__.build({"base_url": server.base_url, "model": "grader"},
                                                   RunnerContext(model_name="grader"))
        metric = build({"judge": "grader", "rubric": RUBRIC}, runners={"grader": runner})
        score = metric.score_batch([sample("a", "yes", "yes")])[0]
    assert score.value == 1.0 and server.requests[0].json["model"] == "grader"
    assert metric.runner is not runner  # a copy: the engine keeps the original on its own loop


# -- configuration errors ---------------------------------------------------------------------------------------


OPENAI = {"runner": "openai", "base_url": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize(("options", "message"), [
    ({}, "exactly one of 'judge_model'"),
    ({"judge": "a", "judge_model": OPENAI}, "exactly one of 'judge_model'"),
    ({"judge": "gradr"}, "judge 'gradr' is not a model of the suite (did you mean 'grader'?)"),
    ({"judge_model": {"runner": "opnai"}}, "unknown runner 'opnai' (did you mean 'openai'?)"),
    ({"judge_model": {**OPENAI, "modle": "m"}}, "judge_model: unknown option 'modle' for runner 'openai' "
                                                "(did you mean 'model'?)"),
    ({"judge_model": OPENAI}, "judge_model.model: Field required"),
    ({"judge_model": {**OPENAI, "model": "m", "api": "x"}}, "judge_model.api: Input should be 'chat' or"),
    ({"judge_model": {**OPENAI, "timeout_s": -1}}, "judge_model.timeout_s: Input should be greater than 0"),
    ({"judge_model": {**OPENAI, "repeats": 3}}, "'repeats' is an option of the judge metric itself"),
    ({"judge": "grader", "rubric": "{{ output "}, "rubric: template syntax error"),
    ({"judge": "grader", "rubric": "Is {{ input }} answered?"}, "the rubric never shows the judge the answer"),
    ({"judge": "grader", "scale": [5, 1]}, "scale [5.0, 1.0] must be [min, max]"),
    ({"judge": "grader", "pass_score": 9}, "pass_score 9 is outside the scale 1–5"),
])
def test_bad_configuration_is_one_clear_error(options, message):
    with pytest.raises(ConfigError) as info:
        build({"rubric": "{{ output }}", **options}, runners={"grader": object()})
    assert message in str(info.value)


# -- end to end -------------------------------------------------------------------------------------------------

SUITE = """\
name: judged
models:
  base: {{runner: recorded, path: base.jsonl}}
  tuned: {{runner: recorded, path: tuned.jsonl}}
{extra_model}
cases:
  - {{id: c1, input: "What is the deductible?", expected: "$500"}}
  - {{id: c2, input: "Is flood damage covered?", expected: "not covered"}}
  - {{id: c3, input: "Who pays for towing?", expected: "the insurer"}}
metrics:
  graded:
    type: judge
    {judge}
    rubric: |
      Question: {{{{ input }}}}
      <reference>{{{{ expected }}}}</reference>
      <answer>{{{{ output }}}}</answer>
      Score 5 if the answer states the reference, else 1.
    pass_score: 4
"""


@pytest.fixture
def judge_registered():
    """The judge plugin, registered like a built-in if the host does not list it yet."""
    from tunebench import plugins

    if not plugins.get_plugin_manager().is_registered(judge_module):
        plugins.register_plugin(judge_module, name="tunebench.metrics.judge")


def write_suite(tmp_path: Path, judge: str, extra_model: str = "") -> Path:
    outputs = {"base": ["I am not sure.", "Flood damage is covered.", "The insurer pays."],
               "tuned": ["The deductible is $500.", "Flood damage is not covered.", "The insurer pays."]}
    for model, texts in outputs.items():
        (tmp_path / f"{model}.jsonl").write_text(
            "".join(json.dumps({"id": f"c{i + 1}", "output": t}) + "\n" for i, t in enumerate(texts)))
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(judge=judge, extra_model=extra_model))
    return path


def run_suite(tmp_path: Path, suite: Path) -> api.RunResult:
    return api.run(api.RunConfig(suite=suite, db=tmp_path / "store.duckdb", cache_dir=tmp_path / "cache",
                                 write_report=False))


def test_end_to_end_with_an_inline_judge(tmp_path, judge_registered):
    with FakeOpenAI(reply=grade) as server:
        suite = write_suite(tmp_path, f"judge_model: {{runner: openai, base_url: '{server.base_url}', "
                                      "model: judge-1}")
        result = run_suite(tmp_path, suite)
        # 6 outputs, 5 distinct: base and tuned answer c3 alike, and a blind judge is asked that once
        assert server.count == 5
        again = run_suite(tmp_path, suite)
        assert server.count == 5  # judge replies came from judge.sqlite
    assert result.metric("base", "graded").value == pytest.approx(1 / 3)
    assert result.metric("tuned", "graded").value == pytest.approx(1.0)
    assert result.metric("tuned", "graded").pass_rate == 1.0
    assert again.metric("base", "graded").value == result.metric("base", "graded").value
    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        rows = store.get_scores(result.run_id, metric="graded")
    by_case = {(cid, model): s for cid, model, _, _, s in rows}
    assert by_case[("c2", "base")].details == {"score": 1.0, "scores": [1.0], "scale": [1.0, 5.0],
                                               "reason": "reference missing", "judge": "openai:judge-1"}
    assert (tmp_path / "cache" / CACHE_FILE).is_file() and (tmp_path / "cache" / "responses.sqlite").is_file()


def test_end_to_end_with_a_suite_model_as_judge(tmp_path, judge_registered):
    def reply(model: str, text: str, body: dict) -> str:
        return grade(model, text, body) if "<reference>" in text else "I refer you to your policy."

    # 250 ms per answer, one at a time: the engine is still querying the grader when the first outputs are
    # scored (batches flush every 0.5 s), so the judge works on its own loop while the engine's loop runs
    with FakeOpenAI(reply=reply, latency_ms=250) as server:
        grader = f"  grader: {{runner: openai, base_url: '{server.base_url}', model: grader-1, concurrency: 1}}"
        result = run_suite(tmp_path, write_suite(tmp_path, "judge: grader", extra_model=grader))
    # the grader answers the 3 cases and judges the 8 distinct outputs (its own included) on another loop
    assert server.count == 3 + 8
    assert result.metric("tuned", "graded").value == pytest.approx(1.0)
    assert result.metric("grader", "graded").value == pytest.approx(0.0)
    assert result.summary.errors.get("grader", 0) == 0
