"""hf runner (and the vllm runner's GPU-free parts) on a real tiny GPT-2 + LoRA adapters built in a fixture.

Nothing is mocked: the models are trained and saved by ``tinymodels``, loaded by transformers + PEFT, and the
end-to-end test runs a suite through ``tunebench.api.run`` into a real DuckDB file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tinymodels import PROMPT, TinyModels, copy_adapter, write_suite
from tunebench import api
from tunebench.errors import ConfigError, RunnerError
from tunebench.runners import Request, RunnerContext, hf_models
from tunebench.runners import hf as hf_module
from tunebench.runners.hf import FALLBACK_CHAT_TEMPLATE, hf
from tunebench.store import Store

pytest_plugins = ("tinymodels",)  # the session fixture tiny_models, shared by every module

SRC = Path(__file__).resolve().parents[2] / "src"


def build(suite_dir: Path, name: str = "tuned", **options: Any) -> hf_module.HFRunner:
    return hf.__tunebench_runner__.build(options, RunnerContext(model_name=name, suite_dir=suite_dir))


def requests(models: TinyModels) -> list[Request]:
    return [Request(c["id"], 0, ({"role": "user", "content": PROMPT.format(text=c["input"])},)) for c in models.cases]


async def answer(runner: hf_module.HFRunner, reqs: list[Request]) -> list[Any]:
    return list(await asyncio.gather(*(runner.generate(r) for r in reqs)))


def run_all(*runners: hf_module.HFRunner, reqs: list[Request]) -> list[list[Any]]:
    """Every runner answers every request concurrently (as the engine would), then closes."""

    async def main() -> list[list[Any]]:
        try:
            return list(await asyncio.gather(*(answer(r, reqs) for r in runners)))
        finally:
            for r in runners:
                await r.aclose()

    return asyncio.run(main())


def test_adapter_changes_outputs_and_is_verified_active(tiny_models: TinyModels) -> None:
    m = tiny_models
    base = build(m.root, "base", checkpoint=str(m.checkpoint), params={"max_new_tokens": 6})
    tuned = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.adapter2), params={"max_new_tokens": 6})
    base_out, tuned_out = run_all(base, tuned, reqs=requests(m))
    base_text, tuned_text = [o.text for o in base_out], [o.text for o in tuned_out]
    assert sum(a != b for a, b in zip(base_text, tuned_text, strict=True)) >= len(m.cases) // 2
    expected = [c["expected"] for c in m.cases]
    # the adapter was trained on these cases: it must answer them better than the base
    assert sum(t.strip() == e for t, e in zip(tuned_text, expected, strict=True)) > \
        sum(t.strip() == e for t, e in zip(base_text, expected, strict=True))
    check = tuned.adapter_check
    assert check is not None and check["active"] is True and check["reason"] is None
    assert check["lora_b_matrices"] > 0 and check["lora_b_nonzero"] == check["lora_b_matrices"]
    assert check["max_logit_diff"] > 0
    assert base.adapter_check is None
    first = tuned_out[0]
    assert first.rendered_prompt == f"<|user|>{PROMPT.format(text=m.cases[0]['input'])}\n<|assistant|>"
    assert first.prompt_tokens and first.prompt_tokens > 10
    assert first.finish_reason in ("stop", "length") and first.completion_tokens >= 1
    assert first.latency_ms is not None and first.latency_ms > 0


def test_zero_initialised_adapter_is_caught(tiny_models: TinyModels) -> None:
    m = tiny_models
    zero = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.zero_adapter), params={"max_new_tokens": 4})
    reqs = requests(m)[:2]
    with pytest.raises(RunnerError, match=r"has no effect: all \d+ LoRA B matrices are zero") as err:
        run_all(zero, reqs=reqs)
    assert "allow_inactive_adapter" in str(err.value)
    assert zero.adapter_check is not None and zero.adapter_check["active"] is False
    assert zero.adapter_check["lora_b_nonzero"] == 0 and zero.adapter_check["max_logit_diff"] == 0.0

    # allowed explicitly: it runs, warns, and answers exactly like the base model
    allowed = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.zero_adapter),
                    params={"max_new_tokens": 4}, allow_inactive_adapter=True)
    base = build(m.root, "base", checkpoint=str(m.checkpoint), params={"max_new_tokens": 4})
    with pytest.warns(UserWarning, match="has no effect"):
        same, base_out = run_all(allowed, base, reqs=reqs)
    assert [o.text for o in same] == [o.text for o in base_out]


def test_base_weights_load_once_for_base_and_several_adapters(tiny_models: TinyModels) -> None:
    m = tiny_models
    hf_models.release_models()  # start from nothing held, whatever ran before in this process
    before = hf_models.base_weight_loads(str(m.checkpoint))
    opts = {"checkpoint": str(m.checkpoint), "params": {"max_new_tokens": 4}}
    base = build(m.root, "base", **opts)
    tuned = build(m.root, "tuned", adapter=str(m.adapter), **opts)
    tuned2 = build(m.root, "tuned2", adapter="runs/exp1/checkpoint-40", **opts)  # relative to suite_dir
    outs = run_all(base, tuned, tuned2, reqs=requests(m)[:4])
    assert hf_models.base_weight_loads(str(m.checkpoint)) == before + 1
    held = [s for s in hf_models.loaded_models() if s.key.checkpoint == str(m.checkpoint)]
    assert len(held) == 1 and held[0].users == 0
    held[0].executor.submit(lambda: None).result()  # let the queued adapter releases run
    assert len(held[0].adapters) == 1  # adapters nobody uses are dropped; PEFT keeps one loaded
    assert [o.text for o in outs[1]] != [o.text for o in outs[2]]  # two adapters, two behaviours, one base
    # a later run (a sweep's next checkpoint) reuses the held weights
    again = build(m.root, adapter=str(m.adapter2), **opts)
    run_all(again, reqs=requests(m)[:2])
    assert hf_models.base_weight_loads(str(m.checkpoint)) == before + 1


def test_batched_generation_equals_unbatched_for_greedy(tiny_models: TinyModels) -> None:
    m = tiny_models
    reqs = requests(m)
    opts = {"checkpoint": str(m.checkpoint), "params": {"max_new_tokens": 8}}
    outs = run_all(build(m.root, adapter=str(m.adapter2), batch_size=1, **opts),
                   build(m.root, adapter=str(m.adapter2), batch_size=8, **opts),
                   build(m.root, "base", batch_size=1, **opts), build(m.root, "base", batch_size=8, **opts),
                   reqs=reqs)
    shared = next(s for s in hf_models.loaded_models() if s.key.checkpoint == str(m.checkpoint))
    assert shared.batch_sizes[8] >= 2 and shared.batch_sizes[1] >= 2 * len(reqs)  # both modes really ran
    assert [o.text for o in outs[0]] == [o.text for o in outs[1]]
    assert [o.text for o in outs[2]] == [o.text for o in outs[3]]
    assert [o.prompt_tokens for o in outs[0]] == [o.prompt_tokens for o in outs[1]]  # padding not counted


def test_identity_pins_checkpoint_adapter_template_and_params(tiny_models: TinyModels, tmp_path: Path) -> None:
    m = tiny_models
    loads = hf_models.base_weight_loads()
    base = build(m.root, "base", checkpoint=str(m.checkpoint)).identity()
    a1 = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.adapter)).identity()
    a2 = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.adapter2)).identity()
    assert len({json.dumps(i, sort_keys=True) for i in (base, a1, a2)}) == 3
    assert base["weights_sha256"] == a1["weights_sha256"] == a2["weights_sha256"]
    assert base["adapter"] is None and a1["adapter"] == str(m.adapter) and a1["adapter_sha256"] != a2["adapter_sha256"]
    assert base["chat_template"]["source"] == "checkpoint"
    assert base["params"] == {"max_new_tokens": 256, "do_sample": False}
    assert hf_models.base_weight_loads() == loads  # identity and check read files; they load no weights

    # the same adapter path with different weights is a different model
    copy = copy_adapter(m.adapter, tmp_path / "adapter")
    before = build(tmp_path, checkpoint=str(m.checkpoint), adapter="adapter").identity()
    _scale_lora_b(copy / "adapter_model.safetensors", 2.0)
    after = build(tmp_path, checkpoint=str(m.checkpoint), adapter="adapter").identity()
    assert before["adapter"] == after["adapter"] and before["adapter_sha256"] != after["adapter_sha256"]

    # generation parameters: greedy ignores sampling knobs; sampling records them
    greedy = build(m.root, checkpoint=str(m.checkpoint), params={"top_p": 0.5, "max_tokens": 9}).identity()
    assert greedy["params"] == {"max_new_tokens": 9, "do_sample": False}
    sampled = build(m.root, checkpoint=str(m.checkpoint), params={"temperature": 0.7, "seed": 3}).identity()
    assert sampled["params"] == {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7, "seed": 3}

    # where the template came from is recorded; a tokenizer without one gets the documented fallback
    plain = build(m.root, checkpoint=str(m.plain_checkpoint)).identity()
    assert plain["chat_template"]["source"] == "fallback" and plain["weights_sha256"] == base["weights_sha256"]
    (tmp_path / "t.jinja").write_text("{{ messages[-1]['content'] }}", encoding="utf-8")
    from_file = build(tmp_path, checkpoint=str(m.checkpoint), chat_template="t.jinja").identity()
    inline = build(tmp_path, checkpoint=str(m.checkpoint), chat_template="{{ messages[-1]['content'] }}").identity()
    assert from_file["chat_template"]["source"] == f"file:{(tmp_path / 't.jinja').resolve()}"
    assert inline["chat_template"]["source"] == "suite"
    assert from_file["chat_template"]["sha256"] == inline["chat_template"]["sha256"] != base["chat_template"]["sha256"]


def _scale_lora_b(path: Path, factor: float) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v * factor if "lora_B" in k else v for k, v in tensors.items()}, str(path))


def test_fallback_and_suite_templates_are_applied(tiny_models: TinyModels) -> None:
    m = tiny_models
    msgs = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"})
    plain = build(m.root, checkpoint=str(m.plain_checkpoint), params={"max_new_tokens": 2})
    custom = build(m.root, checkpoint=str(m.checkpoint), params={"max_new_tokens": 2},
                   chat_template="Q: {{ messages[-1]['content'] }}\nA:")
    (p,), (c,) = run_all(plain, custom, reqs=[Request("c", 0, msgs)])
    assert p.rendered_prompt == "system: Be brief.\n\nuser: Hi <b>there</b>\n\nassistant:"
    assert c.rendered_prompt == "Q: Hi <b>there</b>\nA:"
    assert "{% if add_generation_prompt %}assistant:" in FALLBACK_CHAT_TEMPLATE


def test_bad_options_are_config_errors(tiny_models: TinyModels, tmp_path: Path) -> None:
    m = tiny_models
    ck = str(m.checkpoint)
    with pytest.raises(ConfigError, match=r"models.tuned: checkpoint 'nope' does not exist \(looked for "):
        build(tmp_path, checkpoint="nope")
    with pytest.raises(ConfigError, match="'no-such-org/model' is not a local directory and could not be fetched"):
        build(tmp_path, checkpoint="no-such-org/model")  # offline, not in the (empty) test cache
    with pytest.raises(ConfigError, match=r"has no adapter_config\.json"):
        build(tmp_path, checkpoint=ck, adapter=str(m.checkpoint))
    with pytest.raises(ConfigError,
                       match=r"unknown generation parameter 'max_new_token' \(did you mean 'max_new_tokens'"):
        build(tmp_path, checkpoint=ck, params={"max_new_token": 5})
    with pytest.raises(ConfigError, match="device 'gpu' is not one of"):
        build(tmp_path, checkpoint=ck, device="gpu")
    with pytest.raises(ConfigError, match=r"chat_template 'missing\.jinja' is neither"):
        build(tmp_path, checkpoint=ck, chat_template="missing.jinja")
    with pytest.raises(ConfigError, match=r"chat template \(suite\) line 1"):
        build(tmp_path, checkpoint=ck, chat_template="{% for m in messages %}{{ m }}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no weights"):
        build(tmp_path, checkpoint="empty")
    # check() re-validates without loading: an adapter deleted after planning is caught before any request
    copy = copy_adapter(m.adapter, tmp_path / "gone")
    runner = build(tmp_path, checkpoint=ck, adapter=str(copy))
    (copy / "adapter_config.json").unlink()
    with pytest.raises(ConfigError, match=r"has no adapter_config\.json"):
        runner.check()


@pytest.mark.parametrize(("module", "kind", "hint"), [("peft", "hf", "pip install 'tunebench[hf]'"),
                                                      ("vllm", "vllm", "pip install 'tunebench[vllm]'")])
def test_missing_extra_names_the_install_command(tiny_models: TinyModels, module: str, kind: str,
                                                 hint: str) -> None:
    # A fresh interpreter where the module cannot be imported, exactly as on a machine without the extra.
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None
        from tunebench.errors import ConfigError
        from tunebench.runners import RunnerContext
        from tunebench.runners.{kind} import {kind} as factory
        try:
            factory.__tunebench_runner__.build({{"checkpoint": {str(tiny_models.checkpoint)!r}}},
                                               RunnerContext(model_name="tuned"))
        except ConfigError as exc:
            print("CONFIG:", exc)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("CONFIG: the " + kind + " runner needs " + module)
    assert hint in out.stdout


def test_suite_base_checkpoint_vs_checkpoint_plus_adapter_end_to_end(tiny_models: TinyModels, tmp_path: Path) -> None:
    m = tiny_models
    suite = write_suite(m, tmp_path, name="tiny-sentiment", adapter=m.adapter2)
    db = tmp_path / "reports" / "tb.duckdb"
    first = api.run(api.RunConfig(suite=suite, db=db, write_report=False))
    n = len(m.cases)
    assert first.requests.sent == 2 * n and first.requests.errors == 0
    assert first.metric("tuned", "exact").value > first.metric("base", "exact").value
    assert not any("same output" in w for w in first.summary.warnings)
    with Store.open(db, read_only=True) as store:
        models = {row["model"]: row for row in store.get_models(first.run_id)}
        outputs = list(store.iter_outputs(first.run_id))
    assert models["base"]["identity_hash"] != models["tuned"]["identity_hash"]
    assert models["tuned"]["identity"]["adapter_sha256"] and models["base"]["identity"]["adapter"] is None
    by_model: dict[str, dict[str, str]] = {}
    for out in outputs:
        by_model.setdefault(out.model, {})[out.case_id] = out.text
    assert sum(by_model["base"][c] != by_model["tuned"][c] for c in by_model["base"]) >= n // 2
    # the exact prompt text each model saw (chat template applied) is stored, and is the same for base and tuned
    prompts = {(o.model, o.case_id): o.request["prompt"] for o in outputs}
    assert all(prompts[("base", c)] == prompts[("tuned", c)] for c in by_model["base"])
    assert all(isinstance(p, str) and p for p in prompts.values())

    # same suite again: every answer comes from the cache; nothing is loaded or generated
    loads = hf_models.base_weight_loads()
    second = api.run(api.RunConfig(suite=suite, db=db, write_report=False))
    assert second.requests.cached == 2 * n and second.requests.sent == 0
    assert hf_models.base_weight_loads() == loads
    # another adapter: a new cache key for tuned only; the base answers stay cached
    third = api.run(api.RunConfig(suite=suite, db=db, write_report=False,
                                  overrides=(f"tuned.adapter={json.dumps(str(m.adapter))}",)))
    assert third.requests.cached == n and third.requests.sent == n


# ---------------------------------------------------------------- vllm: everything that needs no GPU


def build_vllm(suite_dir: Path, **options: Any) -> Any:
    from tunebench.runners.vllm import build_runner

    return build_runner(context=RunnerContext(model_name="tuned", suite_dir=suite_dir), **options)


def test_vllm_identity_and_prompts_match_the_hf_runner(tiny_models: TinyModels) -> None:
    m = tiny_models
    runner = build_vllm(m.root, checkpoint=str(m.checkpoint), adapter=str(m.adapter2),
                        params={"max_new_tokens": 6}, tensor_parallel_size=2)
    twin = build(m.root, checkpoint=str(m.checkpoint), adapter=str(m.adapter2), params={"max_new_tokens": 6})
    ident, hf_ident = runner.identity(), twin.identity()
    assert ident["kind"] == "vllm" and ident["engine"]["tensor_parallel_size"] == 2
    assert "gpu_memory_utilization" not in ident["engine"]  # memory budget does not change answers
    for key in ("checkpoint", "weights_sha256", "files_sha256", "adapter", "adapter_sha256", "chat_template",
                "params"):
        assert ident[key] == hf_ident[key]
    assert runner.identity() != build_vllm(m.root, checkpoint=str(m.checkpoint)).identity()

    reqs = requests(m)[:3]
    built = runner.build_prompts([r.messages for r in reqs])
    hf_out = run_all(twin, reqs=reqs)[0]
    assert [text for text, _ in built] == [o.rendered_prompt for o in hf_out]
    assert [len(ids) for _, ids in built] == [o.prompt_tokens for o in hf_out]


def test_vllm_sampling_params_options_and_static_adapter_check(tiny_models: TinyModels) -> None:
    from tunebench.runners.vllm import sampling_kwargs, static_lora_check

    m = tiny_models
    greedy = build_vllm(m.root, checkpoint=str(m.checkpoint), params={"max_tokens": 7, "stop": "\n", "top_p": 0.1})
    assert greedy.sampling == {"max_tokens": 7, "temperature": 0.0, "stop": ["\n"]}
    sampled = build_vllm(m.root, checkpoint=str(m.checkpoint),
                         params={"temperature": 0.8, "top_p": 0.9, "seed": 5, "min_new_tokens": 2})
    assert sampled.sampling == {"max_tokens": 256, "temperature": 0.8, "top_p": 0.9, "min_tokens": 2, "seed": 5}
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        sampling_kwargs({"max_new_tokens": 5, "no_repeat_ngram_size": 3}, "tuned")
    with pytest.raises(ConfigError, match="tensor_parallel_size must be at least 1"):
        build_vllm(m.root, checkpoint=str(m.checkpoint), tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        build_vllm(m.root, checkpoint=str(m.checkpoint), gpu_memory_utilization=1.5)
    zero, trained = static_lora_check(m.zero_adapter), static_lora_check(m.adapter)
    assert zero["lora_b_matrices"] == trained["lora_b_matrices"] > 0
    assert zero["lora_b_nonzero"] == 0 and trained["lora_b_nonzero"] == trained["lora_b_matrices"]


def test_hub_id_resolves_through_the_local_hub_cache(tiny_models: TinyModels, tmp_path: Path) -> None:
    # A Hugging Face cache laid out by hand (refs/main → snapshots/<commit>), read offline by huggingface_hub in
    # a fresh interpreter whose HF_HUB_CACHE points here: the same path a downloaded model takes.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in tiny_models.checkpoint.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    code = textwrap.dedent("""
        import json
        from pathlib import Path
        from tunebench.runners.hf import resolve_spec
        spec = resolve_spec(checkpoint="tiny-org/tiny-gpt2", adapter=None, revision=None, chat_template=None,
                            suite_dir=Path("."), model="base")
        print(json.dumps({"checkpoint": spec.checkpoint, "dir": str(spec.checkpoint_dir), "hashes": spec.hashes,
                          "template": spec.chat_template_source}))
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"checkpoint": "tiny-org/tiny-gpt2", "dir": str(snapshot), "hashes": {"commit": commit},
                   "template": "checkpoint"}
