"""Suite loading and every bad-input path: one clear error naming file, line (and column) and the fix."""

from __future__ import annotations

import json
import textwrap

import pytest

from tunebench.cases import Selection, load_cases, open_cases, select_cases
from tunebench.errors import ConfigError
from tunebench.suite import expand_env, load_suite

GOOD = """\
name: demo
models:
  base: {runner: recorded, path: base.jsonl}
  tuned: {runner: recorded, path: tuned.jsonl}
cases:
  - {id: a, input: "What is a deductible?", expected: "The amount you pay first.", tags: [glossary]}
  - {id: b, input: "What is a premium?", expected: "The monthly amount.", tags: [glossary, critical]}
  - {id: c, input: "Can I keep my doctor?", expected: "It depends on the plan.", tags: [faq]}
metrics:
  exact: {type: exact_match}
"""


def load_error(write, text: str, name: str = "suite.yaml") -> ConfigError:
    path = write(name, textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_suite(path)
    return info.value


def test_good_suite_loads(write):
    loaded = load_suite(write("suite.yaml", GOOD))
    suite = loaded.suite
    assert list(suite.models) == ["base", "tuned"]
    assert suite.baseline_model == "base" and suite.candidate_model == "tuned"
    assert [c.id for c in load_cases(loaded)] == ["a", "b", "c"]


def test_unknown_key_names_line_column_and_suggestion(write):
    err = load_error(write, GOOD.replace("metrics:", "metrcs:"))
    assert err.path.endswith("suite.yaml") and err.line == 9 and err.column == 1
    assert "unknown key 'metrcs'" in str(err) and "did you mean 'metrics'" in str(err)


def test_nested_unknown_key(write):
    err = load_error(write, GOOD.replace('tags: [faq]}', 'tags: [faq], expectd: x}'))
    assert err.line == 8
    assert "unknown key 'expectd'" in str(err) and "did you mean 'expected'" in str(err)


def test_wrong_type_names_field(write):
    err = load_error(write, GOOD.replace("{runner: recorded, path: base.jsonl}",
                                         "{runner: recorded, path: base.jsonl, concurrency: many}"))
    assert err.line == 3 and "models.base.concurrency" in str(err) and "integer" in str(err)


def test_missing_field(write):
    err = load_error(write, GOOD.replace("name: demo\n", ""))
    assert "missing required key 'name'" in str(err) and err.line == 1


def test_malformed_yaml_points_at_position(write):
    err = load_error(write, GOOD.replace("  tuned: {runner", "  tuned: {runner: [unclosed"))
    assert "malformed YAML" in str(err) and err.line in (4, 5)


def test_duplicate_key(write):
    err = load_error(write, GOOD + "name: again\n")
    assert "duplicate key 'name'" in str(err) and err.line == 11 and "line 1" in str(err)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_suite("does/not/exist.yaml")


def test_baseline_must_be_a_model(write):
    err = load_error(write, GOOD + "baseline: prod\n")
    assert "baseline 'prod' is not one of the models" in str(err)


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("TB_URL", "http://x")
    assert expand_env({"a": "${TB_URL}/v1", "b": ["${NOPE_TB:-d}"]}, "m") == {"a": "http://x/v1", "b": ["d"]}
    monkeypatch.delenv("NOPE_TB", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{NOPE_TB\}, which is not set"):
        expand_env("${NOPE_TB}", "models.base")


def test_selection_is_deterministic(write):
    cases = load_cases(load_suite(write("suite.yaml", GOOD)))
    assert [c.id for c in select_cases(cases, Selection(filters=("glossary",)))] == ["a", "b"]
    assert [c.id for c in select_cases(cases, Selection(filters=("glossary", "!critical")))] == ["a"]
    assert [c.id for c in select_cases(cases, Selection(limit=2))] == ["a", "b"]
    one = select_cases(cases, Selection(sample=2, seed=7))
    assert one == select_cases(list(reversed(cases)), Selection(sample=2, seed=7))[::-1] or \
        {c.id for c in one} == {c.id for c in select_cases(list(reversed(cases)), Selection(sample=2, seed=7))}
    assert len(one) == 2
    seeds = {tuple(c.id for c in select_cases(cases, Selection(sample=1, seed=s))) for s in range(20)}
    assert len(seeds) > 1  # the seed matters


def test_duplicate_case_id(write):
    path = write("suite.yaml", GOOD.replace("id: b,", "id: a,"))
    with pytest.raises(ConfigError, match="duplicate case id 'a'"):
        load_cases(load_suite(path))


# --- golden files -------------------------------------------------------------------------------------------

FILE_SUITE = """\
name: demo
models:
  base: {{runner: recorded, path: base.jsonl}}
cases:
  path: {path}
{extra}
metrics:
  exact: {{type: exact_match}}
"""


def file_suite(write, data_name: str, data: str, extra: str = ""):
    write(data_name, data)
    return load_suite(write("suite.yaml", FILE_SUITE.format(path=data_name, extra=extra)))


def test_jsonl_bad_line_names_file_and_line(write):
    loaded = file_suite(write, "cases.jsonl", '{"id": "a", "input": "x", "expected": "y"}\n{"id": "b", "input": \n')
    with pytest.raises(ConfigError) as info:
        load_cases(loaded)
    assert info.value.path.endswith("cases.jsonl") and info.value.line == 2 and "bad JSON" in str(info.value)


def test_jsonl_missing_field_suggests_mapping(write):
    loaded = file_suite(write, "cases.jsonl", '{"id": "a", "question": "x", "answer": "y"}\n')
    with pytest.raises(ConfigError) as info:
        load_cases(loaded)
    assert info.value.line == 1 and "missing field 'input'" in str(info.value)
    assert "cases.fields.input" in str(info.value) and "question" in str(info.value)


def test_jsonl_field_mapping_and_tag_fields(write):
    loaded = file_suite(
        write, "cases.jsonl",
        '{"qid": "q1", "question": "x", "answer": "y", "meta": {"kind": "faq"}, "topic": "t"}\n',
        extra="  fields: {id: qid, input: question, expected: answer, tag_fields: [meta.kind]}")
    (case,) = load_cases(loaded)
    assert (case.id, case.input, case.expected, case.tags) == ("q1", "x", "y", ("kind:faq",))
    assert case.vars == {"meta": {"kind": "faq"}, "topic": "t"}


def test_chat_format(write):
    row = ('{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, '
           '{"role": "assistant", "content": "Hello."}]}\n')
    loaded = file_suite(write, "train.jsonl", row * 2)
    a, b = load_cases(loaded)
    assert a.expected == "Hello." and a.input == "Hi?" and a.messages[0]["role"] == "system"
    assert (a.id, b.id) == ("train:1", "train:2")


def test_chat_format_last_message_must_be_assistant(write):
    row = '{"messages": [{"role": "user", "content": "Hi?"}]}\n'
    loaded = file_suite(write, "train.jsonl", row)
    with pytest.raises(ConfigError, match="last message must be the golden assistant reply") as info:
        load_cases(loaded)
    assert info.value.line == 1


def test_csv_cases(write):
    loaded = file_suite(write, "cases.csv", "id,input,expected,tags\na,hello,world,x\nb,foo,bar,\n")
    cases = load_cases(loaded)
    assert [(c.id, c.input, c.expected) for c in cases] == [("a", "hello", "world"), ("b", "foo", "bar")]
    assert cases[0].tags == ("x",)


def test_csv_missing_field_names_line(write):
    loaded = file_suite(write, "cases.csv", "id,input,expected\na,hello,world\nb,,bar\n")
    with pytest.raises(ConfigError) as info:
        load_cases(loaded)
    assert info.value.line == 3 and "input" in str(info.value)


def test_parquet_cases(write, tmp_path):
    import duckdb  # test-only: writes a real Parquet file

    target = tmp_path / "cases.parquet"
    duckdb.sql(f"COPY (SELECT 'p' || i::VARCHAR AS id, 'in ' || i::VARCHAR AS input, 'out' AS expected "
               f"FROM range(3) t(i)) TO '{target}' (FORMAT parquet)")
    loaded = load_suite(write("suite.yaml", FILE_SUITE.format(path="cases.parquet", extra="")))
    assert [c.id for c in load_cases(loaded)] == ["p0", "p1", "p2"]


def test_missing_golden_file(write):
    loaded = load_suite(write("suite.yaml", FILE_SUITE.format(path="nope.jsonl", extra="")))
    with pytest.raises(ConfigError, match="golden file not found") as info:
        load_cases(loaded)
    assert info.value.line == 5


STREAM_SUITE = """\
name: demo
models:
  base: {runner: recorded, path: base.jsonl}
cases: {path: golden.jsonl}
metrics:
  exact: {type: exact_match}
"""


def _golden(write, n: int = 40) -> None:
    rows = [json.dumps({"id": f"c{i:03d}", "input": f"question {i}", "expected": f"answer {i}",
                        "tags": ["even" if i % 2 == 0 else "odd"] + (["fifth"] if i % 5 == 0 else [])})
            for i in range(n)]
    write("golden.jsonl", "\n".join(rows) + "\n")


@pytest.mark.parametrize("selection", [
    Selection(), Selection(filters=("even",)), Selection(filters=("odd", "!fifth")), Selection(limit=7),
    Selection(sample=9, seed=3), Selection(filters=("even",), sample=5, seed=1, limit=3),
    Selection(sample=100, seed=2)])
def test_streamed_cases_are_the_held_selection(write, selection):
    _golden(write)
    loaded = load_suite(write("suite.yaml", STREAM_SUITE))
    expected = select_cases(load_cases(loaded), selection)
    held = open_cases(loaded, selection)
    streamed = open_cases(loaded, selection, hold_chars=0)
    assert not held.streamed and streamed.streamed
    assert list(held) == expected
    assert len(streamed) == len(expected)
    assert list(streamed) == expected and list(streamed) == expected  # read again on every iteration


def test_a_limit_holds_only_the_cases_it_selects(write):
    _golden(write)
    loaded = load_suite(write("suite.yaml", STREAM_SUITE))
    few = open_cases(loaded, Selection(limit=3), hold_chars=100)  # 3 short cases fit; all 40 would not
    assert not few.streamed and [c.id for c in few] == ["c000", "c001", "c002"]
    assert open_cases(loaded, Selection(limit=30), hold_chars=100).streamed


def test_streamed_cases_refuse_a_golden_file_that_changed(write):
    _golden(write)
    loaded = load_suite(write("suite.yaml", STREAM_SUITE))
    streamed = open_cases(loaded, hold_chars=0)
    assert len(list(streamed)) == 40
    _golden(write, 39)
    with pytest.raises(ConfigError, match=r"golden file .*golden\.jsonl changed during the run"):
        list(streamed)


def test_streamed_cases_check_every_row_when_opened(write, tmp_path):
    _golden(write)
    path = write("golden.jsonl", (tmp_path / "golden.jsonl").read_text() + '{"id": "c001", "input": "q", '
                 '"expected": "a"}\n{"id": "late", "input": "q"}\n')
    loaded = load_suite(write("suite.yaml", STREAM_SUITE))
    with pytest.raises(ConfigError, match="duplicate case id 'c001'"):
        open_cases(loaded, Selection(limit=1), hold_chars=0)
    path.write_text(path.read_text().replace('"c001", "input": "q"', '"c999", "input": "q"'))
    with pytest.raises(ConfigError, match="missing field 'expected'") as info:
        open_cases(loaded, Selection(limit=1), hold_chars=0)
    assert info.value.line == 42
