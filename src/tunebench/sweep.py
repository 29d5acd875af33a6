"""Checkpoint sweeps: one suite × every saved checkpoint (or adapter) of a training run → metric-vs-step report.

``run_sweep(SweepConfig)`` runs the suite once per checkpoint through :func:`tunebench.api.run`, overriding one
model setting (``tuned.adapter`` by default) with the checkpoint's absolute path. Invariants:
- every checkpoint is its own stored run; the baseline model is unchanged between runs, so after the first run
  its answers come from the response cache (and an ``hf`` base checkpoint is loaded once per process);
- checkpoints are ordered by training step; a step is given, or parsed from the directory name (the last number:
  ``checkpoint-500`` → 500), and a name without a number is an error, never a guess;
- a checkpoint whose run cannot complete is reported with its error; bad input (suite, paths) stops the sweep;
- the report is one self-contained HTML file: hand-drawn SVG charts, every text escaped, no script, no network.
"""

from __future__ import annotations

import glob as globlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from .cases import Selection
from .errors import ConfigError, RunIncompleteError
from .factory import did_you_mean

__all__ = ["Checkpoint", "SweepConfig", "SweepPoint", "SweepResult", "checkpoints_from_glob", "retention_failures",
           "run_sweep"]


@dataclass(frozen=True)
class Checkpoint:
    """One saved state of a training run."""

    path: Path
    """Adapter or checkpoint directory (made absolute)."""
    step: int
    """Training step, the x axis of the report."""


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep and where to put it."""

    suite: Path
    checkpoints: tuple[Checkpoint, ...] = ()
    """Explicit checkpoints; combined with ``glob``."""
    glob: str | None = None
    """A pattern such as ``runs/exp1/checkpoint-*`` (relative to the current directory); steps from the names."""
    model: str = "tuned"
    """The suite's model that gets each checkpoint."""
    setting: str = "adapter"
    """The model setting to override: ``adapter`` for LoRA adapters, ``checkpoint`` for full fine-tunes."""
    db: Path | None = None
    cache_dir: Path | None = None
    report: Path | None = None
    """The sweep report; default ``<suite>-sweep-<time>.html`` next to the store."""
    write_run_reports: bool = False
    """Also write each run's own HTML report."""
    selection: Selection = field(default_factory=Selection)
    retention: tuple[str, ...] = ()
    """Metrics that must not fall below the baseline by more than ``retention_delta`` (forgetting checks)."""
    retention_delta: float = 0.0
    best_metric: str | None = None
    """The metric that picks the best checkpoint; default the suite's first metric."""
    progress: Callable[[int, int, Checkpoint], None] | None = None
    """Called with (index, total, checkpoint) before each run."""


@dataclass
class SweepPoint:
    """One checkpoint's results."""

    checkpoint: Checkpoint
    run_id: str | None
    values: dict[str, float | None]
    """The swept model's aggregate per metric."""
    base_values: dict[str, float | None]
    """The baseline model's aggregate per metric, from the same run."""
    retention_failures: list[str] = field(default_factory=list)
    error: str | None = None
    """Why the run did not complete (no values then)."""
    requests: dict[str, int] = field(default_factory=dict)
    """Requests sent and answers served from the cache in this checkpoint's run."""

    def to_json(self) -> dict[str, Any]:
        return {"step": self.checkpoint.step, "path": str(self.checkpoint.path), "run_id": self.run_id,
                "values": self.values, "base_values": self.base_values,
                "retention_failures": self.retention_failures, "error": self.error, "requests": self.requests}


@dataclass
class SweepResult:
    """A finished sweep."""

    suite_name: str
    model: str
    baseline: str
    metrics: dict[str, bool]
    """Metric name → higher is better."""
    best_metric: str
    points: list[SweepPoint]
    best: SweepPoint | None
    """Best on ``best_metric`` among completed checkpoints that pass every retention check."""
    report: Path | None = None

    @property
    def run_ids(self) -> dict[int, str | None]:
        return {p.checkpoint.step: p.run_id for p in self.points}

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite_name, "model": self.model, "baseline": self.baseline, "metrics": self.metrics,
                "best_metric": self.best_metric, "best_step": self.best.checkpoint.step if self.best else None,
                "points": [p.to_json() for p in self.points], "report": str(self.report) if self.report else None}


