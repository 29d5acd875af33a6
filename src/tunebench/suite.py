"""Suite: the YAML file → a validated :class:`Suite`.

Invariants: every user-written mapping is strict (``extra="forbid"``), so a misspelled key is an error naming
file, line and column with "did you mean …"; model settings beyond the common ones are validated later against
the runner's own options (see ``plan``); ``${VAR}`` references are expanded only in model settings, never
written back; nothing here calls a model or reads golden files (``cases`` does that).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .factory import did_you_mean
from .yamlfile import Located, load_yaml

__all__ = ["CasesFile", "InlineCase", "ModelConfig", "PromptConfig", "Suite", "expand_env", "load_suite"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    """Chat role."""
    content: str
    """A Jinja2 template rendered per case (undefined variables are errors)."""


class PromptConfig(Strict):
    """How a case becomes the model's input."""

    system: str | None = None
    """System prompt (a Jinja2 template), sent first."""
    template: str | None = None
    """User message (a Jinja2 template); default ``{{ input }}``."""
    messages: list[Message] | None = None
    """A full list of chat messages instead of system + template."""

    @model_validator(mode="after")
    def _one_form(self) -> PromptConfig:
        if self.messages is not None and (self.template is not None or self.system is not None):
            raise ValueError("give either 'messages' or 'system'/'template', not both")
        return self


class FieldMap(Strict):
    """Which fields of a golden file hold what."""

    id: str | None = "id"
    """Field with the case id; when absent from a row, the id is ``<file stem>:<line>``."""
    input: str = "input"
    """Field with the model input (the template variable ``input``)."""
    expected: str = "expected"
    """Field with the golden output."""
    tags: str | None = "tags"
    """Field with a list of tags (optional)."""
    tag_fields: list[str] = Field(default_factory=list)
    """Fields (dotted paths like ``meta.kind``) whose values become tags ``kind:faq``."""
    vars: list[str] | Literal["all"] = "all"
    """Other fields passed to the template and metrics; ``all`` passes every remaining field."""


class CasesFile(Strict):
    """Golden cases read from a file, relative to the suite."""

    path: str
    """JSONL, JSON, CSV or Parquet file (or a Hugging Face dataset name with ``format: hf``)."""
    format: Literal["auto", "chat", "jsonl", "csv", "parquet", "hf"] = "auto"
    """``auto`` picks by extension, and JSONL rows with ``messages`` are read as OpenAI chat fine-tuning data."""
    fields: FieldMap = Field(default_factory=FieldMap)
    """Field mapping for JSONL/CSV/Parquet."""
    split: str | None = None
    """Dataset split, for ``format: hf``."""


class InlineCase(Strict):
    """A golden case written in the suite."""

    id: str | None = None
    input: str
    expected: str
    tags: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(BaseModel):
    """A model to evaluate: common settings here, the rest are the runner's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    runner: str
    """Runner kind: ``openai``, ``recorded``, ``command``, ``python``, or a plugin's."""
    concurrency: int = Field(default=8, ge=1, le=1024)
    """Requests in flight for this model."""
    max_attempts: int = Field(default=4, ge=1, le=20)
    """Tries per case on transient failures (429, 5xx, timeouts, dropped connections)."""
    timeout_s: float = Field(default=60.0, gt=0)
    """Per-request timeout in seconds."""
    backoff_s: float = Field(default=0.5, ge=0)
    """First retry delay; doubles per attempt, with jitter, capped by ``max_backoff_s``."""
    max_backoff_s: float = Field(default=30.0, ge=0)
    """Longest wait between attempts (also caps a server's Retry-After)."""
    repeats: int = Field(default=1, ge=1, le=100)
    """Times each case is asked (for unstable-output detection)."""

    def runner_options(self) -> dict[str, Any]:
        """The settings that belong to the runner."""
        return dict(self.model_extra or {})


class _Gate(Strict):
    name: str
    """Shown in the verdict, the report and as the pytest item name."""


