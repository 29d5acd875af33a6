"""Prompt rendering against Jinja2 itself: the one-variable shortcut renders exactly what Jinja2 renders."""

from __future__ import annotations

import json

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from tunebench.cases import load_cases
from tunebench.errors import ConfigError
from tunebench.prompt import PromptBuilder
from tunebench.suite import load_suite

VALUES = {"n": 3, "f": 1.5, "nothing": None, "flag": True, "items": [1, "a", None], "table": {"k": "v"},
          "text": "  <b>untouched</b> {{ not a template }}\n", "empty": ""}
TEMPLATES = ["{{ n }}", "{{f}}", "{{   nothing   }}", "{{ flag }}", "{{ items }}", "{{ table }}", "{{ text }}",
             "{{ empty }}", "{{ input }}", "{{ id }}", "{{ tags }}", "{{ suite_var }}",
             "{{ text }}\n", " {{ n }}", "{{ n }}{{ f }}", "{{ n | string }}", "{{- n -}}"]


def _suite(write, contents: list[str]):
    messages = "".join(f"    - role: user\n      content: {json.dumps(c)}\n" for c in contents)
    return load_suite(write("suite.yaml", (
        "name: p\nmodels:\n  base: {runner: recorded, path: o.jsonl}\nvars: {suite_var: 7}\n"
        f"prompt:\n  messages:\n{messages}"
        "cases:\n  - {id: c1, input: \"What is a <deductible>?\", expected: x, tags: [a, b], vars: "
        + json.dumps(VALUES) + "}\n"
        "metrics:\n  exact: {type: exact_match}\n")))


def test_every_template_renders_as_jinja2_renders_it(write):
    loaded = _suite(write, TEMPLATES)
    (case,) = load_cases(loaded)
    builder = PromptBuilder(loaded)
    assert builder._variable  # the shortcut is taken for the one-variable templates
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
    variables = builder.variables(case)
    expected = [env.from_string(t).render(variables) for t in TEMPLATES]
    assert [m["content"] for m in builder.render(case)] == expected


@pytest.mark.parametrize("template", ["{{ nope }}", "{{nope}}", "Q: {{ nope }}"])
def test_an_undefined_variable_is_the_same_error_with_or_without_the_shortcut(write, template):
    loaded = _suite(write, [template])
    (case,) = load_cases(loaded)
    with pytest.raises(ConfigError) as info:
        PromptBuilder(loaded).render(case)
    assert "'nope' is undefined in prompt.messages.0.content for case 'c1'" in str(info.value)
    assert "available variables:" in str(info.value) and "input" in str(info.value)
    assert info.value.path.endswith("suite.yaml") and info.value.line is not None
