"""Loaded Hugging Face models, shared by every ``hf`` runner of the process.

Invariants:
- One :class:`SharedModel` per (checkpoint, revision, device, dtype): base and tuned models on the same
  checkpoint use the same weights in memory. The base model is the shared model with every adapter disabled;
  each adapter is loaded once into the one ``PeftModel`` under its own name and selected per batch.
- Every touch of the weights (load, attach, generate, detach) runs on the shared model's single worker thread and
  under its lock: generation on a shared model is serialised, and the event loop never blocks on torch. Loading
  (weights or adapters) is serialised across models too: transformers sets process-global torch state meanwhile.
- A model nobody uses stays loaded (a checkpoint sweep runs many suites on one base) until another checkpoint is
  asked for or :func:`release_models` is called; :func:`base_weight_loads` counts loads of base weights.
- An adapter is checked after loading: LoRA B matrices not all zero, and a probe's logits differ with the adapter
  enabled and disabled. The result is returned, never hidden; the runner decides whether it is fatal.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import gc
import itertools
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunnerError
from .hf import checkpoint_chat_template, render_prompt

__all__ = ["ModelKey", "SharedModel", "acquire", "base_weight_loads", "loaded_models", "release",
           "release_models"]

PROBE = "The quick brown fox jumps over the lazy dog. How can I help you today?"
"""Fixed input whose logits must change when an adapter is enabled."""

_lock = threading.Lock()
_load_lock = threading.Lock()
"""transformers/PEFT loading touches process-global torch state (default dtype, meta-device init): one at a time."""
_models: dict[ModelKey, SharedModel] = {}
_loads: collections.Counter[str] = collections.Counter()
_names = itertools.count(1)


@dataclass(frozen=True)
class ModelKey:
    """What makes two runners' base weights the same object."""

    checkpoint: str
    revision: str | None
    device: str
    dtype: str


def base_weight_loads(checkpoint: str | None = None) -> int:
    """How often base weights were loaded in this process (for one checkpoint, or in total)."""
    with _lock:
        return _loads[checkpoint] if checkpoint is not None else sum(_loads.values())


def loaded_models() -> list[SharedModel]:
    """The models held now (in use or idle)."""
    with _lock:
        return list(_models.values())


def acquire(key: ModelKey, directory: Path) -> SharedModel:
    """The shared model for ``key`` (not yet loaded if new); idle models of other checkpoints are dropped."""
    with _lock:
        shared = _models.get(key)
        if shared is None:
            for other, idle in list(_models.items()):
                if idle.users == 0:
                    del _models[other]
                    idle.executor.submit(idle.unload)
            shared = _models[key] = SharedModel(key, directory)
        shared.users += 1
        return shared


def release(shared: SharedModel, adapter_name: str | None) -> None:
    """A runner is done with ``shared`` (and its adapter); the model stays loaded while nothing else is asked."""
    with _lock:  # queued under the lock, so an eviction's unload always runs after it
        shared.users -= 1
        if adapter_name is not None:
            shared.executor.submit(shared.detach, adapter_name)


def release_models() -> int:
    """Unload every model no runner uses; returns how many."""
    with _lock:
        idle = [(k, m) for k, m in _models.items() if m.users == 0]
        for k, _ in idle:
            del _models[k]
    for _, m in idle:
        m.executor.submit(m.unload).result()
    return len(idle)


