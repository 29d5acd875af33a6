"""The pytest plugin, driven through pytester: real suites (recorded runners), real DuckDB stores, real pytest.

Each test builds a small project in ``pytester.path``: golden cases inline in the suite, both models' answers in
JSONL files. Expected numbers are computed here from those answers, never re-typed from the plugin's output.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tunebench.store import Store

pytest_plugins = ["pytester"]

GOLDEN = {"a": "alpha", "b": "beta", "c": "gamma", "d": "delta", "e": "epsilon"}
BASE = {"a": "alpha", "b": "beta", "c": "gamma", "d": "no idea", "e": "no idea"}
TUNED = {"a": "alpha", "b": "wrong <b>answer</b>", "c": "gamma", "d": "delta", "e": "epsilon"}
FIXED = dict(GOLDEN)  # a candidate that answers every case right

GATES = """\
gates:
  - {name: exact floor, kind: floor, metric: exact, min: 0.5}
  - {name: beats base, kind: improvement, metric: exact}
  - {name: no regressions, kind: max_regressions, metric: exact, max: 0}
  - {name: errors, kind: max_error_rate, max: 0.02}
"""


def exact(outputs: dict[str, str]) -> float:
    return sum(outputs[c] == GOLDEN[c] for c in GOLDEN) / len(GOLDEN)


def regressions(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(c for c in GOLDEN if a[c] == GOLDEN[c] and b[c] != GOLDEN[c])


def suite_text(name: str, gates: str = GATES, base: str = "base.jsonl", tuned: str = "tuned.jsonl") -> str:
    cases = "\n".join(f'  - {{id: {c}, input: "what is {c}?", expected: "{g}"}}' for c, g in GOLDEN.items())
    return (f"name: {name}\nmodels:\n  base: {{runner: recorded, path: {base}}}\n"
            f"  tuned: {{runner: recorded, path: {tuned}}}\ncases:\n{cases}\n"
            f"metrics:\n  exact: {{type: exact_match}}\n{gates}")


def write_answers(folder: Path, name: str, answers: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps({"id": c, "output": o}) + "\n" for c, o in answers.items()))


def make_suite(root: Path, rel: str = "suites/demo.yaml", name: str = "demo", gates: str = GATES) -> Path:
    path = root / rel
    write_answers(path.parent, "base.jsonl", BASE)
    write_answers(path.parent, "tuned.jsonl", TUNED)
    write_answers(path.parent, "fixed.jsonl", FIXED)
    path.write_text(suite_text(name, gates))
    return path


def runs_in(db: Path) -> list[dict]:
    with Store.open(db, read_only=True) as store:
        return store.list_runs()


@pytest.fixture(scope="module", autouse=True)
def _imported_once(tmp_path_factory):
    """Run pytest with the plugin once in this process, outside pytester, before any in-process pytester run.

    pytester drops every module first imported during an in-process run. A native extension (DuckDB) imported a
    second time aborts the interpreter, and the other installed plugins' lazy imports (hypothesis, trio, …) cost
    about 2 s per run when repeated; imported here once, they stay.
    """
    import contextlib
    import io

    root = tmp_path_factory.mktemp("warm")
    make_suite(root)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        _isolate_env(mp)
        code = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(root), "-c", os.devnull,
                            str(root / "suites"), f"--tunebench-db={root / 'warm.duckdb'}"])
    assert code == pytest.ExitCode.TESTS_FAILED  # the demo suite fails one gate


def _isolate_env(mp: pytest.MonkeyPatch) -> None:
    # The outer session may run in GitHub Actions, with a user's store, or under xdist (pytest -n 2): inner
    # sessions must not write to the step summary or the store, nor believe they are xdist workers.
    for name in ("GITHUB_STEP_SUMMARY", "TUNEBENCH_DB", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT",
                 "PYTEST_XDIST_TESTRUNUID"):
        mp.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    _isolate_env(monkeypatch)


DB = "reports/tunebench.duckdb"


def test_gates_become_items_failures_carry_the_numbers(pytester):
    make_suite(pytester.path)
    result = pytester.runpytest("suites/")
    result.assert_outcomes(passed=3, failed=1)
    base, tuned = exact(BASE), exact(TUNED)
    [run] = runs_in(pytester.path / DB)
    result.stdout.fnmatch_lines([
        "*demo: no regressions*",
        "gate 'no regressions' failed: *",
        "  max_regressions gate of suite demo (suites/demo.yaml)",
        "  exact (higher is better, paired over 5 cases)",
        f"    base    {base:.4g}",
        f"    tuned   {tuned:.4g}",
        f"    delta   {tuned - base:+.4g}  (95% CI * … *)",
        "  threshold: max 0",
        f"  measured: regressions {len(regressions(BASE, TUNED))}, *",
        f"  worst regressions on exact (pass → fail; {len(regressions(BASE, TUNED))} of * shown):",
        "    case b: 1 → 0",
        f"      golden  {GOLDEN['b']}",
        f"      base    {BASE['b']}",
        f"      tuned   {TUNED['b']}",
        f"  run {run['run_id']} · report reports/demo-{run['run_id']}.html",
        "FAILED suites/demo.yaml::no_regressions - gate 'no regressions' failed: *",
    ])
    assert (pytester.path / "reports" / f"demo-{run['run_id']}.html").is_file()


def test_each_suite_runs_once_and_k_selects_gates(pytester):
    make_suite(pytester.path)
    make_suite(pytester.path, "suites/other.yaml", "other")
    reprec = pytester.inline_run("suites/", "-k", "exact_floor or errors")
    passed, _skipped, failed = reprec.listoutcomes()
    assert sorted(r.nodeid for r in passed) == ["suites/demo.yaml::errors", "suites/demo.yaml::exact_floor",
                                                "suites/other.yaml::errors", "suites/other.yaml::exact_floor"]
    assert not failed and len(reprec.getcalls("pytest_deselected")[0].items) == 4
    assert sorted(r["suite_name"] for r in runs_in(pytester.path / DB)) == ["demo", "other"]
    # keywords: the gate kind and the suite name select too; -m tunebench selects every gate item
    reprec = pytester.inline_run("suites/", "--collect-only", "-k", "floor and other")
    assert [i.nodeid for i in reprec.getcalls("pytest_collection_finish")[0].session.items] == [
        "suites/other.yaml::exact_floor"]
    reprec = pytester.inline_run("suites/", "--collect-only", "-m", "tunebench")
    assert len(reprec.getcalls("pytest_collection_finish")[0].session.items) == 8


def test_last_failed_and_exitfirst(pytester):
    make_suite(pytester.path)
    pytester.runpytest("suites/").assert_outcomes(passed=3, failed=1)
    again = pytester.runpytest("suites/", "--lf")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure"])
    make_suite(pytester.path, "suites/zz.yaml", "zz")
    pytester.runpytest("suites/", "-x").assert_outcomes(passed=2, failed=1)  # stops at demo's 3rd gate
    assert {r["suite_name"] for r in runs_in(pytester.path / DB)} == {"demo"}  # so zz never ran


def test_harness_errors_are_errors_not_failures(pytester):
    down = GATES.replace("exact floor", "floor")
    endpoint = "{runner: openai, base_url: 'http://127.0.0.1:1/v1', model: m, max_attempts: 1}"
    (pytester.path / "down.yaml").write_text(
        f"name: down\nmodels:\n  base: {endpoint}\n  tuned: {endpoint}\ncases:\n  - {{id: a, input: q, expected: x}}\n"
        f"metrics:\n  exact: {{type: exact_match}}\n" + down.split("  - {name: beats")[0])
    result = pytester.runpytest("down.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of down: floor*", "every request failed for base, tuned*",
                                 "ERROR down.yaml::floor - RunIncompleteError: every request failed*"])
    assert "Traceback" not in result.stdout.str()

    # a bad suite is a collection error naming file, line and column; a missing golden file a setup error
    typo = make_suite(pytester.path, "bad/typo.yaml", gates=GATES.replace("kind: floor", "kind: flor"))
    line = typo.read_text().splitlines().index("  - {name: exact floor, kind: flor, metric: exact, min: 0.5}") + 1
    result = pytester.runpytest("bad/typo.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting bad/typo.yaml*", f"{typo}:{line}:*'flor'*"])
    make_suite(pytester.path, "gone/suite.yaml").parent.joinpath("tuned.jsonl").unlink()
    result = pytester.runpytest("gone/suite.yaml")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*ERROR at setup of demo: exact floor*", "*gone/tuned.jsonl: *not found*",
                                 "ERROR gone/suite.yaml::exact_floor - ConfigError: *"])


def test_collection_rule(pytester):
    make_suite(pytester.path, "suites/demo.yaml", gates="")  # no gates: one "run" item
    make_suite(pytester.path, "suites/twins.yaml", gates="gates:\n  - {name: a b, kind: max_error_rate, max: 0}\n"
                                                         "  - {name: 'a  b!', kind: max_error_rate, max: 1}\n")
    (pytester.path / "ci.yml").write_text("name: ci\non: [push]\njobs:\n  test: {runs-on: ubuntu-latest}\n")
    (pytester.path / "compose.yaml").write_text("services:\n  db: {image: postgres}\nmodels: {}\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.stdout.lines[:3] == ["suites/demo.yaml::run", "suites/twins.yaml::a_b", "suites/twins.yaml::a_b-2"]
    result = pytester.runpytest("suites/demo.yaml")
    result.assert_outcomes(passed=1)
    # explicit patterns: only matching files are suites, without looking inside
    pytester.makeini("[pytest]\ntunebench_suites =\n    suites/demo.yaml\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert result.stdout.lines[:1] == ["suites/demo.yaml::run"] and "twins" not in result.stdout.str()


def test_tunebench_option_runs_exactly_that_suite(pytester):
    make_suite(pytester.path)
    make_suite(pytester.path, "suites/other.yaml", "other")
    pytester.makepyfile(test_unit="def test_unit():\n    pass\n")
    reprec = pytester.inline_run("--tunebench", "suites/other.yaml", "--collect-only")
    items = reprec.getcalls("pytest_collection_finish")[0].session.items
    assert [i.nodeid for i in items] == [f"suites/other.yaml::{n}" for n in
                                         ("exact_floor", "beats_base", "no_regressions", "errors")]
    reprec = pytester.inline_run("test_unit.py", "--tunebench", "suites/other.yaml", "--collect-only")
    assert len(reprec.getcalls("pytest_collection_finish")[0].session.items) == 5


def test_fixture_run_result_cache_and_overrides(pytester):
    make_suite(pytester.path)
    pytester.makepyfile(test_model=f"""
        import pytest

        @pytest.mark.tunebench("suites/demo.yaml")
        def test_own_assertions(tunebench_run, tunebench_run_suite):
            assert tunebench_run.metric("tuned", "exact").value == {exact(TUNED)!r}
            assert [f.case_id for f in tunebench_run.flips("exact").regressions] == {regressions(BASE, TUNED)!r}
            assert tunebench_run_suite("suites/demo.yaml") is tunebench_run
            print("REQUESTS", tunebench_run.requests.sent, tunebench_run.requests.cached)
    """)
    result = pytester.runpytest("-s", "suites/", "test_model.py")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([f"*REQUESTS {2 * len(GOLDEN)} 0*"])
    assert len(runs_in(pytester.path / DB)) == 1  # gates and the fixture shared one run
    result = pytester.runpytest("-s", "test_model.py")
    result.stdout.fnmatch_lines([f"*REQUESTS 0 {2 * len(GOLDEN)}*"])  # the second session replays the cache
    result = pytester.runpytest("-s", "test_model.py", "--tunebench-no-cache")
    result.stdout.fnmatch_lines([f"*REQUESTS {2 * len(GOLDEN)} 0*"])
    # a candidate checkpoint from the command line (and a store from ini) makes every gate pass
    pytester.makeini("[pytest]\ntunebench_db = store/ci.duckdb\n")
    result = pytester.runpytest("suites/", "--tunebench-override", "tuned.path=fixed.jsonl")
    result.assert_outcomes(passed=4)
    [run] = runs_in(pytester.path / "store" / "ci.duckdb")
    assert run["options"]["overrides"] and "fixed.jsonl" in json.dumps(run["options"]["overrides"])
    pytester.runpytest("suites/", "--tunebench-db", "cli.duckdb", "-k", "errors").assert_outcomes(passed=1,
                                                                                                deselected=3)
    assert len(runs_in(pytester.path / "cli.duckdb")) == 1  # the command line wins over the ini file
    assert len(runs_in(pytester.path / "store" / "ci.duckdb")) == 1


def test_baseline_is_a_stored_run_and_tag_promotes(pytester):
    make_suite(pytester.path)
    promote = ["--tunebench-tag", "production-{suite}"]  # a tag names one run: one tag per suite
    result = pytester.runpytest("suites/", "--tunebench-override", "tuned.path=fixed.jsonl", *promote)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["suites/demo.yaml: run * tagged production-demo"])
    [production] = runs_in(pytester.path / DB)
    assert production["tags"] == ["production-demo"]

    result = pytester.runpytest("suites/", "--tunebench-baseline", "production-{suite}", *promote)
    result.assert_outcomes(failed=2, passed=2)  # the old tuned model regressed against the promoted one
    result.stdout.fnmatch_lines(["suites/demo.yaml: run * not tagged production-demo: 2 gate(s) failed"])
    label = f"tuned@{production['run_id']}"
    width = len(label) + 2
    result.stdout.fnmatch_lines([f"    {label:<{width}}{exact(FIXED):.4g}", f"    {'tuned':<{width}}{exact(TUNED):.4g}",
                                 f"      {label:<{width}}{FIXED['b']}", f"      {'tuned':<{width}}{TUNED['b']}"])
    with Store.open(pytester.path / DB, read_only=True) as store:
        assert store.resolve_run("production-demo") == production["run_id"]


def test_junit_properties_and_markdown_summary(pytester, monkeypatch):
    make_suite(pytester.path)
    step = pytester.path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    result = pytester.runpytest("suites/", "--junitxml=out/junit.xml", "--tunebench-summary=out/summary.md")
    result.assert_outcomes(passed=3, failed=1)

    [run] = runs_in(pytester.path / DB)
    with Store.open(pytester.path / DB, read_only=True) as store:
        stored = {g["name"]: g for g in store.get_gate_results(run["run_id"])}
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out" / "junit.xml").getroot().iter("testcase")}
    assert set(cases) == {"exact_floor", "beats_base", "no_regressions", "errors"}
    for case in cases.values():
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        gate = stored[props["gate"]]
        assert props["run_id"] == run["run_id"] and props["suite"] == "suites/demo.yaml"
        assert props["passed"] == str(gate["passed"]) and (case.find("failure") is None) == gate["passed"]
        for key, value in gate["numbers"].items():
            if value is not None and key != "metric":
                assert props[key] == str(value), key
    delta = cases["beats_base"].find("properties/property[@name='delta']").get("value")
    assert float(delta) == pytest.approx(exact(TUNED) - exact(BASE))

    summary = (pytester.path / "out" / "summary.md").read_text()
    assert step.read_text() == "earlier step\n" + summary
    tables = markdown_tables(summary)
    [metrics, gates] = tables
    assert metrics[0] == ["metric", "base", "tuned", "delta", "95% CI", "n"]
    base, tuned = exact(BASE), exact(TUNED)
    assert metrics[1][:4] == ["exact", f"{base:.4g}", f"{tuned:.4g}", f"{tuned - base:+.4g}"]
    assert {row[0]: row[1] for row in gates[1:]} == {
        name.replace("_", "\\_"): "✅ passed" if g["passed"] else "❌ failed" for name, g in stored.items()}


def markdown_tables(text: str) -> list[list[list[str]]]:
    """GitHub Markdown tables → rows of cells (the separator row dropped)."""
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= set("-:") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_escapes_untrusted_text(pytester):
    from tunebench.pytest_plugin._report import markdown_summary

    record = {"suite": "s.yaml", "name": "x|y", "error": None, "run_id": "r", "status": "completed",
              "baseline": "base", "candidate": "tuned", "report": None, "warnings": ["<script>alert(1)</script>"],
              "metrics": [], "gates": [{"name": "g`|", "kind": "floor", "passed": False,
                                        "message": "<img src=x onerror=alert(1)> | [link](http://x)"}]}
    text = markdown_summary([record])
    assert "<script>" not in text and "<img" not in text and not re.search(r"(?<!\\)\]\(", text)
    gates = markdown_tables(text)[-1]
    assert len(gates[1]) == 3  # the pipes inside the cells did not split them


def test_xdist_runs_each_suite_once(pytester):
    make_suite(pytester.path)
    make_suite(pytester.path, "suites/other.yaml", "other")
    pytester.makepyfile(test_model=f"""
        import pytest

        @pytest.mark.tunebench("suites/demo.yaml")
        @pytest.mark.parametrize("i", range(4))
        def test_own(tunebench_run, i):
            assert tunebench_run.metric("tuned", "exact").value == {exact(TUNED)!r}
            assert [f.case_id for f in tunebench_run.flips("exact").regressions] == {regressions(BASE, TUNED)!r}
    """)
    result = pytester.runpytest_subprocess("-n", "2", "suites/", "test_model.py", "--tunebench-summary=s.md",
                                           "--junitxml=junit.xml", timeout=120)
    result.assert_outcomes(passed=10, failed=2)
    props = {(c.get("classname"), c.get("name"), p.get("name")): p.get("value")
             for c in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase") for p in c.iter("property")}
    run_ids = {v for (_, _, name), v in props.items() if name == "run_id"}
    assert len(run_ids) == 2 and {r["run_id"] for r in runs_in(pytester.path / DB)} == run_ids
    assert sorted(r["suite_name"] for r in runs_in(pytester.path / DB)) == ["demo", "other"]
    headings = [line for line in (pytester.path / "s.md").read_text().splitlines() if line.startswith("### ")]
    assert headings == ["### ❌ demo (suites/demo.yaml)", "### ❌ other (suites/other.yaml)"]


def test_unrelated_project_is_untouched(pytester):
    """No items, no warnings, no files, and none of tunebench's pipeline imported."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    (pytester.path / "ci.yml").write_text("on: [push]\njobs:\n  test: {runs-on: ubuntu-latest}\n")
    pytester.makeconftest("""
        import json, sys

        def pytest_sessionfinish(session):
            with open("modules.json", "w") as fh:
                json.dump(sorted(sys.modules), fh)
    """)
    step = pytester.path / "step.md"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GITHUB_STEP_SUMMARY", str(step))
        result = pytester.runpytest_subprocess("-W", "error", timeout=60)
        loaded = set(json.loads((pytester.path / "modules.json").read_text()))
        without = pytester.runpytest_subprocess("-W", "error", "-p", "no:tunebench", timeout=60)
        unplugged = set(json.loads((pytester.path / "modules.json").read_text()))
    assert result.parseoutcomes() == {"passed": 1} == without.parseoutcomes()  # no "warnings" count
    assert any(line.startswith("plugins:") and "tunebench" in line for line in result.stdout.lines)
    assert loaded - unplugged == {"tunebench", "tunebench.pytest_plugin"}  # the plugin imported nothing else
    assert not step.exists() and not (pytester.path / "reports").exists()
