"""Plan: a loaded suite × selected cases → configured runners, metrics and the jobs to run.

Invariants: every runner and metric option is validated here, with errors pointing at the suite's line; the
cache key of a job covers the runner's full identity (kind, endpoint, model, every generation parameter), the
exact rendered messages and the repeat index -- and nothing secret; command-line overrides are applied to the
suite's model settings before validation and recorded with the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from .cases import CaseSet
from .errors import ConfigError, PluginError
from .metrics import Metric, MetricContext
from .plugins import get_metric, get_runner
from .prompt import PromptBuilder
from .records import Case
from .runners import Runner, RunnerContext
from .suite import LoadedSuite, ModelConfig, expand_env, validation_error

__all__ = ["Job", "ModelPlan", "Plan", "build_plan", "parse_override"]


@dataclass(frozen=True, slots=True)
class Job:
    """One request to make: a case, a model, a repeat."""

    case: Case
    model: str
    repeat: int
    messages: tuple[dict[str, str], ...]
    key: str
    """Response-cache key."""


@dataclass
class ModelPlan:
    """A configured model."""

    name: str
    config: ModelConfig
    runner: Runner
    identity: dict[str, Any]
    identity_hash: str


@dataclass
class Plan:
    """Everything a run needs, validated."""

    loaded: LoadedSuite
    cases: CaseSet | list[Case]
    """The selected cases, iterated again by each stage that needs them (a streamed set is not held)."""
    models: dict[str, ModelPlan]
    metrics: dict[str, Metric]
    prompts: PromptBuilder
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    _checked: bool = False

    def render_all(self) -> None:
        """Render every case's prompt once, so template errors surface before anything runs or is written.

        The messages are not kept: jobs render again as they are issued, so memory stays flat as cases grow.
        """
        if not self._checked:
            for case in self.cases:
                self.prompts.render(case)
            self._checked = True

    def jobs_for(self, model: str) -> Iterator[Job]:
        """One model's jobs, in case order, rendered as they are issued."""
        m = self.models[model]
        for case in self.cases:
            messages = self.prompts.render(case)
            blob = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            for r in range(m.config.repeats):
                key = hashlib.sha256(f"{m.identity_hash}\0{r}\0{blob}".encode()).hexdigest()
                yield Job(case, m.name, r, messages, key)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``tuned.model=ft:abc`` → ("tuned", "model", "ft:abc"); the value is parsed as a YAML scalar."""
    target, sep, raw = text.partition("=")
    model, dot, key = target.partition(".")
    if not sep or not dot or not model or not key:
        raise ConfigError(f"bad override {text!r}", hint="write MODEL.SETTING=VALUE, e.g. tuned.model=ft:abc")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (int, float, bool)) and key in ("model", "base_url", "path"):
        value = raw  # a model name like 7 or a path stays text
    return model, key, value


def _stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_plan(loaded: LoadedSuite, cases: CaseSet | Sequence[Case], *, overrides: Sequence[str] = (),
               cache_dir: Path | None = None) -> Plan:
    """Validate runners and metrics, apply overrides, and compile the prompt."""
    suite = loaded.suite
    applied: dict[str, dict[str, Any]] = {}
    for text in overrides:
        model, key, value = parse_override(text)
        if model not in suite.models:
            raise ConfigError(f"override {text!r} names unknown model {model!r}",
                              hint=f"models in {loaded.path.name}: {', '.join(suite.models)}")
        applied.setdefault(model, {})[key] = value

    models: dict[str, ModelPlan] = {}
    for name, config in suite.models.items():
        if name in applied:
            try:
                config = ModelConfig.model_validate({**config.model_dump(), **applied[name]})
            except pydantic.ValidationError as exc:
                raise ConfigError(f"override for {name}: {exc.errors()[0]['msg']}") from None
        try:
            factory = get_runner(config.runner)
        except PluginError as exc:
            raise loaded.error(("models", name, "runner"), str(exc)) from None
        options = expand_env(config.runner_options(), f"models.{name}", loaded.located, ("models", name))
        context = RunnerContext(model_name=name, suite_dir=loaded.dir, timeout_s=config.timeout_s,
                                concurrency=config.concurrency)
        try:
            runner = factory.build(options, context)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, loaded.located, factory.options, ("models", name)) from None
        except ConfigError as exc:
            if exc.path is None:
                raise loaded.error(("models", name), f"model {name!r}: {exc}") from None
            raise
        identity = runner.identity()
        models[name] = ModelPlan(name, config, runner, identity, _stable_hash(identity))

    metric_context = MetricContext(suite_dir=loaded.dir, cache_dir=cache_dir, suite_vars=dict(suite.vars),
                                   runners={n: m.runner for n, m in models.items()})
    metrics: dict[str, Metric] = {}
    for name, raw in suite.metrics.items():
        options = dict(raw or {})
        kind = options.pop("type", name)
        try:
            factory = get_metric(kind)
        except PluginError as exc:
            loc = ("metrics", name, "type") if "type" in (raw or {}) else ("metrics", name)
            raise loaded.error(loc, str(exc)) from None
        try:
            metric = factory.build(options, metric_context)
        except pydantic.ValidationError as exc:
            raise validation_error(exc, loaded.located, factory.options, ("metrics", name)) from None
        except ConfigError as exc:
            if exc.path is None:
                raise loaded.error(("metrics", name), f"metric {name!r}: {exc}") from None
            raise
        metric.name = name
        metrics[name] = metric

    return Plan(loaded, cases if isinstance(cases, CaseSet) else list(cases), models, metrics,
                PromptBuilder(loaded), applied)
