"""Execute: jobs → outputs, through the runners, concurrently, with retries and the response cache.

Invariants:
- per model, at most ``concurrency`` requests are in flight (that many worker coroutines share one iterator);
- transient failures (RetryableError, timeouts) are retried with exponential backoff and jitter, honouring
  Retry-After, up to ``max_attempts``; a case that still fails becomes an error Output -- never dropped, and an
  exception from a runner never crashes the run;
- a successful response is made durable in the response cache (``ResponseCache.put``, a journal append)
  before its worker takes the next job, so a process killed at any moment re-asks at most the requests in
  flight;
- outputs are handed to the sink in batches on ONE writer thread, so scoring and DuckDB writes never block the
  event loop. A batch goes when it reaches ``batch_size`` outputs, ``batch_bytes`` characters of text (outputs
  and prompts: long documents make small batches, so memory stays bounded), or ``batch_interval`` seconds after
  its first output (a timer, so a quiet model does not hold outputs back): everything finished reaches the
  store within about a second. Batches may be large because each DuckDB write has a fixed cost (~10 ms): 2,048
  rows cost a third per row of what 256 rows cost. While more than two batches wait behind the writer, no
  worker takes a new job (back-pressure), so the outputs held in memory do not grow with the run;
- jobs already done (resume) are skipped; cached responses are replayed without a request;
- a ``prologue`` (opening the store) runs first on the writer thread, while the first requests are in flight
  (it starts ~10 ms after them, or before the first batch); every batch waits behind it, and its failure ends the
  run like a failed write;
- once every job has been taken, the outputs waiting for a batch go to the writer at once: it stores them while
  the last requests are in flight (up to a latency), not after the last answer, when the whole run waits for it;
- while jobs run, the interpreter's GIL switch interval is 0.5 ms (restored after): the loop thread gives up the
  GIL at every wait for a socket, and with the default 5 ms it could wait that long to get it back whenever the
  writer thread is scoring or storing a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .cache import ResponseCache
from .errors import RetryableError, RunnerError
from .plan import Job, ModelPlan
from .records import Output
from .runners import Request, Response

__all__ = ["ExecStats", "execute"]

Sink = Callable[[list[tuple[Job, Output]]], None]
_SWITCH_INTERVAL_S = 0.0005


@dataclass
class ExecStats:
    """Counts from one execution."""

    sent: int = 0
    """Requests sent (attempts included)."""
    cached: int = 0
    skipped: int = 0
    errors: int = 0
    done: int = 0


class _Batcher:
    """Collects outputs on the loop thread; flushes them to the sink on a single writer thread."""

    def __init__(self, sink: Sink, size: int, interval: float, prologue: Callable[[], None] | None = None,
                 max_chars: int = 4_000_000, prologue_delay: float = 0.01) -> None:
        self.sink, self.size, self.interval, self.max_chars = sink, size, interval, max_chars
        self.items: list[tuple[Job, Output]] = []
        self.chars = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebench-writer")
        self.pending: list[asyncio.Future[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.prologue = prologue
        # The prologue (imports, opening the store: ~0.1 s of Python) starts once the first requests are on the
        # wire, or before the first batch, whichever comes first: started at once, it competes with the event loop
        # for the GIL just when every worker is connecting and sending.
        self.prologue_timer = self.loop.call_later(prologue_delay, self._start_prologue) if prologue else None

    def _start_prologue(self) -> None:
        if self.prologue_timer is not None:
            self.prologue_timer.cancel()
            self.prologue_timer = None
        if self.prologue is not None:
            prologue, self.prologue = self.prologue, None
            self.pending.append(self.loop.run_in_executor(self.pool, prologue))

    async def add(self, job: Job, output: Output) -> None:
        self.items.append((job, output))
        self.chars += len(output.text) + sum(len(m.get("content") or "") for m in job.messages)
        if len(self.items) >= self.size or self.chars >= self.max_chars:
            self.submit()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.interval, self.submit)
        # Back-pressure: while more than two batches wait behind the writer, EVERY worker that finishes a job
        # waits here (popping the oldest batch and letting only its own worker wait let the others run on, and
        # the writer's queue -- outputs held in memory -- grew with the run). A failed write surfaces here.
        pending = self.pending
        while pending:
            if pending[0].done():
                pending.pop(0).result()
            elif len(pending) > 2:
                await asyncio.shield(pending[0])  # shared by the waiting workers: cancelling one must not cancel it
            else:
                break

    def submit(self) -> None:
        self._start_prologue()  # every batch runs after it, on the same single writer thread
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.items:
            items, self.items, self.chars = self.items, [], 0
            self.pending.append(self.loop.run_in_executor(self.pool, self.sink, items))

    async def close(self) -> None:
        self.submit()
        while self.pending:
            await self.pending.pop(0)
        self.pool.shutdown(wait=True)

    def close_sync(self) -> None:
        """After cancellation: hand over what is left and wait for the writer (nothing finished is lost)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.prologue_timer is not None:
            self.prologue_timer.cancel()
            self.prologue_timer = None
        if self.prologue is not None:
            prologue, self.prologue = self.prologue, None
            self.pool.submit(prologue)
        if self.items:
            items, self.items = self.items, []
            self.pool.submit(self.sink, items)
        self.pool.shutdown(wait=True)


