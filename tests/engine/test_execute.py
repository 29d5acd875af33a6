"""The engine end to end against a real loopback OpenAI-compatible server: retries, concurrency, cache, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fakeserver import FakeOpenAI, Fault, FaultRule, echo_by_model
from tunebench import api
from tunebench.errors import RunIncompleteError
from tunebench.store import Store

SUITE = """\
name: engine
models:
  base:
    runner: openai
    base_url: {url}
    model: base-model
    api_key_env: TB_TEST_KEY
    concurrency: {concurrency}
    max_attempts: {attempts}
    timeout_s: {timeout}
    backoff_s: 0.01
    max_backoff_s: {max_backoff}
  tuned:
    runner: openai
    base_url: {url}
    model: tuned-model
    api_key_env: TB_TEST_KEY
    concurrency: {concurrency}
    max_attempts: {attempts}
    timeout_s: {timeout}
    backoff_s: 0.01
    max_backoff_s: {max_backoff}
prompt:
  system: Answer briefly.
  template: "Q: {{{{ input }}}}"
cases:
  path: cases.jsonl
metrics:
  exact: {{type: exact_match}}
"""

SECRET = "sk-test-SECRET-0123456789"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("TB_TEST_KEY", SECRET)


def make_suite(tmp_path: Path, url: str, n: int = 20, concurrency: int = 4, attempts: int = 4,
               timeout: float = 5.0, max_backoff: float = 2.0) -> Path:
    with (tmp_path / "cases.jsonl").open("w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"c{i:04d}", "input": f"question {i}", "expected": f"echo: Q: question {i}"})
                    + "\n")
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(url=url, concurrency=concurrency, attempts=attempts, timeout=timeout,
                                 max_backoff=max_backoff))
    return path


def run(tmp_path: Path, suite: Path, **kw) -> api.RunResult:
    return api.run(api.RunConfig(suite=suite, db=tmp_path / "store.duckdb", cache_dir=tmp_path / "cache",
                                 write_report=False, **kw))


def outputs(tmp_path: Path, run_id: str) -> list:
    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        return list(store.iter_outputs(run_id))


def test_all_cases_answered_and_scored(tmp_path):
    with FakeOpenAI(reply=echo_by_model) as server:
        result = run(tmp_path, make_suite(tmp_path, server.base_url))
    outs = outputs(tmp_path, result.run_id)
    assert len(outs) == 40 and not any(o.error for o in outs)
    assert server.count == 40
    assert {o.model for o in outs} == {"base", "tuned"}
    assert all(o.latency_ms is not None and o.latency_ms >= 0 for o in outs)
    assert result.summary.aggregates["base"]["exact"].n == 20
    # the system prompt and the rendered template reached the server
    body = server.requests[0].json
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert body["messages"][1]["content"].startswith("Q: question ")


def test_long_documents_are_stored_whole_through_a_capped_store(tmp_path):
    """~48 MB of prompts and answers, more than the run's DuckDB memory cap: byte-bounded batches and sliced
    writes store every output whole, and the statistics after the requests still run."""
    suite = make_suite(tmp_path, "http://placeholder", n=60)
    document = "The policyholder pays the deductible before coinsurance applies. " * 3000  # ~200 KB
    with (tmp_path / "cases.jsonl").open("w") as f:
        for i in range(60):
            f.write(json.dumps({"id": f"c{i:04d}", "input": f"{i} {document}", "expected": "x"}) + "\n")
    with FakeOpenAI(reply=echo_by_model) as server:
        suite.write_text(suite.read_text().replace("http://placeholder", server.base_url))
        result = run(tmp_path, suite)
    outs = outputs(tmp_path, result.run_id)
    assert len(outs) == 120 and not any(o.error for o in outs)
    assert all(o.text == f"[{o.model}-model] Q: {o.case_id[1:].lstrip('0') or '0'} {document}" for o in outs)
    assert result.summary.aggregates["tuned"]["exact"].n == 60
    # ~12 MB of golden text is more than a run holds: each stage read the cases again from the file
    assert api.prepare(api.RunConfig(suite=suite))[1].cases.streamed
    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        assert [c.input for c in store.get_cases(result.run_id)] == [f"{i} {document}" for i in range(60)]


def test_retries_429_with_retry_after_500_and_dropped_connections(tmp_path):
    faults = {1: Fault.rate_limit("0.2"), 2: Fault.error(500), 3: Fault.drop(), 4: Fault.error(503)}
    with FakeOpenAI(faults=faults) as server:
        started = time.monotonic()
        result = run(tmp_path, make_suite(tmp_path, server.base_url, n=5, concurrency=1))
        elapsed = time.monotonic() - started
    outs = outputs(tmp_path, result.run_id)
    assert not any(o.error for o in outs), [o.error for o in outs if o.error]
    assert sum(o.attempts for o in outs) == 10 + 4  # 4 faults, each retried once
    assert server.count == 14
    assert elapsed >= 0.2  # Retry-After was honoured


def test_timeout_is_retried(tmp_path):
    with FakeOpenAI(faults={1: Fault.hang(3.0)}) as server:
        result = run(tmp_path, make_suite(tmp_path, server.base_url, n=2, concurrency=1, timeout=0.5))
    outs = outputs(tmp_path, result.run_id)
    assert not any(o.error for o in outs)
    assert max(o.attempts for o in outs) == 2


def test_persistent_failure_becomes_error_row_not_crash(tmp_path):
    rule = FaultRule(match="question 3", fault=Fault.error(500))
    with FakeOpenAI(rules=[rule]) as server:
        result = run(tmp_path, make_suite(tmp_path, server.base_url, n=6, attempts=3))
    outs = {(o.case_id, o.model): o for o in outputs(tmp_path, result.run_id)}
    failed = [o for o in outs.values() if o.error]
    assert {(o.case_id, o.model) for o in failed} == {("c0003", "base"), ("c0003", "tuned")}
    assert all(o.attempts == 3 and "500" in o.error and "gave up after 3 attempts" in o.error for o in failed)
    assert len(outs) == 12  # nothing dropped
    assert result.summary.errors == {"base": 1, "tuned": 1}
    # the error case has error scores, never NaN
    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        scores = [s for cid, *_, s in store.get_scores(result.run_id) if cid == "c0003"]
    assert scores and all(s.value is None and s.error.startswith("no output:") for s in scores)


def test_every_request_failing_exits_3(tmp_path):
    suite = make_suite(tmp_path, "http://127.0.0.1:9/v1", n=3, attempts=1)
    with pytest.raises(RunIncompleteError, match="every request failed") as info:
        run(tmp_path, suite)
    assert info.value.exit_code == 3


def test_concurrency_limit_is_respected(tmp_path):
    from engine import inflight

    inflight.STATE.update(now=0, max=0, calls=0)
    (tmp_path / "cases.jsonl").write_text("".join(
        json.dumps({"id": f"c{i}", "input": f"q{i}", "expected": "x"}) + "\n" for i in range(30)))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: inflight\nmodels:\n  only:\n    runner: python\n"
                     "    callable: engine.inflight:slow_echo\n    concurrency: 3\n"
                     "cases: {path: cases.jsonl}\nmetrics:\n  exact: {type: exact_match}\n")
    run(tmp_path, suite)
    assert inflight.STATE["calls"] == 30
    assert inflight.STATE["max"] == 3


def test_cache_rerun_sends_zero_requests_and_no_cache_sends_all(tmp_path):
    with FakeOpenAI() as server:
        suite = make_suite(tmp_path, server.base_url, n=10)
        first = run(tmp_path, suite)
        assert server.count == 20
        second = run(tmp_path, suite)
        assert server.count == 20 and second.requests.cached == 20 and second.requests.sent == 0
        third = run(tmp_path, suite, cache=False)
        assert server.count == 40 and third.requests.sent == 20
    assert first.run_id != second.run_id


def test_errors_are_not_cached(tmp_path):
    rule = FaultRule(match="question 1", fault=Fault.error(500), times=1)
    with FakeOpenAI(rules=[rule]) as server:
        suite = make_suite(tmp_path, server.base_url, n=3, attempts=1)
        first = run(tmp_path, suite)
        assert first.summary.errors["base"] + first.summary.errors["tuned"] == 1
        before = server.count
        second = run(tmp_path, suite)
        assert server.count == before + 1  # only the failed case is asked again
        assert second.summary.errors == {"base": 0, "tuned": 0}


def test_cache_key_covers_generation_parameters(tmp_path):
    with FakeOpenAI() as server:
        suite = make_suite(tmp_path, server.base_url, n=4)
        run(tmp_path, suite)
        run(tmp_path, suite, overrides=("tuned.params={temperature: 0.5}",))
        assert server.count == 8 + 4  # only tuned was asked again
        assert server.requests[-1].json["temperature"] == 0.5


def test_secret_never_reaches_store_or_reports(tmp_path):
    with FakeOpenAI(api_key=SECRET) as server:
        suite = make_suite(tmp_path, server.base_url, n=3)
        result = api.run(api.RunConfig(suite=suite, db=tmp_path / "store.duckdb", cache_dir=tmp_path / "cache",
                                       report=tmp_path / "report.html"))
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    for path in [tmp_path / "store.duckdb", *tmp_path.glob("report.*"), *(tmp_path / "cache").iterdir()]:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in json.dumps(result.to_json(), default=str)


def test_resume_after_kill_minus_9_requeries_nothing_that_finished(tmp_path):
    with FakeOpenAI(latency_ms=40) as server:
        suite = make_suite(tmp_path, server.base_url, n=150, concurrency=2)
        cmd = [sys.executable, "-m", "tunebench", "run", str(suite), "--db", str(tmp_path / "store.duckdb"),
               "--cache-dir", str(tmp_path / "cache"), "--no-report"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        deadline = time.monotonic() + 30
        while server.count < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.2)  # let the writer persist what has finished
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sent_before = server.count
        assert 0 < sent_before < 300
        with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
            (run,) = store.list_runs()
            persisted = len(store.done_jobs(run["run_id"]))
        assert run["status"] == "running"  # killed: never marked finished
        # what had finished is on disk, except at most the last flush interval plus what was in flight
        assert persisted >= sent_before - 60
        resumed = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert resumed.returncode == 0, resumed.stderr
        sent_after = server.count - sent_before
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] is True and summary["run_id"] == run["run_id"]
    outs = outputs(tmp_path, summary["run_id"])
    assert len(outs) == 300 and not any(o.error for o in outs)
    # nothing that was persisted is asked again (the response cache may hold even more than the store);
    # what was never sent is asked exactly once
    assert 300 - sent_before <= sent_after <= 300 - persisted
    with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
        assert len(store.list_runs()) == 1


def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    """SIGINT while requests are in flight: exit 130 with a one-line message, the run marked interrupted with
    what finished stored, and ``--resume`` completes it without asking those cases again."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with FakeOpenAI(latency_ms=40) as server:
        suite = make_suite(tmp_path, server.base_url, n=150, concurrency=2)
        cmd = [sys.executable, "-m", "tunebench", "run", str(suite), "--db", str(tmp_path / "store.duckdb"),
               "--cache-dir", str(tmp_path / "cache"), "--no-report"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 30
        while server.count < 80 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        sent_before = server.count
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        with Store.open(tmp_path / "store.duckdb", read_only=True) as store:
            (run,) = store.list_runs()
            persisted = len(store.done_jobs(run["run_id"]))
        assert run["status"] == "interrupted"
        assert persisted >= sent_before - 8  # everything answered was handed to the writer before it exited
        resumed = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=120,
                                 env=env)
        sent_after = server.count - sent_before
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] is True and summary["run_id"] == run["run_id"]
    assert len(outputs(tmp_path, run["run_id"])) == 300
    assert 300 - sent_before <= sent_after <= 300 - persisted


