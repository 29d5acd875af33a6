"""Driving a runner directly in tests: one request, several at once, or an expected failure."""

from __future__ import annotations

import asyncio

from tunebench.errors import RunnerError
from tunebench.runners import Request, Response


def request(text: str = "hello world", case_id: str = "c1", repeat: int = 0) -> Request:
    return Request(case_id, repeat, ({"role": "user", "content": text},))


def run(runner, *requests: Request) -> list[Response | BaseException]:
    """Send the requests concurrently on a fresh loop, then close the runner; exceptions are returned."""

    async def main() -> list[Response | BaseException]:
        try:
            return await asyncio.gather(*(runner.generate(r) for r in requests), return_exceptions=True)
        finally:
            await runner.aclose()

    return asyncio.run(main())


def one(runner, req: Request | None = None) -> Response:
    (result,) = run(runner, req or request())
    if isinstance(result, BaseException):
        raise result
    return result


def failure(runner, req: Request | None = None) -> RunnerError:
    (result,) = run(runner, req or request())
    assert isinstance(result, RunnerError), result
    return result