_NUMBER = re.compile(r"\d+")


def step_from_name(path: Path) -> int:
    """The last number in a directory name: ``checkpoint-500`` → 500."""
    numbers = _NUMBER.findall(path.name)
    if not numbers:
        raise ConfigError(f"cannot tell the training step of {str(path)!r}: its name has no number",
                          hint="name checkpoints like checkpoint-500, or give the steps explicitly")
    return int(numbers[-1])


def checkpoints_from_glob(pattern: str) -> list[Checkpoint]:
    """Directories matching ``pattern``, with steps parsed from their names, ordered by step."""
    paths = sorted(Path(p).resolve() for p in globlib.glob(pattern) if Path(p).is_dir())
    if not paths:
        raise ConfigError(f"no checkpoint directory matches {pattern!r}", hint="check the pattern and the directory")
    return sorted((Checkpoint(p, step_from_name(p)) for p in paths), key=lambda c: c.step)


def retention_failures(values: dict[str, float | None], base: dict[str, float | None], retention: Sequence[str],
                       delta: float, higher_is_better: dict[str, bool], gates: Sequence[Any] = ()) -> list[str]:
    """Why a checkpoint fails retention: a listed metric fell more than ``delta`` below the baseline's value (in
    the metric's own direction), or one of the suite's non-inferiority gates failed in its run."""
    failures = []
    for metric in retention:
        cand, ref = values.get(metric), base.get(metric)
        if cand is None or ref is None:
            failures.append(f"{metric}: no value to compare")
            continue
        loss = ref - cand if higher_is_better.get(metric, True) else cand - ref
        if loss > delta:
            failures.append(f"{metric} {cand:.4g} vs baseline {ref:.4g}: worse by {loss:.4g} (allowed {delta:g})")
    failures += [f"gate {g.name}: {g.message}" for g in gates if g.kind == "non_inferiority" and not g.passed]
    return failures


def _resolve_checkpoints(config: SweepConfig) -> list[Checkpoint]:
    found = [Checkpoint(Path(c.path).resolve(), c.step) for c in config.checkpoints]
    if config.glob:
        found += checkpoints_from_glob(config.glob)
    if not found:
        raise ConfigError("a sweep needs at least one checkpoint",
                          hint="give paths or a glob like runs/exp1/checkpoint-*")
    for c in found:
        if not c.path.is_dir():
            raise ConfigError(f"checkpoint {str(c.path)!r} is not a directory")
    steps = [c.step for c in found]
    dupes = sorted({s for s in steps if steps.count(s) > 1})
    if dupes:
        raise ConfigError(f"several checkpoints have step {dupes[0]}", hint="each checkpoint needs its own step")
    return sorted(found, key=lambda c: c.step)