class SharedModel:
    """A checkpoint's tokenizer and weights, plus the adapters attached to them."""

    def __init__(self, key: ModelKey, directory: Path) -> None:
        self.key, self.directory = key, directory
        self.lock = threading.Lock()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunebench-hf")
        self.users = 0
        self.tokenizer: Any = None
        self.model: Any = None
        self.peft: Any = None
        self.adapters: dict[tuple[str, str | None], str] = {}
        """(adapter directory, content hash) → adapter name inside the PeftModel."""
        self.reports: dict[str, dict[str, Any]] = {}
        self.adapter_users: collections.Counter[str] = collections.Counter()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many batches of each size were generated (observability, and tests of the micro-batching)."""

    def load(self) -> None:
        """Load tokenizer and base weights once (worker thread)."""
        with self.lock, _load_lock:
            if self.model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device, dtype = self.key.device, self.key.dtype
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise RunnerError(f"device {device!r} requested but torch sees no GPU (torch {torch.__version__})")
            tokenizer = AutoTokenizer.from_pretrained(self.directory)
            tokenizer.padding_side = "left"  # decoder-only batches are padded on the left: prompts end together
            if tokenizer.pad_token is None:
                if tokenizer.eos_token is None:
                    raise RunnerError(f"{self.key.checkpoint}: the tokenizer has neither a pad nor an eos token")
                tokenizer.pad_token = tokenizer.eos_token
            kwargs: dict[str, Any] = {"dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
            if device == "auto":
                kwargs["device_map"] = "auto"
            model = AutoModelForCausalLM.from_pretrained(self.directory, **kwargs)
            if device != "auto":
                model = model.to(device)
            model.eval()
            self.tokenizer, self.model = tokenizer, model
            with _lock:
                _loads[self.key.checkpoint] += 1

    def attach(self, adapter_dir: Path, sha256: str | None) -> tuple[str, dict[str, Any]]:
        """Load an adapter (once per content) and check that it changes the model (worker thread)."""
        with self.lock, _load_lock:
            key = (str(adapter_dir), sha256)
            name = self.adapters.get(key)
            if name is None:
                from peft import PeftModel

                name = f"adapter{next(_names)}"
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
                else:
                    self.peft.load_adapter(str(adapter_dir), adapter_name=name)
                self.peft.eval()
                self.adapters[key] = name
                self.reports[name] = self._check(name, adapter_dir)
            self.adapter_users[name] += 1
            return name, dict(self.reports[name])

    def _check(self, name: str, adapter_dir: Path) -> dict[str, Any]:
        import torch

        pattern = re.compile(rf"lora_(?:embedding_)?B\.{re.escape(name)}(?:\.|$)")
        b_matrices = [p for n, p in self.peft.named_parameters() if pattern.search(n)]
        nonzero = sum(1 for p in b_matrices if int(torch.count_nonzero(p.detach())) > 0)
        probe = self.tokenizer(PROBE, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            self.peft.set_adapter(name)
            enabled = self.peft(**probe).logits.float()
            with self.peft.disable_adapter():
                disabled = self.peft(**probe).logits.float()
        diff = float((enabled - disabled).abs().max())
        reasons = []
        if b_matrices and nonzero == 0:
            reasons.append(f"all {len(b_matrices)} LoRA B matrices are zero (a freshly initialised adapter?)")
        if diff == 0.0:
            reasons.append("a probe's logits are identical with the adapter enabled and disabled")
        own = checkpoint_chat_template(adapter_dir)
        if own is not None and own != checkpoint_chat_template(self.directory):
            warnings.warn(f"adapter {adapter_dir} carries its own chat template, which differs from the "
                          "checkpoint's; set chat_template on the model to use it", stacklevel=2)
        return {"adapter": str(adapter_dir), "adapter_name": name, "lora_b_matrices": len(b_matrices),
                "lora_b_nonzero": nonzero, "max_logit_diff": diff, "active": not reasons,
                "reason": "; ".join(reasons) or None}

    def detach(self, name: str) -> None:
        """A runner is done with an adapter: drop the adapters nobody uses, keeping at least one (worker thread).

        PEFT needs one adapter to stay loaded; the one kept is the latest released, the likeliest to be asked
        for again (a sweep moves forward).
        """
        with self.lock:
            self.adapter_users[name] -= 1
            if self.peft is None:
                return
            idle = [n for n in self.adapters.values() if self.adapter_users[n] <= 0]
            if len(idle) == len(self.adapters):
                idle.remove(name)
            for n in idle:
                with warnings.catch_warnings():  # "adapter X was active, now deleted": selection is per batch
                    warnings.simplefilter("ignore")
                    self.peft.delete_adapter(n)
                self.adapters = {k: v for k, v in self.adapters.items() if v != n}
                self.reports.pop(n, None)
                del self.adapter_users[n]

    @contextlib.contextmanager
    def _selected(self, adapter: str | None) -> Iterator[Any]:
        if adapter is None:
            if self.peft is None:
                yield self.model
            else:
                with self.peft.disable_adapter():
                    yield self.peft
        else:
            self.peft.set_adapter(adapter)
            yield self.peft

    def generate_batch(self, adapter: str | None, template: str, conversations: Sequence[Sequence[dict[str, str]]],
                       params: dict[str, Any]) -> list[dict[str, Any]]:
        """Render, left-pad and generate one batch; one result dict per conversation (worker thread)."""
        import torch

        with self.lock:
            tok = self.tokenizer
            prompts = [render_prompt(tok, template, list(c)) for c in conversations]
            # The template already wrote every special token it wants: add none (as apply_chat_template does).
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
            kwargs = {k: v for k, v in params.items() if k not in ("seed", "stop")}
            kwargs["pad_token_id"] = tok.pad_token_id
            stops = params.get("stop") or []
            if stops:
                kwargs.update(stop_strings=stops, tokenizer=tok)
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            started = time.perf_counter()
            with torch.inference_mode(), self._selected(adapter) as model:
                out = model.generate(**enc, **kwargs)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            self.batch_sizes[len(prompts)] += 1
            eos = self._eos_ids(model)
        width = enc["input_ids"].shape[1]
        results = []
        for i, prompt in enumerate(prompts):
            ids = out[i, width:].tolist()
            finish = "length"
            for j, t in enumerate(ids):
                if t in eos:
                    ids, finish = ids[: j + 1], "stop"
                    break
            text = tok.decode(ids, skip_special_tokens=True)
            for s in stops:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            results.append({"text": text, "prompt": prompt, "prompt_tokens": int(enc["attention_mask"][i].sum()),
                            "completion_tokens": len(ids), "finish_reason": finish, "latency_ms": elapsed_ms})
        return results

    def _eos_ids(self, model: Any) -> set[int]:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def unload(self) -> None:
        """Free the weights (worker thread); the executor ends after this task."""
        with self.lock:
            cuda = self.key.device != "cpu"
            self.model = self.peft = self.tokenizer = None
            self.adapters.clear()
        gc.collect()
        if cuda:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.executor.shutdown(wait=False)
