"""The ``command`` runner: a local program answers each case. The rendered prompt (``Request.prompt``) goes to
its stdin as UTF-8; its stdout, less one trailing newline, is the output.

Invariants:
- ``command`` as a list runs without a shell (no quoting surprises); as a string it runs through ``/bin/sh``.
  The working directory is the suite's directory, so ``./model.sh`` next to the suite file works.
- Each request is one process in its own process group. On timeout (``context.timeout_s``) or cancellation the
  whole group is killed and reaped before returning, so no process outlives its request; a timeout raises
  ``RetryableError``. A non-zero exit raises ``RunnerError`` with the code and the tail of stderr.
- ``env`` values are added to the inherited environment but kept out of ``identity()`` (they may hold secrets);
  only their names are part of it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RetryableError, RunnerError
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner

__all__ = ["CommandRunner", "command"]

_STDERR_TAIL = 300


class CommandRunner(Runner):
    """The runner behind ``kind: command``."""

    kind = "command"

    def __init__(self, command: list[str] | str, *, env: dict[str, str], cwd: Path, timeout_s: float) -> None:
        self.command = command
        self.env_names = sorted(env)
        self._env = {**os.environ, **env}
        self.cwd = cwd
        self.timeout_s = timeout_s

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "command": self.command, "env": self.env_names}

    async def generate(self, request: Request) -> Response:
        common: dict[str, Any] = {
            "stdin": asyncio.subprocess.PIPE,
            "stdout": asyncio.subprocess.PIPE,
            "stderr": asyncio.subprocess.PIPE,
            "env": self._env,
            "cwd": self.cwd,
            "start_new_session": True,  # its own process group, so a timeout kills shell children too
        }
        try:
            if isinstance(self.command, str):
                proc = await asyncio.create_subprocess_shell(self.command, **common)
            else:
                proc = await asyncio.create_subprocess_exec(*self.command, **common)
        except OSError as exc:
            raise RunnerError(f"cannot start command {self._name()}: {exc.strerror or exc}") from None
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(request.prompt.encode()), self.timeout_s)
        except TimeoutError:
            await _kill(proc)
            raise RetryableError(f"command timed out after {self.timeout_s:g}s") from None
        except BaseException:  # cancelled by the engine: leave no orphan behind
            await _kill(proc)
            raise
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-_STDERR_TAIL:]
            code = proc.returncode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            raise RunnerError(f"command {self._name()} {how}" + (f": {tail}" if tail else " (no stderr)"))
        text = stdout.decode(errors="replace")
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        return Response(text=text)

    def _name(self) -> str:
        return repr(self.command if isinstance(self.command, str) else self.command[0])


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError:  # the group may be gone while the leader is not yet reaped
            proc.kill()
    await proc.wait()


def _check_program(argv: list[str], cwd: Path) -> None:
    program = argv[0]
    if os.sep in program:
        found = (cwd / program).expanduser()
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise ConfigError(f"command runner: {program!r} is not an executable file (looked in {cwd})",
                              hint="check the path (relative to the suite file) and its execute permission")
    elif shutil.which(program, path=os.environ.get("PATH")) is None:
        raise ConfigError(f"command runner: program {program!r} not found on PATH",
                          hint="install it, give its full path, or pass a string to run it through the shell")


@runner("command", description="A local command: the prompt on stdin, the output from stdout")
def command(
    *,
    command: list[str] | str,
    env: dict[str, str] | None = None,
    context: RunnerContext,
) -> CommandRunner:
    """Run ``command`` once per case (a list without a shell, a string through ``/bin/sh``)."""
    cwd = Path(context.suite_dir)
    if isinstance(command, list):
        if not command:
            raise ConfigError("command runner: 'command' is an empty list", hint="for example [python, model.py]")
        _check_program(command, cwd)
    elif not command.strip():
        raise ConfigError("command runner: 'command' is empty", hint="for example 'python model.py'")
    return CommandRunner(command, env=dict(env or {}), cwd=cwd, timeout_s=context.timeout_s)


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(command)
