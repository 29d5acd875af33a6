"""Metric plugins: one family per module, each registering its factories through ``register_metrics``."""

from ._base import Metric, MetricContext, metric

__all__ = ["Metric", "MetricContext", "metric"]
