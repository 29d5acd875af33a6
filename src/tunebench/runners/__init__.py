"""Runner plugins: how models are queried (HTTP endpoints, recorded files, commands, Python callables)."""

from ._base import Request, Response, Runner, RunnerContext, runner

__all__ = ["Request", "Response", "Runner", "RunnerContext", "runner"]