def run_sweep(config: SweepConfig) -> SweepResult:
    """Evaluate every checkpoint against the suite and the baseline; write the report. Raises TunebenchError."""
    from . import api
    from .suite import load_suite

    checkpoints = _resolve_checkpoints(config)
    loaded = load_suite(config.suite)
    suite = loaded.suite
    if config.model not in suite.models:
        raise loaded.error(("models",), f"sweep model {config.model!r} is not in the suite"
                           f"{did_you_mean(config.model, suite.models)}", f"models: {', '.join(suite.models)}")
    baseline = suite.baseline_model
    if baseline == config.model:
        raise ConfigError(f"the swept model {config.model!r} is the suite's baseline",
                          hint="sweep the candidate; the baseline is what each checkpoint is compared with")
    for metric in (*config.retention, *([config.best_metric] if config.best_metric else [])):
        if metric not in suite.metrics:
            raise ConfigError(f"unknown metric {metric!r}{did_you_mean(metric, suite.metrics)}",
                              hint=f"metrics in {loaded.path.name}: {', '.join(suite.metrics)}")
    best_metric = config.best_metric or next(iter(suite.metrics))

    points: list[SweepPoint] = []
    directions: dict[str, bool] = {}
    for i, ckpt in enumerate(checkpoints):
        if config.progress is not None:
            config.progress(i, len(checkpoints), ckpt)
        run_config = api.RunConfig(
            suite=config.suite, db=config.db, write_report=config.write_run_reports, selection=config.selection,
            overrides=(f"{config.model}.{config.setting}={json.dumps(str(ckpt.path))}",), cache_dir=config.cache_dir)
        try:
            result = api.run(run_config)
        except RunIncompleteError as exc:
            points.append(SweepPoint(ckpt, _run_id_in(str(exc)), {}, {}, error=str(exc)))
            continue
        summary = result.summary
        for name, info in summary.metrics.items():
            directions[name] = bool(info.get("higher_is_better", True))
        values = {m: _value(summary.aggregates.get(config.model, {}).get(m)) for m in suite.metrics}
        base = {m: _value(summary.aggregates.get(baseline, {}).get(m)) for m in suite.metrics}
        failures = retention_failures(values, base, config.retention, config.retention_delta, directions,
                                      result.gates)
        points.append(SweepPoint(ckpt, result.run_id, values, base, failures,
                                 requests={"sent": result.requests.sent, "cached": result.requests.cached}))

    for metric in suite.metrics:
        directions.setdefault(metric, True)
    best = _best(points, best_metric, directions[best_metric])
    sweep = SweepResult(suite.name, config.model, baseline, directions, best_metric, points, best)
    db = config.db or api.default_db()
    path = config.report or db.parent / f"{suite.name}-sweep-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.html"
    sweep.report = write_report(sweep, path, retention=config.retention, delta=config.retention_delta)
    return sweep


def _value(agg: Any) -> float | None:
    value = None if agg is None else agg.value
    return None if value is None or not math.isfinite(value) else float(value)


def _run_id_in(message: str) -> str | None:
    found = re.search(r"\(run ([^)\s]+)\)", message)
    return found.group(1) if found else None


def _best(points: list[SweepPoint], metric: str, higher: bool) -> SweepPoint | None:
    eligible = [p for p in points if p.error is None and not p.retention_failures and p.values.get(metric) is not None]
    if not eligible:
        return None
    # ties go to the earliest step: the cheaper checkpoint with the same score
    return max(eligible, key=lambda p: ((p.values[metric] if higher else -p.values[metric]), -p.checkpoint.step))


# ---------------------------------------------------------------- report

_W, _H, _L, _R, _T, _B, _INSET = 640, 260, 64, 20, 16, 40, 24


