"""Metric plugins: one family per module, each registering its factories through ``register_metrics``."""

from ._base import Metric, MetricContext, mean_aggregate, metric

__all__ = ["Metric", "MetricContext", "mean_aggregate", "metric"]
