"""tunebench: evaluate fine-tuned LLMs against their base model on golden cases."""

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
