"""Progress display: a rich progress bar on a terminal, a plain line every 10% otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Call ``update(done, total, output)`` per output; ``close()`` at the end."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.bar: Any = None
        self.task: Any = None
        self.errors = 0
        self.next_line = 0.1
        self.first: tuple[float, int] | None = None
        """When the first output arrived, and how many were done then: the rate counts from there, not from
        start-up (imports, reading the cases, loading metrics), which made a fast run look slow."""

    def update(self, done: int, total: int, output: Any) -> None:
        if not self.enabled:
            return
        if output.error:
            self.errors += 1
        if self.first is None:
            self.first = (time.monotonic(), done)
        if self.tty:
            if self.bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
                from rich.progress import Progress as Bar

                self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[errors]} errors"), TimeRemainingColumn(),
                               transient=True)
                self.bar.start()
                self.task = self.bar.add_task("running", total=total, errors=0)
            self.bar.update(self.task, completed=done, errors=self.errors)
        elif total and done / total >= self.next_line:
            since, done_then = self.first
            elapsed = time.monotonic() - since
            # Under a second the rate says nothing (recorded or cached outputs arrive all at once).
            rate = f", {(done - done_then) / elapsed:.0f}/s" if elapsed >= 1 else ""
            errors = f"{self.errors} error{'' if self.errors == 1 else 's'}"
            print(f"{done}/{total} outputs ({done / total:.0%}), {errors}{rate}", file=sys.stderr, flush=True)
            while self.next_line <= done / total:
                self.next_line += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