def _nice_ticks(lo: float, hi: float, most: int = 6) -> tuple[float, float, list[float]]:
    """Round tick values (1, 2, 2.5 or 5 × 10^k apart) and the axis range they span."""
    raw = (hi - lo) / (most - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = round((last - first) / step)
    return first, last, [first + i * step for i in range(count + 1)]


def chart(sweep: SweepResult, metric: str, retention: Sequence[str], delta: float) -> dict[str, Any]:
    """Coordinates of one metric's chart (the template only draws them)."""
    pts = [p for p in sweep.points if p.values.get(metric) is not None]
    steps = [p.checkpoint.step for p in sweep.points]
    base_vals = [p.base_values.get(metric) for p in sweep.points if p.base_values.get(metric) is not None]
    base = base_vals[0] if base_vals else None
    threshold = None
    if metric in retention and base is not None:
        threshold = base - delta if sweep.metrics.get(metric, True) else base + delta
    ys = [p.values[metric] for p in pts] + [v for v in (base, threshold) if v is not None]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.1, 0.5)
    lo, hi, ticks = _nice_ticks(lo - pad, hi + pad)
    x0, x1 = (min(steps), max(steps)) if steps else (0, 1)

    def x(step: float) -> float:  # inset so the first and last points clear the axis labels
        return _L + _INSET + (_W - _L - _R - 2 * _INSET) * (0.5 if x1 == x0 else (step - x0) / (x1 - x0))

    def y(v: float) -> float:
        return _T + (_H - _T - _B) * (1 - (v - lo) / (hi - lo))

    circles = []
    for p in pts:
        v = p.values[metric]
        circles.append({"x": round(x(p.checkpoint.step), 2), "y": round(y(v), 2), "step": p.checkpoint.step,
                        "value": v, "best": p is sweep.best, "failed": bool(p.retention_failures),
                        "title": f"step {p.checkpoint.step}: {v:.4g}" + (" (best)" if p is sweep.best else "")
                        + ("; retention failed: " + "; ".join(p.retention_failures) if p.retention_failures else "")})
    return {
        "metric": metric, "width": _W, "height": _H, "left": _L, "right": _W - _R, "top": _T, "bottom": _H - _B,
        "line": " ".join(f"{c['x']},{c['y']}" for c in circles), "points": circles,
        "base": None if base is None else {"y": round(y(base), 2), "value": base},
        "threshold": None if threshold is None else {"y": round(y(threshold), 2), "value": threshold},
        "yticks": [{"y": round(y(v), 2), "label": f"{v:.4g}"} for v in ticks],
        "xticks": [{"x": round(x(s), 2), "label": str(s)} for s in _xticks(sorted(set(steps)))],
        "higher_is_better": sweep.metrics.get(metric, True),
    }


def _xticks(steps: list[int], most: int = 12) -> list[int]:
    if len(steps) <= most:
        return steps
    stride = math.ceil(len(steps) / most)
    return steps[::stride] + ([steps[-1]] if (len(steps) - 1) % stride else [])