class FloorGate(_Gate):
    """An absolute bound on a model's aggregate: ``tuned rougeL ≥ 0.40``."""

    kind: Literal["floor"] = "floor"
    metric: str
    min: float | None = None
    """The aggregate must be at least this (for higher-is-better metrics)."""
    max: float | None = None
    """The aggregate must be at most this (latency, cost, TER)."""
    model: str | None = None
    """Which model; default the candidate."""


class ImprovementGate(_Gate):
    """The candidate beats the baseline on a metric."""

    kind: Literal["improvement"]
    metric: str
    min_delta: float = 0.0
    """The mean per-case improvement must exceed this."""
    significant: bool = False
    """Also require the 95% paired interval's lower bound (in the better direction) above ``min_delta``."""


class NonInferiorityGate(_Gate):
    """The candidate is not worse than the baseline by more than ``margin``, with 95% confidence."""

    kind: Literal["non_inferiority"]
    metric: str
    margin: float = Field(gt=0)
    """δ: the largest acceptable loss, in the metric's units."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class RegressionsGate(_Gate):
    """At most ``max`` cases flip from pass (baseline) to fail (candidate)."""

    kind: Literal["max_regressions"]
    metric: str
    max: int = Field(default=0, ge=0)
    tag: str | None = None
    """Count only cases with this tag (e.g. ``critical``)."""


class ErrorRateGate(_Gate):
    """At most this share of a model's outputs may be errors."""

    kind: Literal["max_error_rate"]
    max: float = Field(ge=0, le=1)
    model: str | None = None
    """Which model; default the candidate."""


Gate = Annotated[FloorGate | ImprovementGate | NonInferiorityGate | RegressionsGate | ErrorRateGate,
                 Field(discriminator="kind")]


