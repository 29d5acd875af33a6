"""Prompt rendering: a case → the chat messages sent to a model.

Invariants: templates are Jinja2 in a sandbox with StrictUndefined, so an undefined variable is an error naming
the suite file, the template's line and the case, never an empty string; prompts are plain text (no HTML
autoescaping); the golden output is never a template variable (it would leak the answer).
"""

from __future__ import annotations

import re
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigError
from .records import Case
from .suite import LoadedSuite

__all__ = ["PromptBuilder"]

_DEFAULT_TEMPLATE = "{{ input }}"
_ONE_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""A template that is one variable and nothing else (the default ``{{ input }}``): rendered as ``str(value)``,
which is what Jinja2 renders for it, without Jinja2's per-render context (~10 µs a case)."""


class PromptBuilder:
    """Compiles a suite's prompt once and renders it per case."""

    def __init__(self, loaded: LoadedSuite) -> None:
        self.loaded = loaded
        prompt = loaded.suite.prompt
        self.env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                                        autoescape=False)
        self.parts: list[tuple[str, jinja2.Template, tuple[str | int, ...]]] = []
        self._constant: dict[int, str] = {}
        self._variable: dict[int, str] = {}
        if prompt.messages is not None:
            for i, m in enumerate(prompt.messages):
                self.parts.append((m.role, self._compile(m.content, ("prompt", "messages", i, "content")),
                                   ("prompt", "messages", i, "content")))
        else:
            if prompt.system is not None:
                self.parts.append(("system", self._compile(prompt.system, ("prompt", "system")),
                                   ("prompt", "system")))
            self.parts.append(("user", self._compile(prompt.template or _DEFAULT_TEMPLATE,
                                                     ("prompt", "template")), ("prompt", "template")))
        self.explicit = prompt.messages is not None or prompt.template is not None

    def _compile(self, source: str, loc: tuple[str | int, ...]) -> jinja2.Template:
        try:
            template = self.env.from_string(source)
            if not any(mark in source for mark in ("{{", "{%", "{#")):  # plain text: render it once, not per case
                self._constant[id(template)] = template.render()
            elif (one := _ONE_VARIABLE.fullmatch(source)) is not None:
                self._variable[id(template)] = one.group(1)
            return template
        except jinja2.TemplateSyntaxError as exc:
            line, col = self.loaded.located.position(loc)
            raise ConfigError(f"template syntax error in {'.'.join(map(str, loc))}: {exc.message}",
                              path=str(self.loaded.path), line=(line or 0) + (exc.lineno or 1) - 1 or None,
                              column=col) from None

    def variables(self, case: Case) -> dict[str, Any]:
        """Template variables: suite vars, then the case's vars, then id/input/tags."""
        return {**self.loaded.suite.vars, **case.vars, "id": case.id, "input": case.input, "tags": list(case.tags)}

    def render(self, case: Case) -> tuple[dict[str, str], ...]:
        """The messages for ``case``; chat-format cases keep their own conversation unless a template is set."""
        variables = self.variables(case)
        if case.messages is not None and not self.explicit:
            messages = list(case.messages)
            system = [p for p in self.parts if p[0] == "system"]
            if system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": self._render(system[0], case, variables)})
            return tuple(messages)
        return tuple({"role": role, "content": self._render((role, t, loc), case, variables)}
                     for role, t, loc in self.parts)

    def _render(self, part: tuple[str, jinja2.Template, tuple[str | int, ...]], case: Case,
                variables: dict[str, Any]) -> str:
        _, template, loc = part
        constant = self._constant.get(id(template))
        if constant is not None:
            return constant
        name = self._variable.get(id(template))
        if name is not None and name in variables:  # otherwise Jinja2 says what is undefined
            return str(variables[name])
        try:
            return template.render(variables)
        except jinja2.UndefinedError as exc:
            line, col = self.loaded.located.position(loc)
            available = ", ".join(sorted(variables))
            raise ConfigError(f"{exc.message} in {'.'.join(map(str, loc))} for case {case.id!r}",
                              path=str(self.loaded.path), line=line, column=col,
                              hint=f"available variables: {available}") from None
        except jinja2.TemplateError as exc:
            line, col = self.loaded.located.position(loc)
            raise ConfigError(f"template error in {'.'.join(map(str, loc))} for case {case.id!r}: {exc}",
                              path=str(self.loaded.path), line=line, column=col) from None