def write_report(sweep: SweepResult, path: Path, *, retention: Sequence[str] = (), delta: float = 0.0) -> Path:
    """Render the sweep report (self-contained HTML, autoescaped) to ``path``."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    html = env.from_string(_TEMPLATE).render(
        sweep=sweep, charts=[chart(sweep, m, retention, delta) for m in sweep.metrics], retention=list(retention),
        delta=delta, generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        fmt=lambda v: "–" if v is None else f"{v:.4g}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>{{ sweep.suite_name }} · checkpoint sweep</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1d2330;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.05rem;margin:1.6rem 0 .3rem}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #dde1e8;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#667}.bad{color:#b3261e}
.good{color:#1b7a3a}svg{max-width:100%;height:auto;background:#fafbfc;border:1px solid #e3e6ec}
.grid{stroke:#e3e6ec}.axis{fill:#667;font-size:11px}.series{fill:none;stroke:#2f5bd3;stroke-width:2}
.point{fill:#2f5bd3}.point.best{fill:#1b7a3a}.point.retention-fail{fill:#b3261e}
.ring{fill:none;stroke:#1b7a3a;stroke-width:2}.cross{stroke:#b3261e;stroke-width:2}
.baseline{stroke:#888;stroke-dasharray:6 4}.threshold{stroke:#b3261e;stroke-dasharray:2 3}
</style>
</head>
<body>
<h1>{{ sweep.suite_name }}: checkpoint sweep of <code>{{ sweep.model }}</code></h1>
<p class="muted">{{ sweep.points|length }} checkpoints against baseline <code>{{ sweep.baseline }}</code>.
Best by <code>{{ sweep.best_metric }}</code>:
{% if sweep.best %}<strong class="good" id="best">step {{ sweep.best.checkpoint.step }}</strong>
({{ fmt(sweep.best.values[sweep.best_metric]) }}){% else %}<strong class="bad" id="best">none</strong>
(no completed checkpoint passes every retention check){% endif %}.
{% if retention %}Retention: {{ retention|join(", ") }} may fall at most {{ delta }} below the baseline. {% endif %}
Generated {{ generated }}.</p>
<p class="muted">Ringed green point: best checkpoint. Red cross: a retention check failed at that step (hover for
why). Dashed line: the baseline; dotted red line: the retention floor.</p>
{% for c in charts %}
<h2>{{ c.metric }} <span class="muted">({{ "higher" if c.higher_is_better else "lower" }} is better)</span></h2>
<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-metric="{{ c.metric }}"
     viewBox="0 0 {{ c.width }} {{ c.height }}" role="img" aria-label="{{ c.metric }} by training step">
{% for t in c.yticks %}
<line class="grid" x1="{{ c.left }}" x2="{{ c.right }}" y1="{{ t.y }}" y2="{{ t.y }}"/>
<text class="axis" x="{{ c.left - 6 }}" y="{{ t.y + 4 }}" text-anchor="end">{{ t.label }}</text>
{% endfor %}
{% for t in c.xticks %}
<text class="axis" x="{{ t.x }}" y="{{ c.bottom + 16 }}" text-anchor="middle">{{ t.label }}</text>
{% endfor %}
<text class="axis" x="{{ (c.left + c.right) / 2 }}" y="{{ c.height - 6 }}" text-anchor="middle">training step</text>
{% if c.base %}
<line class="baseline" x1="{{ c.left }}" x2="{{ c.right }}" y1="{{ c.base.y }}" y2="{{ c.base.y }}">
<title>baseline {{ sweep.baseline }}: {{ fmt(c.base.value) }}</title></line>
<text class="axis" x="{{ c.right - 4 }}" y="{{ c.base.y - 4 }}" text-anchor="end">baseline</text>
{% endif %}
{% if c.threshold %}
<line class="threshold" x1="{{ c.left }}" x2="{{ c.right }}" y1="{{ c.threshold.y }}" y2="{{ c.threshold.y }}">
<title>retention floor {{ fmt(c.threshold.value) }}</title></line>
{% endif %}
{% if c.points|length > 1 %}<polyline class="series" points="{{ c.line }}"/>
{% endif %}
{% for p in c.points %}
{% if p.best %}<circle class="ring" cx="{{ p.x }}" cy="{{ p.y }}" r="9"/>
{% endif %}
<circle class="point{{ ' best' if p.best }}{{ ' retention-fail' if p.failed }}" cx="{{ p.x }}" cy="{{ p.y }}"
        r="5" data-step="{{ p.step }}" data-value="{{ p.value }}"><title>{{ p.title }}</title></circle>
{% if p.failed %}
<path class="cross" d="M{{ p.x - 7 }},{{ p.y - 7 }}L{{ p.x + 7 }},{{ p.y + 7 }}
                       M{{ p.x - 7 }},{{ p.y + 7 }}L{{ p.x + 7 }},{{ p.y - 7 }}"/>
{% endif %}
{% endfor %}
</svg>
{% endfor %}
<h2>Checkpoints</h2>
<table id="checkpoints">
<thead><tr><th>step</th><th>checkpoint</th><th>run</th>
{% for m in sweep.metrics %}<th>{{ m }}</th>{% endfor %}<th>status</th></tr></thead>
<tbody>
{% for p in sweep.points %}
<tr data-step="{{ p.checkpoint.step }}"><td class="num">{{ p.checkpoint.step }}</td>
<td><code>{{ p.checkpoint.path }}</code></td><td><code>{{ p.run_id or "–" }}</code></td>
{% for m in sweep.metrics %}
<td class="num">{{ fmt(p.values.get(m)) }} <span class="muted">/ {{ fmt(p.base_values.get(m)) }}</span></td>
{% endfor %}
<td class="status">
{% if p.error %}<span class="bad">error: {{ p.error }}</span>
{% elif p.retention_failures %}<span class="bad">retention failed: {{ p.retention_failures|join("; ") }}</span>
{% elif p is sameas sweep.best %}<span class="good">best</span>
{% else %}ok{% endif %}
</td></tr>
{% endfor %}
</tbody>
</table>
<p class="muted">Values: {{ sweep.model }} / baseline {{ sweep.baseline }} in the same run.</p>
</body>
</html>
"""
