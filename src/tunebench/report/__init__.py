"""Render a run's results for a reviewer: self-contained HTML, Markdown for PR comments, JSON for machines.

``RunReport`` (see ``model``) is the one input; ``render_html`` writes a file atomically, ``render_markdown``
and ``report_json`` return a string and a dict. Importing this package loads no template engine.
"""

from __future__ import annotations

from .diff import reconstruct, word_diff
from .html import render_html
from .markdown import render_markdown
from .model import CaseRow, MetricInfo, RunReport, SummaryRow, summary_rows
from .summary import report_json

__all__ = [
    "CaseRow",
    "MetricInfo",
    "RunReport",
    "SummaryRow",
    "reconstruct",
    "render_html",
    "render_markdown",
    "report_json",
    "summary_rows",
    "word_diff",
]
