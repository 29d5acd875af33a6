"""Typed factories: the shared mechanics behind ``@metric`` and ``@runner``.

A factory is a plain function whose keyword-only parameters are its YAML options, one to one. Its type hints and
defaults become a pydantic model with ``extra="forbid"``, so an unknown option is an error with "did you mean …"
and a wrong type is an error naming the option. A parameter named ``context`` is not an option: the host passes
what the factory needs from the run (suite directory, cache directory, …) through it.

Invariants: decorating checks the signature (a positional option is a ``TypeError`` at import of the plugin);
the options model is built on first use and once per factory, because building a pydantic model costs about
2 ms and a run uses a handful of the registered kinds.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_type_hints

if TYPE_CHECKING:
    import pydantic

__all__ = ["Factory", "did_you_mean", "options_model"]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when something close exists, else ``""``."""
    import difflib  # only error messages need it

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _option_parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters that are YAML options; a ``TypeError`` if one is not keyword-only."""
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "context"]
    for param in params:
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{fn.__qualname__}: option {param.name!r} must be keyword-only")
    return params


def options_model(fn: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    """Build the strict options model of a factory from its signature."""
    import pydantic

    hints = get_type_hints(fn)
    fields: dict[str, Any] = {}
    for param in _option_parameters(fn):
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    with warnings.catch_warnings():
        # An option may be named like a deprecated BaseModel method (json_schema's ``schema``); pydantic warns
        # that the field shadows it, which is noise here: options are read back by name, never called.
        warnings.filterwarnings("ignore", message='Field name ".*" shadows an attribute in parent "BaseModel"',
                                category=UserWarning)
        return pydantic.create_model(  # type: ignore[call-overload]
            f"{name}_options",
            __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            **fields,
        )


# One model per factory function, however many Factory records (one per registration) point at it.
_cached_options_model = functools.cache(options_model)


@dataclass(frozen=True)
class Factory:
    """A registered metric or runner kind."""

    kind: str
    """The name used in suites (``rouge``, ``openai``)."""
    fn: Callable[..., Any]
    description: str
    family: str = ""
    plugin: str = ""
    """The plugin (module or distribution) that registered it; filled in by the plugin host."""

    @property
    def options(self) -> type[pydantic.BaseModel]:
        """The strict options model (``extra="forbid"``) built from the factory's signature."""
        return _cached_options_model(self.fn, self.kind)

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
            _option_parameters(fn)
            setattr(fn, attribute, Factory(kind, fn, description, family))
            return fn

        return wrap

    return decorator