def test_a_slow_writer_holds_every_worker_back(tmp_path):
    """Back-pressure: with answers arriving faster than the writer stores them, the outputs not yet stored stay
    under ~4 batches (two waiting, one being written, one filling) plus one per worker -- not the whole run."""
    import asyncio

    from tunebench.execute import execute

    n, batch, workers = 600, 10, 8
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps({"id": f"c{i:04d}", "input": f"q {i}",
                                                              "expected": f"a {i}"}) + "\n" for i in range(n)))
    (tmp_path / "out.jsonl").write_text("".join(json.dumps({"id": f"c{i:04d}", "output": f"a {i}"}) + "\n"
                                                for i in range(n)))
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"name: slow\nmodels:\n  base: {{runner: recorded, path: out.jsonl, concurrency: {workers}}}\n"
                     "cases: {path: cases.jsonl}\nmetrics:\n  exact: {type: exact_match}\n")
    _, plan, _ = api.prepare(api.RunConfig(suite=suite))
    produced, stored, backlog = [0], [0], []

    def progress(_output) -> None:
        produced[0] += 1
        backlog.append(produced[0] - stored[0])

    def sink(items) -> None:
        time.sleep(0.01)  # a writer slower than the answers
        stored[0] += len(items)

    stats = asyncio.run(execute(plan.models, plan.jobs_for, sink, progress=progress, batch_size=batch,
                                batch_interval=10.0))
    assert stats.done == stored[0] == n
    assert max(backlog) <= 4 * batch + workers, max(backlog)


