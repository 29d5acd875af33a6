"""Typed factories: the shared mechanics behind ``@metric`` and ``@runner``.

A factory is a plain function whose keyword-only parameters are its YAML options, one to one. Its type hints and
defaults become a pydantic model with ``extra="forbid"``, so an unknown option is an error with "did you mean …"
and a wrong type is an error naming the option. A parameter named ``context`` is not an option: the host passes
what the factory needs from the run (suite directory, cache directory, …) through it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import pydantic

__all__ = ["Factory", "did_you_mean", "options_model"]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when something close exists, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def options_model(fn: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    """Build the strict options model of a factory from its signature."""
    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.name == "context":
            continue
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{fn.__qualname__}: option {param.name!r} must be keyword-only")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    return pydantic.create_model(  # type: ignore[call-overload]
        f"{name}_options",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


@dataclass(frozen=True)
class Factory:
    """A registered metric or runner kind."""

    kind: str
    """The name used in suites (``rouge``, ``openai``)."""
    fn: Callable[..., Any]
    description: str
    family: str = ""
    options: type[pydantic.BaseModel] = field(default=pydantic.BaseModel)
    plugin: str = ""
    """The plugin (module or distribution) that registered it; filled in by the plugin host."""

    @property
    def wants_context(self) -> bool:
        return "context" in inspect.signature(self.fn).parameters

    def build(self, options: dict[str, Any], context: Any = None) -> Any:
        """Validate ``options`` (raises ``pydantic.ValidationError``) and call the factory."""
        validated = self.options.model_validate(options)
        kwargs = {k: getattr(validated, k) for k in type(validated).model_fields}
        if self.wants_context:
            kwargs["context"] = context
        return self.fn(**kwargs)


def make_decorator(attribute: str) -> Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]:
    def decorator(kind: str, *, description: str, family: str = "") -> Callable[..., Any]:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            setattr(fn, attribute, Factory(kind, fn, description, family, options_model(fn, kind)))
            return fn

        return wrap

    return decorator
