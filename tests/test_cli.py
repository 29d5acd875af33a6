"""The command line as a user meets it: exit codes, messages without tracebacks, JSON output, speed of --help."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tb(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunebench", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={**os.environ, **(env or {})}, timeout=120)


def copy_insurance(tmp_path: Path) -> Path:
    """A copy of the shipped example, so tests never write into the repo."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "evals").symlink_to(REPO / "evals")
    text = (REPO / "suites" / "insurance.yaml").read_text()
    path = tmp_path / "suites" / "insurance.yaml"
    path.write_text(text)
    return path


def test_help_is_fast():
    out = tb("--help")
    assert out.returncode == 0 and "run" in out.stdout
    # start-up cost is what tunebench imports: measure that, not a wall clock shared with parallel tests
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import sys; from tunebench.cli import cli\n"
         "cli.main(['--help'], prog_name='tunebench', standalone_mode=False)\n"
         "heavy = {'pydantic', 'duckdb', 'numpy', 'jinja2', 'rich', 'aiohttp', 'httpx', 'yaml', 'torch'}\n"
         "print('HEAVY', sorted(heavy & set(sys.modules)), file=sys.stderr)"],
        capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in probe.stderr, probe.stderr.splitlines()[-1]
    cumulative = [int(line.split("|")[1]) for line in probe.stderr.splitlines()
                  if line.startswith("import time:") and line.rstrip().endswith(" tunebench.cli")]
    assert cumulative and cumulative[0] < 150_000, f"importing tunebench.cli took {cumulative[0] / 1000:.0f} ms"
    started = time.perf_counter()
    tb("--help")
    assert time.perf_counter() - started < 2.0  # a loose bound on the whole process, interpreter included


