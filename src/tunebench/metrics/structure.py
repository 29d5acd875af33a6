"""Format metrics: is the output valid JSON, does it match a JSON Schema, is it the right length?

Invariants:
- an output that is not valid JSON is a *failed* case (value 0.0, ``passed`` False, the parse error with its
  line and column in ``details``), never an unscorable one: the model was asked for JSON and did not give it.
- JSON means RFC 8259: ``NaN``/``Infinity`` (which Python's parser accepts) are rejected. With ``allow_fence``
  (the default) an output that is one Markdown code fence (```` ```json … ``` ````, surrounding whitespace
  allowed) is judged on the fenced text; prose around a fence is not JSON.
- ``json_schema`` resolves a schema path against the suite directory, checks the schema itself when the metric
  is built (a broken schema is a ConfigError, not a thousand failed cases), and lists at most
  ``_MAX_ERRORS`` validation errors per case, each with jsonschema's JSON path (``$.items[2].price``).
- ``length`` has no direction: its value is the length, ``passed`` says whether it is within ``min``/``max``,
  and the pass rate is the headline. ``higher_is_better`` is True only because the attribute must be set.
- the ``jsonschema`` package is imported when a ``json_schema`` metric is built, never at import time.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..records import Aggregate, Sample, Score
from ._base import Metric, MetricContext, metric

__all__ = ["JsonSchema", "JsonValid", "Length", "json_schema", "json_valid", "length", "parse_json"]

_FENCE = re.compile(r"\A\s*```[ \t]*(?:json|JSON|json5|javascript)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)
_MAX_ERRORS = 5
_SHOWN = 200  # characters of an untrusted value or message kept in details


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str, *, allow_fence: bool) -> tuple[Any, dict[str, Any] | None]:
    """(value, None) or (None, facts about the parse error: message, line, column, fenced)."""
    fenced = False
    if allow_fence:
        m = _FENCE.match(text)
        if m is not None:
            text, fenced = m.group(1), True
    if not text.strip():
        return None, {"message": "empty output", "line": None, "column": None, "fenced": fenced}
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except json.JSONDecodeError as exc:
        return None, {"message": exc.msg, "line": exc.lineno, "column": exc.colno, "fenced": fenced}
    except (ValueError, RecursionError) as exc:  # NaN / Infinity, or nesting deeper than Python's stack
        return None, {"message": str(exc)[:_SHOWN] or type(exc).__name__, "line": None, "column": None,
                      "fenced": fenced}


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


class JsonValid(Metric):
    """1.0 when the output parses as JSON (and is an object, with ``require_object``)."""

    kind = "json_valid"

    def __init__(self, *, require_object: bool, allow_fence: bool) -> None:
        super().__init__(threshold=1.0)
        self.require_object, self.allow_fence = require_object, allow_fence

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        value, problem = parse_json(sample.output.text, allow_fence=self.allow_fence)
        if problem is not None:
            return Score(value=0.0, passed=False, explanation=_parse_explanation(problem), details=problem)
        details = {"type": _type_name(value)}
        if self.require_object and not isinstance(value, dict):
            return Score(value=0.0, passed=False, explanation=f"JSON {details['type']}, not an object",
                         details=details)
        return Score(value=1.0, passed=True, explanation=f"valid JSON {details['type']}", details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "require_object": self.require_object, "allow_fence": self.allow_fence}


def _parse_explanation(problem: dict[str, Any]) -> str:
    where = f" at line {problem['line']} column {problem['column']}" if problem.get("line") else ""
    return f"not valid JSON: {problem['message']}{where}"


class JsonSchema(Metric):
    """1.0 when the output is JSON that validates against the schema."""

    kind = "json_schema"

    def __init__(self, *, schema: dict[str, Any], schema_source: str, allow_fence: bool) -> None:
        super().__init__(threshold=1.0)
        import jsonschema

        self.schema, self.schema_source, self.allow_fence = schema, schema_source, allow_fence
        cls = jsonschema.validators.validator_for(schema)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"metric 'json_schema': the schema ({schema_source}) is not a valid JSON Schema: "
                              f"{exc.message[:_SHOWN]} at {exc.json_path}",
                              hint="fix the schema against the draft its $schema names (default 2020-12)") \
                from None
        self._validator = cls(schema)

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        value, problem = parse_json(sample.output.text, allow_fence=self.allow_fence)
        if problem is not None:
            return Score(value=0.0, passed=False, explanation=_parse_explanation(problem),
                         details={"parse_error": problem})
        # Sorted by location so the listed errors are stable from run to run.
        errors = sorted(self._validator.iter_errors(value), key=_error_order)
        if not errors:
            return Score(value=1.0, passed=True, explanation="matches the schema", details={"n_errors": 0})
        shown = [{"path": e.json_path, "message": e.message[:_SHOWN],
                  "validator": str(e.validator)} for e in errors[:_MAX_ERRORS]]
        explanation = f"{len(errors)} schema error{'s' if len(errors) > 1 else ''}; first at {shown[0]['path']}: " \
                      f"{shown[0]['message'][:80]}"
        return Score(value=0.0, passed=False, explanation=explanation,
                     details={"n_errors": len(errors), "errors": shown})

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "schema": self.schema_source, "allow_fence": self.allow_fence}


def _error_order(error: Any) -> tuple[Any, ...]:
    # Array indexes sort as numbers ($.b[2] before $.b[10]); ints and keys never compare with each other.
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in error.absolute_path), error.message


def _load_schema(ref: str, suite_dir: Path) -> dict[str, Any]:
    path = Path(ref)
    if not path.is_absolute():
        path = suite_dir / path
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        from ..yamlfile import load_yaml

        data = load_yaml(path).data
    elif suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("schema file not found", path=str(path),
                              hint="a relative schema path resolves against the suite file's directory") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read schema file: {exc}", path=str(path)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"schema is not valid JSON: {exc.msg}", path=str(path), line=exc.lineno,
                              column=exc.colno) from None
    else:
        raise ConfigError(f"unsupported schema file type {suffix or '(none)'!r}", path=str(path),
                          hint="use a .json, .yaml or .yml file, or write the schema inline")
    if not isinstance(data, (dict, bool)):
        raise ConfigError("a JSON Schema must be an object", path=str(path), line=1)
    return data  # type: ignore[return-value]


@metric("json_valid", description="1 when the output is valid JSON (optionally: an object), a ```json fence "
        "allowed", family="format")
def json_valid(*, require_object: bool = False, allow_fence: bool = True) -> JsonValid:
    """Valid JSON. ``require_object`` also demands a top-level object; ``allow_fence`` accepts an output that
    is exactly one Markdown code fence around the JSON."""
    return JsonValid(require_object=require_object, allow_fence=allow_fence)


# The option "schema" shadows pydantic's deprecated BaseModel.schema(); tunebench.factory silences that warning.
@metric("json_schema", description="1 when the output is JSON matching a JSON Schema (jsonschema); errors "
        "listed with their JSON paths", family="format")
def json_schema(
    *,
    schema: dict[str, Any] | str,
    allow_fence: bool = True,
    context: MetricContext | None = None,
) -> JsonSchema:
    """``schema`` is the schema inline, or a path to a .json/.yaml file relative to the suite file."""
    if isinstance(schema, str):
        suite_dir = context.suite_dir if context is not None else Path.cwd()
        return JsonSchema(schema=_load_schema(schema, suite_dir), schema_source=schema, allow_fence=allow_fence)
    return JsonSchema(schema=schema, schema_source="inline", allow_fence=allow_fence)


class Length(Metric):
    """The output's length in characters, words or tokens; passes within ``min``/``max``."""

    kind = "length"

    def __init__(self, *, unit: str, min: int | None, max: int | None) -> None:
        super().__init__(threshold=None)
        self.unit, self.min, self.max = unit, min, max

    def score(self, sample: Sample) -> Score:
        if sample.output.error is not None:
            return Score(value=None, error=f"model output failed: {sample.output.error}")
        text = sample.output.text
        if self.unit == "chars":
            n = len(unicodedata.normalize("NFC", text))  # "é" is one character however it was encoded
        elif self.unit == "words":
            n = len(text.split())
        elif sample.output.completion_tokens is None:
            return Score(value=None, error="no completion_tokens recorded for this output (the runner did not "
                         "report token usage); use unit: words or chars")
        else:
            n = sample.output.completion_tokens
        passed: bool | None = None
        why = ""
        if self.min is not None or self.max is not None:
            passed = True
            if self.min is not None and n < self.min:
                passed, why = False, f" < min {self.min}"
            if self.max is not None and n > self.max:
                passed, why = False, f" > max {self.max}"
        return Score(value=float(n), passed=passed, explanation=f"{n} {self.unit}{why}",
                     details={"length": n, "unit": self.unit})

    def aggregate(self, scores: Sequence[Score]) -> Aggregate:
        base = super().aggregate(scores)
        values = [s.value for s in scores if s.error is None and s.value is not None]
        if not values:
            return base
        details = {"unit": self.unit, "min": min(values), "max": max(values),
                   "median": statistics.median(values), "total": math.fsum(values),
                   "n_too_short": sum(1 for v in values if self.min is not None and v < self.min),
                   "n_too_long": sum(1 for v in values if self.max is not None and v > self.max)}
        return Aggregate(value=base.value, n=base.n, n_errors=base.n_errors, pass_rate=base.pass_rate,
                         details=details)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "unit": self.unit, "min": self.min, "max": self.max}


@metric("length", description="output length in chars, words or completion tokens; passes within min/max "
        "(the pass rate is the headline)", family="format")
def length(
    *,
    unit: Literal["chars", "words", "tokens"] = "words",
    min: int | None = None,  # shadows the builtin on purpose: the YAML options are called min and max
    max: int | None = None,
) -> Length:
    """Length of the output. ``chars`` counts Unicode characters (NFC), ``words`` whitespace-separated words,
    ``tokens`` the completion tokens the runner reported (an error where none were reported)."""
    for name, bound in (("min", min), ("max", max)):
        if bound is not None and bound < 0:
            raise ConfigError(f"metric 'length': {name} must be ≥ 0, got {bound}")
    if min is not None and max is not None and min > max:
        raise ConfigError(f"metric 'length': min ({min}) is greater than max ({max})", hint="swap them")
    return Length(unit=unit, min=min, max=max)


@hookimpl
def register_metrics(register):  # type: ignore[no-untyped-def]
    """Register the format metrics."""
    for factory in (json_valid, json_schema, length):
        register(factory)