class Suite(Strict):
    """A suite: golden cases, the models to compare, the prompt, and the metrics."""

    name: str
    """Short name; runs are grouped by it."""
    use_case: str | None = None
    """What the model is for (``insurance_qa``, ``support_intent``, …)."""
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    models: dict[str, ModelConfig]
    """Models by name; usually ``base`` and ``tuned``."""
    baseline: str | None = None
    """The model others are compared with; default ``base`` if present, else the first."""
    candidate: str | None = None
    """The model being promoted; default ``tuned`` if present, else the second."""
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    cases: list[InlineCase] | CasesFile
    """Inline cases, or ``{path: …}`` to a golden file."""
    vars: dict[str, Any] = Field(default_factory=dict)
    """Suite-level variables for templates and metrics (``labels``, ``prices``, …)."""
    metrics: dict[str, dict[str, Any]]
    """Metrics by name; ``type`` gives the kind (default: the name), the other keys are its options."""
    gates: list[Gate] = Field(default_factory=list)
    """Promotion gates, evaluated after every run; a failed gate makes ``tunebench run`` exit 1."""

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not v:
            raise ValueError("name at least one model")
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"model name {name!r} may only use letters, digits, '_', '.', '-'")
        return v

    @field_validator("metrics")
    @classmethod
    def _some_metrics(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("name at least one metric")
        return v

    @model_validator(mode="after")
    def _roles(self) -> Suite:
        for role in ("baseline", "candidate"):
            name = getattr(self, role)
            if name is not None and name not in self.models:
                raise ValueError(f"{role} {name!r} is not one of the models ({', '.join(self.models)})")
        names = set()
        for gate in self.gates:
            if gate.name in names:
                raise ValueError(f"two gates are named {gate.name!r}")
            names.add(gate.name)
            metric = getattr(gate, "metric", None)
            if metric is not None and metric not in self.metrics:
                raise ValueError(f"gate {gate.name!r} names unknown metric {metric!r}"
                                 f"{did_you_mean(metric, self.metrics)}; metrics: {', '.join(self.metrics)}")
            model = getattr(gate, "model", None)
            if model is not None and model not in self.models:
                raise ValueError(f"gate {gate.name!r} names unknown model {model!r}")
        return self

    @property
    def baseline_model(self) -> str:
        if self.baseline:
            return self.baseline
        return "base" if "base" in self.models else next(iter(self.models))

    @property
    def candidate_model(self) -> str | None:
        if self.candidate:
            return self.candidate
        if "tuned" in self.models and self.baseline_model != "tuned":
            return "tuned"
        others = [m for m in self.models if m != self.baseline_model]
        return others[0] if others else None


class LoadedSuite:
    """A validated suite with its source file, positions (for later errors) and content hash."""

    def __init__(self, suite: Suite, located: Located) -> None:
        self.suite = suite
        self.located = located
        self.path = located.path
        self.dir = located.path.parent
        self.hash = hashlib.sha256(located.text.encode()).hexdigest()

    def error(self, loc: tuple[str | int, ...], message: str, hint: str | None = None) -> ConfigError:
        return self.located.error(loc, message, hint)


def load_suite(path: str | Path) -> LoadedSuite:
    """Read and validate a suite file; any problem is a ConfigError naming file, line and column."""
    located = load_yaml(Path(path))
    if not isinstance(located.data, dict):
        raise located.error((), "a suite must be a mapping (name:, models:, cases:, metrics:)")
    try:
        suite = Suite.model_validate(located.data)
    except pydantic.ValidationError as exc:
        raise validation_error(exc, located, Suite) from None
    return LoadedSuite(suite, located)


def validation_error(exc: pydantic.ValidationError, located: Located, model: type[BaseModel] | None,
                     prefix: tuple[str | int, ...] = ()) -> ConfigError:
    """Turn pydantic's errors into one ConfigError pointing at the first problem's position."""
    problems = []
    first_loc: tuple[str | int, ...] | None = None
    errors = exc.errors()
    # A union (inline list | file mapping) reports a wrong-type error for the branch the user did not write.
    specific = [e for e in errors if e["type"] not in _BRANCH_TYPES]
    errors = sorted(specific or errors, key=lambda e: e["type"] != "extra_forbidden")
    for err in errors:
        loc = prefix + tuple(_clean_loc(err["loc"]))
        if first_loc is None:
            first_loc = loc
        where = ".".join(str(p) for p in loc) or "(top level)"
        line, col = located.position(loc)
        at = f"line {line}: " if line is not None and len(problems) else ""
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            known = _known_fields(model, tuple(_clean_loc(err["loc"]))[:-1])
            hint = did_you_mean(key, known)
            allowed = f"; allowed: {', '.join(known)}" if known and not hint else ""
            problems.append(f"{at}unknown key {key!r} in {'.'.join(str(p) for p in loc[:-1]) or 'suite'}"
                            f"{hint}{allowed}")
        elif err["type"] == "missing":
            problems.append(f"{at}missing required key {where!r}")
        else:
            problems.append(f"{at}{where}: {err['msg']}")
    line, col = located.position(first_loc or ())
    return ConfigError("; ".join(problems), path=str(located.path), line=line, column=col)


_BRANCH_TYPES = {"model_type", "list_type", "dict_type", "model_attributes_type"}


def _clean_loc(loc: tuple[Any, ...]) -> list[str | int]:
    # pydantic inserts union-member names ('list[InlineCase]', 'CasesFile') into locations; drop them
    return [p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or "[" in p))]


def _known_fields(model: type[BaseModel] | None, loc: tuple[str | int, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_of(field.annotation)
    return list(getattr(current, "model_fields", {}) or [])


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str, located: Located | None = None,
               loc: tuple[str | int, ...] = (), environ: dict[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in strings (recursively); an unset VAR without default errors."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            msg = f"{where} uses ${{{name}}}, which is not set"
            hint = f"export {name}=… or write ${{{name}:-default}}"
            if located is not None:
                raise located.error(loc, msg, hint)
            raise ConfigError(msg, hint=hint)
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, where, located, (*loc, k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where, located, (*loc, i), environ) for i, v in enumerate(value)]
    return value
