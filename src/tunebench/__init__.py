"""tunebench: evaluate fine-tuned LLMs against their base model on golden cases."""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Aggregate",
    "Case",
    "ConfigError",
    "Metric",
    "MetricContext",
    "Output",
    "PluginError",
    "Request",
    "Response",
    "RetryableError",
    "RunIncompleteError",
    "Runner",
    "RunnerContext",
    "RunnerError",
    "Sample",
    "Score",
    "StoreError",
    "StoreLockedError",
    "TunebenchError",
    "__version__",
    "hookimpl",
    "metric",
    "runner",
]

# Public names load on first use, so `tunebench --help` does not pay for pydantic and the plugin machinery.
_LAZY = {
    "Aggregate": "records", "Case": "records", "Output": "records", "Sample": "records", "Score": "records",
    "ConfigError": "errors", "PluginError": "errors", "RetryableError": "errors", "RunIncompleteError": "errors",
    "RunnerError": "errors", "StoreError": "errors", "StoreLockedError": "errors", "TunebenchError": "errors",
    "hookimpl": "hookspecs", "Metric": "metrics", "MetricContext": "metrics", "metric": "metrics",
    "Request": "runners", "Response": "runners", "Runner": "runners", "RunnerContext": "runners",
    "runner": "runners",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tunebench' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .errors import (
        ConfigError,
        PluginError,
        RetryableError,
        RunIncompleteError,
        RunnerError,
        StoreError,
        StoreLockedError,
        TunebenchError,
    )
    from .hookspecs import hookimpl
    from .metrics import Metric, MetricContext, metric
    from .records import Aggregate, Case, Output, Sample, Score
    from .runners import Request, Response, Runner, RunnerContext, runner
