"""The ``vllm`` runner: vLLM's offline engine on GPUs, with LoRA adapters and tensor parallelism.

Invariants:
- vllm is imported only when the engine starts; a suite naming ``runner: vllm`` without it fails with a
  ConfigError naming ``pip install 'tunebench[vllm]'``. Options, identity and prompt building need no GPU.
- Paths, content hashes, the chat template and the generation parameters are resolved exactly as for the ``hf``
  runner (shared code), so a suite can switch runners and keep the same prompts; prompts are rendered with the
  checkpoint's tokenizer and passed to vLLM as token ids (vLLM adds no second BOS).
- One engine per (checkpoint, revision, dtype, engine settings) in the process, created with LoRA enabled so base
  and tuned share it: base requests carry no LoRA request, tuned ones carry the adapter's ``LoRARequest``.
- Every engine call runs on the engine's single worker thread; the event loop never blocks.
- An adapter is checked before use: its LoRA B matrices (read from the file) are not all zero, and once the
  engine runs, a probe's next-token log-probabilities differ with and without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, RunnerError
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner
from .hf import HFResponse, MicroBatcher, ModelSpec, generation_params, render_prompt, require_extra, resolve_spec

__all__ = ["VLLMRunner", "sampling_kwargs", "static_lora_check", "vllm"]

EXTRA_HINT = "pip install 'tunebench[vllm]' (Linux with an NVIDIA GPU)"
_PROBE = "The quick brown fox jumps over the lazy dog. How can I help you today?"

_lock = threading.Lock()
_engines: dict[tuple[Any, ...], _Engine] = {}
_lora_ids = itertools.count(1)


def sampling_kwargs(params: dict[str, Any], model: str) -> dict[str, Any]:
    """The effective generation parameters (see ``hf.generation_params``) as ``vllm.SamplingParams`` keywords."""
    if "no_repeat_ngram_size" in params:
        raise ConfigError(f"models.{model}: vLLM has no no_repeat_ngram_size", hint="remove it from params")
    out: dict[str, Any] = {"max_tokens": params["max_new_tokens"]}
    if params.get("do_sample"):
        out["temperature"] = float(params.get("temperature", 1.0))
        for key in ("top_p", "top_k"):
            if key in params:
                out[key] = params[key]
    else:
        out["temperature"] = 0.0  # vLLM's greedy decoding
    for src, dst in (("min_new_tokens", "min_tokens"), ("repetition_penalty", "repetition_penalty"),
                     ("seed", "seed"), ("stop", "stop")):
        if params.get(src) is not None:
            out[dst] = params[src]
    return out


def static_lora_check(adapter_dir: Path) -> dict[str, Any]:
    """Count LoRA B matrices and the non-zero ones straight from the adapter file (no model needed)."""
    import torch

    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(weights))
    else:
        tensors = torch.load(str(adapter_dir / "adapter_model.bin"), map_location="cpu", weights_only=True)
    b = [t for name, t in tensors.items() if "lora_B" in name or "lora_embedding_B" in name]
    nonzero = sum(1 for t in b if int(torch.count_nonzero(t)) > 0)
    return {"lora_b_matrices": len(b), "lora_b_nonzero": nonzero}


class _Engine:
    """One vLLM engine and the thread that drives it."""

    def __init__(self, spec: ModelSpec, engine_args: dict[str, Any]) -> None:
        self.spec, self.engine_args = spec, engine_args
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebench-vllm")
        self.llm: Any = None
        self.loras: dict[str, Any] = {}
        self.users = 0

    def start(self) -> None:
        if self.llm is None:
            from vllm import LLM

            self.llm = LLM(model=str(self.spec.checkpoint_dir), **self.engine_args)

    def lora(self, adapter_dir: Path) -> Any:
        key = str(adapter_dir)
        if key not in self.loras:
            from vllm.lora.request import LoRARequest

            n = next(_lora_ids)
            self.loras[key] = LoRARequest(f"tunebench-{n}", n, key)
        return self.loras[key]

    def probe(self, tokenizer: Any, lora: Any) -> float:
        """Largest change of the top next-token log-probabilities with the adapter vs without."""
        from vllm import SamplingParams

        ids = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
        sp = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
        with_lora = self.llm.generate([{"prompt_token_ids": ids}], sp, lora_request=lora, use_tqdm=False)
        without = self.llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
        a = {t: lp.logprob for t, lp in with_lora[0].outputs[0].logprobs[0].items()}
        b = {t: lp.logprob for t, lp in without[0].outputs[0].logprobs[0].items()}
        if set(a) != set(b):
            return float("inf")
        return max(abs(a[t] - b[t]) for t in a)

    def generate(self, token_ids: list[list[int]], sampling: dict[str, Any], lora: Any) -> list[Any]:
        from vllm import SamplingParams

        prompts = [{"prompt_token_ids": ids} for ids in token_ids]
        return self.llm.generate(prompts, SamplingParams(**sampling), lora_request=lora, use_tqdm=False)


class VLLMRunner(Runner):
    """The runner behind ``kind: vllm``."""

    kind = "vllm"

    def __init__(self, spec: ModelSpec, *, dtype: str, params: dict[str, Any], engine: dict[str, Any],
                 batch_size: int, allow_inactive_adapter: bool, context: RunnerContext) -> None:
        model = context.model_name
        if engine["tensor_parallel_size"] < 1:
            raise ConfigError(f"models.{model}: tensor_parallel_size must be at least 1")
        if not 0 < engine["gpu_memory_utilization"] <= 1:
            raise ConfigError(f"models.{model}: gpu_memory_utilization must be in (0, 1]")
        if batch_size < 1:
            raise ConfigError(f"models.{model}: batch_size must be at least 1")
        self.spec, self.dtype, self.params, self.engine = spec, dtype, params, engine
        self.sampling = sampling_kwargs(params, model)
        self.batch_size, self.allow_inactive_adapter, self.model_name = batch_size, allow_inactive_adapter, model
        self.adapter_check: dict[str, Any] | None = None
        self._tokenizer: Any = None
        self._engine: _Engine | None = None
        self._lora: Any = None
        self._ready: asyncio.Future[None] | None = None
        self._batcher: MicroBatcher | None = None
        self._error: RunnerError | None = None

    def identity(self) -> dict[str, Any]:
        s = self.spec
        engine = {k: v for k, v in self.engine.items() if k != "gpu_memory_utilization"}  # memory, not output
        return {"kind": self.kind, "checkpoint": s.checkpoint, "revision": s.revision, **s.hashes,
                "adapter": s.adapter, "adapter_sha256": s.adapter_sha256,
                "chat_template": {"source": s.chat_template_source, "sha256": s.chat_template_sha256},
                "params": self.params, "dtype": self.dtype, "engine": engine}

    def check(self) -> None:
        if not self.spec.checkpoint_dir.is_dir():
            raise ConfigError(f"models.{self.model_name}: checkpoint {self.spec.checkpoint!r} no longer exists")

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer (transformers), loaded on first use."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.spec.checkpoint_dir)
        return self._tokenizer

    def build_prompts(self, conversations: list[tuple[dict[str, str], ...]]) -> list[tuple[str, list[int]]]:
        """(rendered text, token ids) per conversation: the chat template applied, no extra special tokens."""
        out = []
        for messages in conversations:
            text = render_prompt(self.tokenizer, self.spec.chat_template, messages)
            out.append((text, self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        return out

    async def start(self) -> None:
        """Start (or join) the engine and check the adapter; idempotent. Raises RunnerError."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._start())
        await asyncio.shield(self._ready)

    def _engine_key(self) -> tuple[Any, ...]:
        return (self.spec.checkpoint, self.spec.revision, self.dtype, tuple(sorted(self.engine.items())))

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        with _lock:
            engine = _engines.get(self._engine_key())
            if engine is None:
                engine = _engines[self._engine_key()] = _Engine(self.spec, {"dtype": self.dtype, **self.engine})
            engine.users += 1
        self._engine = engine
        try:
            await loop.run_in_executor(engine.executor, engine.start)
            if self.spec.adapter_dir is not None:
                report = await loop.run_in_executor(engine.executor, self._check_adapter, engine)
                self.adapter_check = report
                if not report["active"] and not self.allow_inactive_adapter:
                    raise RunnerError(f"models.{self.model_name}: adapter {self.spec.adapter} has no effect: "
                                      f"{report['reason']} (set allow_inactive_adapter: true to run it anyway)")
        except RunnerError as exc:
            self._error = exc
            raise
        except Exception as exc:
            self._error = RunnerError(f"models.{self.model_name}: vLLM failed to start: {type(exc).__name__}: "
                                      f"{str(exc)[:300]}")
            raise self._error from None

    def _check_adapter(self, engine: _Engine) -> dict[str, Any]:
        assert self.spec.adapter_dir is not None
        report = static_lora_check(self.spec.adapter_dir)
        self._lora = engine.lora(self.spec.adapter_dir)
        report["max_logprob_diff"] = engine.probe(self.tokenizer, self._lora)
        reasons = []
        if report["lora_b_matrices"] and report["lora_b_nonzero"] == 0:
            reasons.append(f"all {report['lora_b_matrices']} LoRA B matrices are zero (a freshly initialised adapter?)")
        if report["max_logprob_diff"] == 0.0:
            reasons.append("a probe's next-token log-probabilities are identical with and without it")
        report.update(adapter=str(self.spec.adapter_dir), active=not reasons, reason="; ".join(reasons) or None)
        return report

    async def generate(self, request: Request) -> Response:
        if self._error is not None:
            raise self._error
        await self.start()
        if self._batcher is None:
            self._batcher = MicroBatcher(self.batch_size, self._run_batch)
        return await self._batcher.submit(request)

    async def _run_batch(self, requests: list[Request]) -> list[Response]:
        engine = self._engine
        assert engine is not None
        return await asyncio.get_running_loop().run_in_executor(
            engine.executor, self._generate_batch, engine, [r.messages for r in requests])

    def _generate_batch(self, engine: _Engine, conversations: list[tuple[dict[str, str], ...]]) -> list[Response]:
        # On the engine thread: the tokenizer is not safe to share across threads.
        prompts = self.build_prompts(conversations)
        outputs = engine.generate([ids for _, ids in prompts], self.sampling, self._lora)
        responses: list[Response] = []
        for (text, ids), out in zip(prompts, outputs, strict=True):
            best = out.outputs[0]
            responses.append(HFResponse(best.text, len(ids), len(best.token_ids), best.finish_reason,
                                        rendered_prompt=text))
        return responses

    async def aclose(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        if self._engine is not None:
            with _lock:
                self._engine.users -= 1
            self._engine = None


@runner("vllm", description="vLLM's offline engine on GPUs (LoRA adapters, tensor parallelism)")
def vllm(
    *,
    checkpoint: str,
    adapter: str | None = None,
    revision: str | None = None,
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
    params: dict[str, Any] | None = None,
    chat_template: str | None = None,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    max_lora_rank: int = 64,
    max_loras: int = 4,
    batch_size: int = 256,
    allow_inactive_adapter: bool = False,
    context: RunnerContext,
) -> VLLMRunner:
    """Generate with vLLM; base and adapters on one checkpoint share one engine."""
    require_extra(("vllm",), runner_kind="vllm", hint=EXTRA_HINT)
    return build_runner(checkpoint=checkpoint, adapter=adapter, revision=revision, dtype=dtype, params=params,
                        chat_template=chat_template, tensor_parallel_size=tensor_parallel_size,
                        gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                        max_lora_rank=max_lora_rank, max_loras=max_loras, batch_size=batch_size,
                        allow_inactive_adapter=allow_inactive_adapter, context=context)


def build_runner(*, checkpoint: str, adapter: str | None = None, revision: str | None = None, dtype: str = "auto",
                 params: dict[str, Any] | None = None, chat_template: str | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, max_lora_rank: int = 64, max_loras: int = 4,
                 batch_size: int = 256, allow_inactive_adapter: bool = False,
                 context: RunnerContext) -> VLLMRunner:
    """Everything the factory does after the extra check (usable, and tested, without vllm installed)."""
    model = context.model_name
    spec = resolve_spec(checkpoint=checkpoint, adapter=adapter, revision=revision, chat_template=chat_template,
                        suite_dir=Path(context.suite_dir), model=model)
    engine = {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
              "max_model_len": max_model_len, "enable_lora": True, "max_lora_rank": max_lora_rank,
              "max_loras": max_loras}
    return VLLMRunner(spec, dtype=dtype, params=generation_params(params or {}, model), engine=engine,
                      batch_size=batch_size, allow_inactive_adapter=allow_inactive_adapter, context=context)


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(vllm)