def test_run_shipped_example_json(tmp_path):
    suite = copy_insurance(tmp_path)
    out = tb("run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["suite"] == "insurance" and summary["models"] == ["base", "tuned"]
    assert summary["errors"] == {"base": 0, "tuned": 0} and summary["outputs"] == {"base": 166, "tuned": 166}
    rouge = summary["metrics"]["rougeL"]
    assert rouge["delta"] == pytest.approx(rouge["values"]["tuned"]["value"] - rouge["values"]["base"]["value"])
    assert Path(summary["report"]).exists() and Path(summary["report"]).with_suffix(".md").exists()
    assert summary["comparison"]["metrics"]["rougeL"]["n"] == 166


def test_module_and_console_script_agree():
    exe = shutil.which("tunebench")
    assert exe is not None, "the console script is installed with the package"
    a = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout == tb("--help").stdout


BAD_SUITES = {
    "unknown key": ("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\ncases: [{input: a, expected: b}]\n"
                    "metrics: {exact: {type: exact_match}}\ntemprature: 0\n", ":6:1:", "unknown key 'temprature'"),
    "unknown metric": ("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\ncases: [{input: a, expected: b}]\n"
                       "metrics:\n  r: {type: rogue}\n", ":6:", "did you mean 'rouge'"),
    "unknown runner": ("name: x\nmodels:\n  base: {runner: opnai}\ncases: [{input: a, expected: b}]\n"
                       "metrics: {exact: {type: exact_match}}\n", ":3:", "did you mean 'openai'"),
    "unknown metric option": ("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\n"
                              "cases: [{input: a, expected: b}]\nmetrics:\n  r: {type: rouge, varaint: rougeL}\n",
                              ":6:", "did you mean 'variant'"),
    "undefined template variable": ("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\n"
                                    "prompt:\n  template: '{{ question }}'\ncases: [{input: a, expected: b}]\n"
                                    "metrics: {exact: {type: exact_match}}\n", ":5:",
                                    "'question' is undefined"),
    "malformed yaml": ("name: x\nmodels: [\n", ":", "malformed YAML"),
    "missing golden file": ("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\ncases: {path: nope.jsonl}\n"
                            "metrics: {exact: {type: exact_match}}\n", ":4:", "golden file not found"),
    "missing recorded file": ("name: x\nmodels:\n  base: {runner: recorded, path: missing.jsonl}\n"
                              "cases: [{input: a, expected: b}]\nmetrics: {exact: {type: exact_match}}\n", "",
                              "missing.jsonl"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUITES))
def test_bad_input_exit_2_one_message_no_traceback_nothing_written(tmp_path, case):
    text, where, message = BAD_SUITES[case]
    (tmp_path / "o.jsonl").write_text('{"id": "case-1", "output": "b"}\n')
    suite = tmp_path / "suite.yaml"
    suite.write_text(text)
    for args in (["validate", str(suite)], ["run", str(suite), "--db", str(tmp_path / "s.duckdb")]):
        out = tb(*args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
        assert message in out.stderr and where in out.stderr
        assert str(suite) in out.stderr or "missing.jsonl" in out.stderr
    assert not (tmp_path / "s.duckdb").exists()  # nothing half-written


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "cases.jsonl").write_text('{"input": "a", "expected": "b"}\n{"input": "a", "expected": \n')
    (tmp_path / "suite.yaml").write_text("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\n"
                                         "cases: {path: cases.jsonl}\nmetrics: {exact: {type: exact_match}}\n")
    out = tb("validate", "suite.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "cases.jsonl:2:" in out.stderr and "bad JSON" in out.stderr


def test_validate_ok_lists_suites(tmp_path):
    suite = copy_insurance(tmp_path)
    out = tb("validate", str(suite), cwd=tmp_path)
    assert out.returncode == 0 and "166 cases, 3 metrics" in out.stdout


def test_validate_counts_in_the_singular(tmp_path):
    (tmp_path / "cases.jsonl").write_text('{"input": "a", "expected": "b"}\n')
    (tmp_path / "o.jsonl").write_text('{"id": "1", "output": "b"}\n')
    (tmp_path / "suite.yaml").write_text("name: x\nmodels:\n  base: {runner: recorded, path: o.jsonl}\n"
                                         "cases: {path: cases.jsonl}\nmetrics: {exact: {type: exact_match}}\n")
    out = tb("validate", "suite.yaml", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok  suite.yaml: 1 case, 1 metric"


def test_gate_failure_exits_1_and_names_gate(tmp_path):
    suite = copy_insurance(tmp_path)
    suite.write_text(suite.read_text() + "\ngates:\n  - {name: impossible floor, kind: floor, metric: rougeL, "
                     "min: 0.99}\n  - {name: beats base, kind: improvement, metric: rougeL, significant: true}\n")
    out = tb("run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--no-report", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "FAIL impossible floor" in out.stdout and "PASS beats base" in out.stdout
    data = json.loads(tb("run", str(suite), "--db", str(tmp_path / "s.duckdb"), "--no-report", "--json",
                         cwd=tmp_path).stdout)
    gates = {g["name"]: g for g in data["gates"]}
    assert gates["impossible floor"]["passed"] is False and gates["beats base"]["passed"] is True
    assert gates["impossible floor"]["numbers"]["value"] == data["metrics"]["rougeL"]["values"]["tuned"]["value"]


def test_limit_filter_sample_and_override_recorded(tmp_path):
    suite = copy_insurance(tmp_path)
    db = tmp_path / "s.duckdb"
    out = tb("run", str(suite), "--db", str(db), "--json", "--no-report", "--filter", "kind:faq", "--sample", "10",
             "--seed", "3", "-o", "tuned.concurrency=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["outputs"] == {"base": 10, "tuned": 10}
    from tunebench.store import Store

    with Store.open(db, read_only=True) as store:
        run = store.get_run(data["run_id"])
        cases = store.get_cases(data["run_id"])
    assert run["options"]["overrides"] == {"tuned": {"concurrency": 2}}
    assert all("kind:faq" in c.tags for c in cases)
    again = json.loads(tb("run", str(suite), "--db", str(db), "--json", "--no-report", "--filter", "kind:faq",
                          "--sample", "10", "--seed", "3", cwd=tmp_path).stdout)
    with Store.open(db, read_only=True) as store:
        assert [c.id for c in store.get_cases(again["run_id"])] == [c.id for c in cases]


def test_tag_history_and_compare(tmp_path):
    suite = copy_insurance(tmp_path)
    db = str(tmp_path / "s.duckdb")
    first = json.loads(tb("run", str(suite), "--db", db, "--json", "--no-report", cwd=tmp_path).stdout)
    assert tb("tag", first["run_id"], "production", "--db", db).returncode == 0
    second = json.loads(tb("run", str(suite), "--db", db, "--json", "--no-report", "--baseline", "production",
                           cwd=tmp_path).stdout)
    comp = second["comparison"]
    assert comp["baseline"]["run_id"] == first["run_id"] and comp["candidate"]["run_id"] == second["run_id"]
    assert comp["identical"] == [166, 166]  # same recorded outputs: the identity warning fires
    assert any("same output" in w for w in second["warnings"])
    hist = json.loads(tb("history", "--db", db, "--json").stdout)
    assert [h["run_id"] for h in hist] == [second["run_id"], first["run_id"]]
    assert hist[1]["tags"] == ["production"]
    out = tb("compare", "production", "latest", "--db", db, "--json", "--report", str(tmp_path / "cmp.html"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["metrics"]["rougeL"]["delta"] == 0
    assert (tmp_path / "cmp.html").exists()
    bad = tb("compare", "nope", "latest", "--db", db)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_report_writes_a_stored_run_again_as_the_run_wrote_it(tmp_path):
    suite = copy_insurance(tmp_path)
    suite.write_text(suite.read_text() + "\ngates:\n  - {name: impossible floor, kind: floor, metric: rougeL, "
                     "min: 0.99}\n  - {name: beats base, kind: improvement, metric: rougeL}\n")
    db = tmp_path / "store" / "s.duckdb"
    first = json.loads(tb("run", str(suite), "--db", str(db), "--json", cwd=tmp_path).stdout)
    assert tb("tag", first["run_id"], "production", "--db", str(db)).returncode == 0
    second = json.loads(tb("run", str(suite), "--db", str(db), "--json", "--baseline", "production",
                           cwd=tmp_path).stdout)
    assert first["gates"][0]["passed"] is False and any("same output" in w for w in second["warnings"])
    written = {run["run_id"]: {suffix: Path(run["report"]).with_suffix(suffix).read_bytes()
                               for suffix in (".html", ".md", ".json")} for run in (first, second)}
    stored = hashlib.sha256(db.read_bytes()).hexdigest()

    for ref, run in (("production", first), ("latest", second), (second["run_id"][:17], second)):
        out_dir = tmp_path / "again" / ref
        out = tb("report", ref, "--db", str(db), "--report", str(out_dir / "r.html"))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"report: {out_dir / 'r.html'}"
        for suffix, content in written[run["run_id"]].items():
            assert (out_dir / "r.html").with_suffix(suffix).read_bytes() == content, (ref, suffix)
    # without --report: where the run wrote it
    Path(first["report"]).unlink()
    out = tb("report", first["run_id"], "--db", str(db), cwd=tmp_path)
    assert out.returncode == 0 and Path(first["report"]).read_bytes() == written[first["run_id"]][".html"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == stored  # read only

    bad = tb("report", "nope", "--db", str(db), "--report", str(tmp_path / "bad" / "r.html"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "no run 'nope'" in bad.stderr and first["run_id"] in bad.stderr
    assert not (tmp_path / "bad").exists()
    missing = tb("report", "--db", str(tmp_path / "none.duckdb"))
    assert missing.returncode == 2 and "no store at" in missing.stderr and "Traceback" not in missing.stderr


def test_golden_cases_that_differ_from_the_baseline_run_are_named_in_every_report(tmp_path):
    suite = copy_insurance(tmp_path)
    db = str(tmp_path / "s.duckdb")
    first = json.loads(tb("run", str(suite), "--db", db, "--json", "--no-report", cwd=tmp_path).stdout)
    second = json.loads(tb("run", str(suite), "--db", db, "--json", "--no-report", "--limit", "100",
                           "--baseline", first["run_id"], cwd=tmp_path).stdout)
    drift = second["comparison"]["drift"]
    assert (len(drift["added"]), len(drift["removed"]), len(drift["changed"])) == (0, 66, 0)
    expected = "golden cases differ from the baseline run: 0 added, 66 removed, 0 changed"
    assert [w for w in second["warnings"] if w.startswith("golden")] == [
        expected + " (excluded from the comparison)"]
    assert tb("report", second["run_id"], "--db", db, "--report", str(tmp_path / "run.html")).returncode == 0
    assert tb("compare", first["run_id"], second["run_id"], "--db", db, "--report",
              str(tmp_path / "cmp.html")).returncode == 0
    for page in ("run", "cmp"):
        shown = json.loads((tmp_path / f"{page}.json").read_text())["warnings"]
        assert sum(w.startswith(expected) for w in shown) == 1, (page, shown)
        assert shown[0].startswith("tuned") and "same output" in shown[0]  # the identity warning comes first


def test_store_locked_by_another_process_is_a_clear_message(tmp_path):
    suite = copy_insurance(tmp_path)
    db = tmp_path / "s.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(30)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        out = tb("run", str(suite), "--db", str(db), "--no-report", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(db) in out.stderr and "--db" in out.stderr


def test_weekly_on_empty_then_real_history(tmp_path):
    db = tmp_path / "s.duckdb"
    suite = copy_insurance(tmp_path)
    first = tb("run", str(suite), "--db", str(db), "--no-report", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    empty = tb("weekly", "--db", str(db), "--json", "--from", "2001-01-01", "--to", "2001-01-08",
               "--out", str(tmp_path / "empty.html"))
    assert empty.returncode == 0, empty.stderr
    data = json.loads(empty.stdout)
    assert data["runs"] == 0 and "No runs" in data["message"] and (tmp_path / "empty.html").exists()
    tb("run", str(suite), "--db", str(db), "--no-report", "--filter", "kind:faq", cwd=tmp_path)
    week = json.loads(tb("weekly", "--db", str(db), "--json", "--out", str(tmp_path / "week.html")).stdout)
    assert week["runs"] == 2 and week["suites"] == ["insurance"] and (tmp_path / "week.html").exists()
    bad = tb("weekly", "--db", str(db), "--since", "last tuesday")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr
