"""The runner contract: how a model is queried.

A runner *kind* is registered as a factory decorated with ``@runner("kind", description=…)``; its keyword-only
parameters are the runner-specific model settings in the suite. The factory returns a :class:`Runner`.

Invariants:
- ``generate`` answers one request. A transient failure (429, 5xx, timeout, dropped connection) raises
  ``RetryableError`` (with the server's Retry-After when given); a permanent one raises ``RunnerError``. The
  engine owns retries, backoff, concurrency limits and latency measurement -- runners do not retry.
- ``identity()`` holds everything that influences the output (kind, endpoint, model, generation parameters) and
  nothing secret: it is the cache key's model part and is stored with the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..factory import make_decorator

__all__ = ["Request", "Response", "Runner", "RunnerContext", "runner"]

runner = make_decorator("__tunebench_runner__")
"""Decorator marking a runner factory: ``@runner("openai", description="…")``."""


@dataclass(frozen=True)
class RunnerContext:
    """What a runner factory may need from the run."""

    model_name: str
    """The model's name in the suite (``base``, ``tuned``)."""
    suite_dir: Path = field(default_factory=Path.cwd)
    """Directory of the suite file: relative paths (recorded outputs) resolve against it."""
    timeout_s: float = 60.0
    """Per-request timeout."""
    concurrency: int = 8
    """Requests in flight for this model (a runner may size its connection pool by it)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One rendered request."""

    case_id: str
    repeat: int
    messages: tuple[dict[str, str], ...]
    """Chat messages (``role``/``content``), exactly as rendered."""

    @property
    def prompt(self) -> str:
        """The messages flattened for plain-completion and command runners."""
        if len(self.messages) == 1:
            return self.messages[0]["content"]
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in self.messages)


@dataclass(frozen=True, slots=True)
class Response:
    """A runner's answer."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    latency_ms: float | None = None
    """Set only by runners that know better than the engine's wall clock (recorded outputs)."""
    rendered_prompt: str | None = None
    """The exact text the model saw (chat template applied), for runners that build it themselves."""


class Runner:
    """Base class for runners."""

    kind: ClassVar[str] = ""

    def identity(self) -> dict[str, Any]:
        """Everything that determines the output, without secrets."""
        return {"kind": self.kind}

    async def start(self) -> None:
        """Load what the first request needs (weights, processes); awaited once, outside the request timeout."""

    def check(self) -> None:
        """Validate what can be checked without querying the model (files exist, parse); raise ConfigError."""

    async def generate(self, request: Request) -> Response:
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")

    async def aclose(self) -> None:
        """Release connections, processes or models."""