async def _run_job(model: ModelPlan, job: Job, stats: ExecStats) -> Output:
    cfg = model.config
    request = Request(job.case.id, job.repeat, job.messages)
    attempts = 0
    while True:
        attempts += 1
        stats.sent += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(cfg.timeout_s + 5.0):  # guard for runners without their own timeout
                response = await model.runner.generate(request)
        except RetryableError as exc:
            error: RetryableError = exc
        except TimeoutError:
            error = RetryableError(f"no answer within {cfg.timeout_s:g}s")
        except RunnerError as exc:
            return _error(job, str(exc), attempts)
        except Exception as exc:  # a runner bug must cost one case, not the run
            return _error(job, f"{type(exc).__name__}: {exc}", attempts)
        else:
            latency = response.latency_ms
            if latency is None:
                latency = (time.perf_counter() - started) * 1000.0
            request_record: dict[str, Any] = {"messages": list(job.messages)}
            if response.rendered_prompt is not None:
                request_record["prompt"] = response.rendered_prompt
            return Output(job.case.id, job.model, job.repeat, response.text, None, latency,
                          response.prompt_tokens, response.completion_tokens, response.finish_reason, attempts,
                          False, request_record)
        if attempts >= cfg.max_attempts:
            return _error(job, f"{error} (gave up after {attempts} attempts)", attempts)
        delay = min(cfg.max_backoff_s, cfg.backoff_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, cfg.max_backoff_s))
        await asyncio.sleep(delay)


def _error(job: Job, reason: str, attempts: int) -> Output:
    return Output(job.case.id, job.model, job.repeat, "", reason, None, None, None, None, attempts, False,
                  {"messages": list(job.messages)})


async def execute(models: dict[str, ModelPlan], jobs_for: Callable[[str], Iterable[Job]], sink: Sink, *,
                  cache: ResponseCache | None = None, read_cache: bool = True,
                  skip: set[tuple[str, str, int]] | None = None,
                  progress: Callable[[Output], None] | None = None,
                  batch_size: int = 2048, batch_interval: float = 0.5, batch_chars: int = 4_000_000,
                  prologue: Callable[[], None] | None = None) -> ExecStats:
    """Run every job of every model; outputs reach ``sink`` in batches on the writer thread, after
    ``prologue``."""
    stats = ExecStats()
    batcher = _Batcher(sink, batch_size, batch_interval, prologue, batch_chars)
    skip = skip or set()
    taken: set[str] = set()  # models whose every job has been taken

    starts: dict[str, asyncio.Future[None]] = {}

    async def started(model: ModelPlan) -> str | None:
        """Start the runner once (lazily: a fully cached run loads no model); the reason if it cannot start."""
        if model.name not in starts:
            starts[model.name] = asyncio.ensure_future(model.runner.start())
        try:
            await asyncio.shield(starts[model.name])
        except Exception as exc:  # a model that cannot load fails its cases, not the run
            return f"{model.name} could not start: {exc}"
        return None

    async def worker(model: ModelPlan, jobs: Iterator[Job]) -> None:
        for job in jobs:
            if (job.case.id, job.model, job.repeat) in skip:
                stats.skipped += 1
                continue
            hit = cache.get(job.key) if (cache is not None and read_cache) else None
            if hit is not None:
                response, latency = hit
                output = Output(job.case.id, job.model, job.repeat, response.text, None, latency,
                                response.prompt_tokens, response.completion_tokens, response.finish_reason, 0,
                                True, {"messages": list(job.messages)})
                stats.cached += 1
            elif (reason := await started(model)) is not None:
                output = _error(job, reason, 0)
            else:
                output = await _run_job(model, job, stats)
                if cache is not None and output.error is None:
                    cache.put(job.key, Response(output.text, output.prompt_tokens, output.completion_tokens,
                                                output.finish_reason), output.latency_ms)
            stats.done += 1
            if output.error is not None:
                stats.errors += 1
            await batcher.add(job, output)
            if progress is not None:
                progress(output)
        if model.name not in taken:
            taken.add(model.name)
            if len(taken) == len(models):  # the last requests are in flight: store what waits meanwhile
                batcher.submit()

    tasks = []
    for model in models.values():
        shared = iter(jobs_for(model.name))
        tasks += [asyncio.create_task(worker(model, shared)) for _ in range(model.config.concurrency)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, _SWITCH_INTERVAL_S))
    try:
        await asyncio.gather(*tasks)
        await batcher.close()
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        batcher.close_sync()
        raise
    finally:
        sys.setswitchinterval(switch)
        for model in models.values():
            await model.runner.aclose()
    return stats
