"""A python-runner callable that records how many calls are in flight at once (importable by suites)."""

from __future__ import annotations

import asyncio

STATE = {"now": 0, "max": 0, "calls": 0}


async def slow_echo(messages: list[dict], delay: float = 0.02) -> str:
    STATE["now"] += 1
    STATE["calls"] += 1
    STATE["max"] = max(STATE["max"], STATE["now"])
    try:
        await asyncio.sleep(delay)
    finally:
        STATE["now"] -= 1
    return "echo: " + messages[-1]["content"]