def test_once_every_job_is_taken_what_waits_is_stored_while_the_last_requests_fly(tmp_path):
    """The outputs already answered go to the writer as soon as the last job is taken -- not by the batch timer
    and not after the last, slow answer, which the whole run would otherwise wait for to store them."""
    import asyncio

    from tunebench.execute import execute

    slow = Fault.hang(0.6)  # the last case's first attempt: held 0.6 s, then dropped and retried
    with FakeOpenAI(rules=[FaultRule("question 7", slow, times=2)]) as server:
        suite = make_suite(tmp_path, server.base_url, n=8, concurrency=4)
        _, plan, _ = api.prepare(api.RunConfig(suite=suite))
        answered: dict[str, float] = {}
        batches: list[tuple[float, list[str]]] = []

        def progress(output) -> None:
            answered[f"{output.model}/{output.case_id}"] = time.monotonic()

        def sink(items) -> None:
            batches.append((time.monotonic(), sorted(f"{job.model}/{out.case_id}" for job, out in items)))

        stats = asyncio.run(execute(plan.models, plan.jobs_for, sink, progress=progress, batch_interval=30.0))
    assert stats.done == 16 and stats.errors == 0
    (handed, first), (_, rest) = batches  # one batch when the last job was taken, one at the end
    assert sorted(first + rest) == sorted(answered)
    assert {"base/c0007", "tuned/c0007"} <= set(rest)
    assert all(answered[k] <= handed for k in first)
    assert handed < min(answered["base/c0007"], answered["tuned/c0007"]) - 0.3
