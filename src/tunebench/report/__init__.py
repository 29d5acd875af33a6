"""Render a run's results for a reviewer: self-contained HTML, Markdown for PR comments, JSON for machines.

``RunReport`` (see ``model``) is the one input; ``render_html`` writes a file atomically, ``render_markdown``
and ``report_json`` return a string and a dict; all three open with the same ``build_verdict`` (gates and a
plain-language paragraph). ``render_weekly`` writes the weekly quality page from ``tunebench.weekly`` data.
Importing this package loads no template engine.
"""

from __future__ import annotations

from .diff import reconstruct, word_diff
from .html import render_html
from .markdown import render_markdown
from .model import CaseRow, MetricInfo, RunReport, SummaryRow, summary_rows
from .summary import report_json
from .verdict import Verdict, build_verdict
from .weekly_html import render_weekly

__all__ = [
    "CaseRow",
    "MetricInfo",
    "RunReport",
    "SummaryRow",
    "Verdict",
    "build_verdict",
    "reconstruct",
    "render_html",
    "render_markdown",
    "render_weekly",
    "report_json",
    "summary_rows",
    "word_diff",
]
