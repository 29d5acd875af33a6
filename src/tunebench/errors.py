"""The tunebench exception tree.

Every error a user can cause or meet derives from :class:`TunebenchError`; the CLI prints its message (no
traceback) and exits with its ``exit_code``::

    TunebenchError                 exit 2 unless stated
    ├── ConfigError                bad suite, option, glossary or golden file (names file:line:col and the fix)
    ├── PluginError                unknown or broken metric / runner plugin ("did you mean …")
    ├── StoreError                 the DuckDB store cannot be opened or written
    │   └── StoreLockedError       another process holds the database
    ├── RunnerError                a model could not be queried at all (per-case failures are error rows)
    │   └── RetryableError         a transient failure (429, 5xx, timeout, dropped connection): retry it
    └── RunIncompleteError         exit 3: the run could not complete (e.g. every request failed)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "PluginError",
    "RetryableError",
    "RunIncompleteError",
    "RunnerError",
    "StoreError",
    "StoreLockedError",
    "TunebenchError",
]


class TunebenchError(Exception):
    """Base class of every error tunebench raises on purpose."""

    exit_code = 2


class ConfigError(TunebenchError):
    """Bad user input: the message names the file, the line and column where known, and the fix."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: int | None = None, hint: str | None = None) -> None:
        self.path, self.line, self.column, self.hint = path, line, column, hint
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
                if column is not None:
                    where += f":{column}"
            where += ": "
        text = where + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)


class PluginError(TunebenchError):
    """An unknown or broken plugin (metric or runner)."""


class StoreError(TunebenchError):
    """The DuckDB store cannot be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another process holds the DuckDB file (DuckDB allows one writer process per file)."""


class RunnerError(TunebenchError):
    """A model could not be queried. Raised for one case, it becomes an error row, not a crash."""


class RetryableError(RunnerError):
    """A transient failure worth retrying; ``retry_after`` is the server's Retry-After in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RunIncompleteError(TunebenchError):
    """The run could not complete (for example every request of a model failed)."""

    exit_code = 3
