"""recorded, command and python runners: real files, real subprocesses, real imported modules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runners.drive import failure, one, request, run
from tunebench.errors import ConfigError, RetryableError, RunnerError
from tunebench.runners import Request, Response, RunnerContext
from tunebench.runners import command as command_module
from tunebench.runners import python as python_module
from tunebench.runners import recorded as recorded_module
from tunebench.runners.command import command
from tunebench.runners.python import python
from tunebench.runners.recorded import recorded


def build(factory, suite_dir: Path, *, timeout_s: float = 10.0, concurrency: int = 4, **options: Any):
    context = RunnerContext(model_name="base", suite_dir=suite_dir, timeout_s=timeout_s, concurrency=concurrency)
    return factory.__tunebench_runner__.build(options, context)


def jsonl(path: Path, *records: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), "utf-8")
    return path


def test_plugins_register_their_factories():
    for module, factory in [(recorded_module, recorded), (command_module, command), (python_module, python)]:
        registered: list[Any] = []
        module.register_runners(registered.append)
        assert registered == [factory]


# -- recorded ------------------------------------------------------------------------------------------------


def test_recorded_serves_outputs_by_case_id(tmp_path):
    jsonl(tmp_path / "out.jsonl",
          {"id": "a", "output": "alpha", "latency_ms": 12.5, "prompt_tokens": 3, "completion_tokens": 1,
           "finish_reason": "stop"},
          "",
          {"id": 7, "output": "seven"},
          {"id": "b", "output": "any repeat"},
          {"id": "b", "output": "second repeat", "repeat": 1})
    runner = build(recorded, tmp_path, path="out.jsonl")  # relative to the suite directory
    results = run(runner, request(case_id="a"), request(case_id="7"), request(case_id="b", repeat=0),
                  request(case_id="b", repeat=1), request(case_id="b", repeat=2))
    assert results[0] == Response("alpha", prompt_tokens=3, completion_tokens=1, finish_reason="stop",
                                  latency_ms=12.5)
    assert [r.text for r in results[1:]] == ["seven", "any repeat", "second repeat", "any repeat"]


def test_recorded_custom_fields_and_many_concurrent_requests(tmp_path):
    jsonl(tmp_path / "out.jsonl", *({"case": f"c{i}", "answer": f"text {i}"} for i in range(200)))
    runner = build(recorded, tmp_path, path=str(tmp_path / "out.jsonl"), id_field="case", output_field="answer")
    results = run(runner, *(request(case_id=f"c{i}") for i in range(200)))
    assert [r.text for r in results] == [f"text {i}" for i in range(200)]


def test_recorded_missing_case_is_a_runner_error(tmp_path):
    path = jsonl(tmp_path / "out.jsonl", {"id": "a", "output": "alpha"})
    error = failure(build(recorded, tmp_path, path="out.jsonl"), request(case_id="zzz"))
    assert type(error) is RunnerError
    assert str(error) == f"no recorded output for case 'zzz' in {path}"


def test_recorded_identity_changes_with_the_content(tmp_path):
    path = jsonl(tmp_path / "out.jsonl", {"id": "a", "output": "alpha"})
    first = build(recorded, tmp_path, path="out.jsonl").identity()
    assert first["kind"] == "recorded" and first["path"] == "out.jsonl"
    assert first["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    jsonl(path, {"id": "a", "output": "beta"})
    second = build(recorded, tmp_path, path="out.jsonl").identity()
    assert second["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() != first["sha256"]


def test_recorded_bad_json_names_file_and_line(tmp_path):
    path = jsonl(tmp_path / "out.jsonl", {"id": "a", "output": "alpha"}, '{"id": "b", "output": ')
    runner = build(recorded, tmp_path, path="out.jsonl")
    with pytest.raises(ConfigError) as info:
        runner.identity()
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert str(info.value).startswith(f"{path}:2: not valid JSON")


def test_recorded_duplicate_names_both_lines(tmp_path):
    path = jsonl(tmp_path / "out.jsonl", {"id": "a", "output": "1"}, {"id": "b", "output": "2"},
                 {"id": "a", "output": "3"})
    (error,) = run(build(recorded, tmp_path, path="out.jsonl"), request(case_id="b"))  # loads on first use
    assert isinstance(error, ConfigError)
    assert error.line == 3
    assert str(error).startswith(f"{path}:3: duplicate case 'a': also on line 1")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"output": "x"}, "'id' must be a string, got missing"),
        ({"id": "a"}, "'output' must be a string, got missing"),
        ({"id": "a", "output": 3}, "'output' must be a string, got a int"),
        ({"id": "a", "output": "x", "latency_ms": "fast"}, "'latency_ms' must be a number"),
        ({"id": "a", "output": "x", "repeat": 1.5}, "'repeat' must be an integer"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_recorded_bad_records_are_config_errors(tmp_path, line, message):
    path = jsonl(tmp_path / "out.jsonl", {"id": "ok", "output": "fine"}, line)
    with pytest.raises(ConfigError) as info:
        build(recorded, tmp_path, path="out.jsonl").identity()
    assert str(info.value).startswith(f"{path}:2: {message}")


def test_recorded_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="not found") as info:
        build(recorded, tmp_path, path="nope/out.jsonl")
    assert info.value.path == str(tmp_path / "nope" / "out.jsonl")


# -- command -------------------------------------------------------------------------------------------------

UPPER = "import sys; sys.stdout.write(sys.stdin.read().upper() + '\\n')"


def test_command_list_gets_the_prompt_on_stdin(tmp_path):
    messages = ({"role": "system", "content": "sys"}, {"role": "user", "content": "héllo"})
    req = Request("c1", 0, messages)
    response = one(build(command, tmp_path, command=[sys.executable, "-c", UPPER]), req)
    assert response.text == req.prompt.upper()


def test_command_strips_exactly_one_trailing_newline(tmp_path):
    script = "import sys; sys.stdout.write('line\\n\\n')"
    assert one(build(command, tmp_path, command=[sys.executable, "-c", script])).text == "line\n"


def test_command_string_runs_through_the_shell_in_the_suite_dir(tmp_path):
    (tmp_path / "suffix.txt").write_text("!", "utf-8")
    runner = build(command, tmp_path, command="tr a-z A-Z; cat suffix.txt")
    assert one(runner, request("abc")).text == "ABC!"


def test_command_env_is_passed_but_only_its_names_are_identity(tmp_path):
    script = "import os; print(os.environ['TB_SECRET'] + os.environ['PATH'][:0])"
    runner = build(command, tmp_path, command=[sys.executable, "-c", script], env={"TB_SECRET": "s3cret-value"})
    assert runner.identity() == {"kind": "command", "command": [sys.executable, "-c", script],
                                 "env": ["TB_SECRET"]}
    assert one(runner).text == "s3cret-value"


def test_command_nonzero_exit_reports_code_and_stderr_tail(tmp_path):
    script = "import sys; sys.stderr.write('HEAD' + 'x' * 500 + 'the real reason'); sys.exit(3)"
    error = failure(build(command, tmp_path, command=[sys.executable, "-c", script]))
    assert type(error) is RunnerError
    assert str(error).startswith(f"command {sys.executable!r} exited with code 3: ")
    assert str(error).endswith("x" * 285 + "the real reason")
    assert "HEAD" not in str(error)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead; its parent (perhaps pid 1) just has not reaped it


def test_command_timeout_kills_the_process_group(tmp_path):
    pids = tmp_path / "pids"
    runner = build(command, tmp_path, timeout_s=0.5, command=f"echo $$ > {pids}; sleep 30 & echo $! >> {pids}; wait")
    started = time.perf_counter()
    error = failure(runner)
    elapsed = time.perf_counter() - started
    assert isinstance(error, RetryableError)
    assert str(error) == "command timed out after 0.5s"
    assert elapsed < 5
    shell, child = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (_alive(shell) or _alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(shell) and not _alive(child)


def test_command_cancelled_by_the_engine_leaves_no_process(tmp_path):
    pids = tmp_path / "pids"
    runner = build(command, tmp_path, command=f"echo $$ > {pids}; sleep 30")

    async def main() -> None:
        task = asyncio.ensure_future(runner.generate(request()))
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert not _alive(int(pids.read_text()))


def test_command_missing_program_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="'no-such-program-xyz' not found on PATH"):
        build(command, tmp_path, command=["no-such-program-xyz", "--flag"])
    with pytest.raises(ConfigError, match="not an executable file"):
        build(command, tmp_path, command=["./missing.sh"])
    with pytest.raises(ConfigError, match="empty"):
        build(command, tmp_path, command=[])


# -- python --------------------------------------------------------------------------------------------------

MODULE = '''
import asyncio
import threading

from tunebench.errors import RetryableError



def answer(messages, prefix=""):
    messages.append({"role": "assistant", "content": "mutated"})  # must not leak back into the request
    return prefix + messages[-2]["content"] + " @" + threading.current_thread().name.split("_")[0]


async def answer_async(messages, suffix="?"):
    await asyncio.sleep(0)
    return {"text": messages[-1]["content"] + suffix, "prompt_tokens": 4, "completion_tokens": 2,
            "finish_reason": "length"}


def boom(messages):
    raise ValueError("bad input " + messages[-1]["content"])


def busy(messages):
    raise RetryableError("backend busy", retry_after=3)


def wrong(messages):
    return 42


class Model:
    def generate(self, messages):
        return "method:" + messages[-1]["content"]


model = Model()
'''


@pytest.fixture
def helper(tmp_path, request) -> str:
    """A module next to the 'suite' (tmp_path), with a name unique to the test."""
    name = f"tb_helper_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE, "utf-8")
    yield name
    sys.modules.pop(name, None)


def test_python_sync_callable_runs_in_a_worker_thread(tmp_path, helper):
    req = request("question")
    runner = build(python, tmp_path, callable=f"{helper}:answer", kwargs={"prefix": ">> "})
    assert one(runner, req).text == ">> question @tunebench-python"
    assert req.messages == ({"role": "user", "content": "question"},)
    assert runner.identity() == {"kind": "python", "callable": f"{helper}:answer", "kwargs": {"prefix": ">> "}}


def test_python_async_callable_with_usage(tmp_path, helper):
    runner = build(python, tmp_path, callable=f"{helper}:answer_async", kwargs={"suffix": "!"})
    results = run(runner, *(request(f"q{i}", case_id=f"c{i}") for i in range(20)))
    assert results[3] == Response("q3!", prompt_tokens=4, completion_tokens=2, finish_reason="length")
    assert [r.text for r in results] == [f"q{i}!" for i in range(20)]


def test_python_dotted_attribute(tmp_path, helper):
    assert one(build(python, tmp_path, callable=f"{helper}:model.generate")).text == "method:hello world"


def test_python_exceptions_become_runner_errors(tmp_path, helper):
    error = failure(build(python, tmp_path, callable=f"{helper}:boom"), request("xyz"))
    assert type(error) is RunnerError
    assert str(error) == f"{helper}:boom raised ValueError: bad input xyz"
    retry = failure(build(python, tmp_path, callable=f"{helper}:busy"))
    assert isinstance(retry, RetryableError) and retry.retry_after == 3
    wrong = failure(build(python, tmp_path, callable=f"{helper}:wrong"))
    assert "returned int; expected a str or a dict" in str(wrong)


def test_python_import_errors_name_the_callable_and_the_fix(tmp_path, helper):
    with pytest.raises(ConfigError) as info:
        build(python, tmp_path, callable="tb_no_such_module_xyz:fn")
    assert "cannot import 'tb_no_such_module_xyz:fn': no module named 'tb_no_such_module_xyz'" in str(info.value)
    assert "PYTHONPATH" in str(info.value)
    with pytest.raises(ConfigError, match="has no attribute 'answr' \\(did you mean 'answer'\\?\\)"):
        build(python, tmp_path, callable=f"{helper}:answr")
    with pytest.raises(ConfigError, match="is not 'module:function'"):
        build(python, tmp_path, callable="json.dumps")
    with pytest.raises(ConfigError, match="not a callable"):
        build(python, tmp_path, callable="json:__doc__")


def test_python_module_failing_at_import(tmp_path):
    (tmp_path / "tb_broken_helper.py").write_text("raise RuntimeError('no weights here')\n", "utf-8")
    try:
        with pytest.raises(ConfigError, match="importing 'tb_broken_helper:fn' failed: RuntimeError: no weights"):
            build(python, tmp_path, callable="tb_broken_helper:fn")
    finally:
        sys.modules.pop("tb_broken_helper", None)
