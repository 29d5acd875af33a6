"""The plugin host: loading every built-in plugin stays light, and options models are built on first use."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pydantic
import pytest

from tunebench import plugins
from tunebench.factory import Factory
from tunebench.metrics import metric

# Registering plugins needs none of these: each plugin module imports its heavy dependencies inside the
# function that uses them, and options models (pydantic) are built when a suite first uses a kind.
HEAVY = ("numpy", "scipy", "sklearn", "pandas", "pyarrow", "duckdb", "torch", "transformers",
         "sentence_transformers", "huggingface_hub", "datasets", "peft", "vllm", "rouge_score", "nltk",
         "sacrebleu", "jsonschema", "aiohttp", "httpx", "rich", "jinja2", "pydantic")

PROBE = """
import json, sys
from tunebench import plugins
metrics, runners = plugins.list_metrics(), plugins.list_runners()
print(json.dumps({"metrics": sorted(metrics), "runners": sorted(runners),
                  "loaded": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def test_loading_every_builtin_plugin_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    # the probe really loaded the built-ins: kinds from modules that have heavy dependencies are listed
    assert {"embedding_similarity", "rouge", "bleu", "json_schema", "judge"} <= set(probe["metrics"])
    assert {"openai", "hf", "vllm", "recorded", "command", "python"} <= set(probe["runners"])
    assert sorted(set(HEAVY) & set(probe["loaded"])) == []


def test_options_model_is_built_once_per_factory_and_stays_strict():
    factory = plugins.get_metric("exact_match")
    assert factory.plugin == "tunebench.metrics.exact"
    model = factory.options
    assert issubclass(model, pydantic.BaseModel) and model is plugins.get_metric("exact_match").options
    assert model.model_config["extra"] == "forbid"
    with pytest.raises(pydantic.ValidationError) as err:
        factory.build({"ignore_cas": True})
    assert err.value.errors()[0]["type"] == "extra_forbidden"


def test_a_positional_option_fails_when_the_factory_is_decorated():
    def shout(min_ratio: float = 0.5):  # not keyword-only: YAML options map onto keyword-only parameters
        return min_ratio

    with pytest.raises(TypeError, match="option 'min_ratio' must be keyword-only"):
        metric("shout", description="upper case share")(shout)


def test_a_lazily_built_model_validates_and_converts_options():
    @metric("ratio_probe", description="test factory")
    def ratio_probe(*, min_ratio: float = 0.5, labels: list[str] | None = None):
        return (min_ratio, labels)

    factory: Factory = ratio_probe.__tunebench_metric__
    assert factory.build({"min_ratio": "0.25", "labels": ["a"]}) == (0.25, ["a"])
    with pytest.raises(pydantic.ValidationError):
        factory.build({"min_ratio": "lots"})


def test_an_option_named_like_a_basemodel_method_builds_without_a_warning():
    @metric("shadow_probe", description="test factory")
    def shadow_probe(*, schema: dict | None = None, json: bool = False):
        return (schema, json)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic's "shadows an attribute" UserWarning would raise here
        built = shadow_probe.__tunebench_metric__.build({"schema": {"type": "object"}, "json": True})
    assert built == ({"type": "object"}, True)
