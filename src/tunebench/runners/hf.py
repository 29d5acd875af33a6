"""The ``hf`` runner: a local Hugging Face causal-LM checkpoint, optionally with a PEFT/LoRA adapter.

Invariants:
- Nothing heavy is imported at module import: torch, transformers and peft load inside functions; a suite that
  names ``runner: hf`` without the extra installed fails with a ConfigError naming ``pip install 'tunebench[hf]'``.
- Building the runner and ``identity()`` read files only (paths, hashes, the chat template); weights load on the
  first request (or ``start()``) on the shared model's own thread, never on the event loop.
- Base and tuned models on the same checkpoint share ONE copy of the weights (see ``hf_models``): the base model
  is the shared model with adapters disabled; every adapter is verified active after loading.
- The chat template is resolved once, applied explicitly to every request, part of the identity (its sha256 and
  where it came from: the suite, a file, the checkpoint, or the documented fallback), and the rendered prompt of
  each case comes back with its response.
- ``identity()`` pins the content: sha256 of the checkpoint's weight bytes and of its config/tokenizer files (or
  the Hub commit), of the adapter's weights and config, of the chat template, plus the effective generation
  parameters, dtype and device. It holds no secret.
- Concurrent ``generate()`` calls are micro-batched (up to ``batch_size``, waiting at most a few ms) and
  generated together with left padding; greedy decoding gives the same text batched or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, RunnerError
from ..factory import did_you_mean
from ..hookspecs import hookimpl
from ._base import Request, Response, Runner, RunnerContext, runner

__all__ = ["FALLBACK_CHAT_TEMPLATE", "HFResponse", "HFRunner", "MicroBatcher", "ModelSpec", "hf"]

EXTRA_HINT = "pip install 'tunebench[hf]'"

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""Used when neither the suite nor the checkpoint's tokenizer gives a chat template: ``role: content`` blocks
separated by blank lines, then ``assistant:``."""

BATCH_WAIT_S = 0.005
"""How long the first request of a micro-batch waits for company before the batch is generated anyway."""

_GEN_KEYS = ("max_new_tokens", "max_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "do_sample",
             "repetition_penalty", "no_repeat_ngram_size", "seed", "stop")
_DEFAULT_MAX_NEW_TOKENS = 256
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_DEVICE = re.compile(r"cpu|auto|mps|cuda(:\d+)?")
_CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                 "chat_template.jinja", "chat_template.json")
_TRAINING_FILES = {"training_args.bin", "optimizer.bin", "scheduler.bin"}

_hash_cache: dict[tuple[str, int, int], str] = {}


HFResponse = Response  # carries ``rendered_prompt``: the exact prompt text the model saw


def require_extra(modules: tuple[str, ...] = ("torch", "transformers", "peft"), *, runner_kind: str = "hf",
                  hint: str = EXTRA_HINT) -> None:
    """ConfigError naming the install command when an optional module is missing (found without importing)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            missing.append(name)
    if missing:
        raise ConfigError(f"the {runner_kind} runner needs {', '.join(missing)}, which is not installed",
                          hint=hint)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    digest = _hash_cache.get(key)
    if digest is None:
        with path.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        _hash_cache[key] = digest
    return digest


def _combine(parts: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(parts.items())).encode()).hexdigest()


def weight_files(directory: Path) -> list[Path]:
    """The files holding a checkpoint's weights: safetensors when present, else PyTorch ``.bin`` files."""
    found = sorted(directory.glob("*.safetensors"))
    if not found:
        found = sorted(p for p in directory.glob("*.bin") if p.name not in _TRAINING_FILES)
    return found


def resolve_path(value: str, suite_dir: Path, what: str, model: str) -> tuple[str, Path | None]:
    """(identity string, local directory) for a local path; (hub id, None) for something that looks like one."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(suite_dir) / path
    if path.is_dir():
        return str(path.resolve()), path.resolve()
    if path.exists():
        raise ConfigError(f"models.{model}: {what} {value!r} is a file, not a directory",
                          hint="give the directory written by save_pretrained()")
    if _HUB_ID.fullmatch(value) and not value.startswith((".", "~")):
        return value, None
    raise ConfigError(f"models.{model}: {what} {value!r} does not exist (looked for {path})",
                      hint="paths are relative to the suite file; use an absolute path or a Hub id 'org/name'")


def _hub_snapshot(repo_id: str, revision: str | None, model: str, what: str,
                  patterns: list[str] | None = None) -> Path:
    """Local snapshot of a Hub repository (downloaded where there is network; the cache when offline)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as exc:
        raise ConfigError(f"models.{model}: {what} {repo_id!r} is not a local directory and could not be fetched "
                          f"from the Hugging Face Hub ({type(exc).__name__}: {str(exc)[:200]})",
                          hint="check the path (relative to the suite file) or the Hub id, network and "
                               "HF_HUB_OFFLINE") from None


def checkpoint_hashes(directory: Path, model: str) -> dict[str, str]:
    """weights_sha256 (weight bytes) and files_sha256 (config and tokenizer files) of a checkpoint directory."""
    weights = weight_files(directory)
    if not weights:
        raise ConfigError(f"models.{model}: checkpoint {str(directory)!r} holds no weights (*.safetensors, *.bin)",
                          hint="point at the directory written by save_pretrained()")
    files = {p.name: file_sha256(p) for p in (directory / n for n in _CONFIG_FILES) if p.is_file()}
    return {"weights_sha256": _combine({p.name: file_sha256(p) for p in weights}),
            "files_sha256": _combine(files)}


def check_adapter_dir(directory: Path, model: str) -> list[Path]:
    """The adapter's weight files; a ConfigError when the directory is not a PEFT adapter."""
    if not (directory / "adapter_config.json").is_file():
        raise ConfigError(f"models.{model}: adapter {str(directory)!r} has no adapter_config.json",
                          hint="point at the directory written by PeftModel.save_pretrained()")
    weights = [p for p in (directory / "adapter_model.safetensors", directory / "adapter_model.bin") if p.is_file()]
    if not weights:
        raise ConfigError(f"models.{model}: adapter {str(directory)!r} has no adapter_model.safetensors or "
                          "adapter_model.bin", hint="the adapter was not saved completely")
    return weights


def adapter_sha256(directory: Path, model: str) -> str:
    """sha256 over the adapter weights and its config (minus the base-model path, which is machine-specific)."""
    weights = check_adapter_dir(directory, model)
    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"models.{model}: {directory / 'adapter_config.json'}: not valid JSON ({exc})") from None
    config.pop("base_model_name_or_path", None)
    parts = {p.name: file_sha256(p) for p in weights}
    parts["adapter_config.json"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return _combine(parts)


def checkpoint_chat_template(directory: Path) -> str | None:
    """The tokenizer's own chat template, read from its files (``chat_template.jinja`` or tokenizer_config)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
        if isinstance(template, list):  # several named templates: transformers uses "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            return template
    return None


def resolve_chat_template(option: str | None, checkpoint_dir: Path, suite_dir: Path,
                          model: str) -> tuple[str, str]:
    """(template text, source): the option (inline Jinja or a file), the checkpoint's own, or the fallback."""
    if option is not None:
        if "{{" in option or "{%" in option:
            text, source = option, "suite"
        else:
            path = Path(option).expanduser()
            path = path if path.is_absolute() else Path(suite_dir) / path
            if not path.is_file():
                raise ConfigError(f"models.{model}: chat_template {option!r} is neither a Jinja template nor an "
                                  f"existing file (looked for {path})",
                                  hint="give the template inline or the path of a .jinja file")
            text, source = path.read_text(encoding="utf-8"), f"file:{path.resolve()}"
    else:
        found = checkpoint_chat_template(checkpoint_dir)
        text, source = (found, "checkpoint") if found else (FALLBACK_CHAT_TEMPLATE, "fallback")
    _check_template(text, source, model)
    return text, source


def _check_template(text: str, source: str, model: str) -> None:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"models.{model}: chat template ({source}) line {exc.lineno}: {exc.message}") from None


def generation_params(params: dict[str, Any], model: str) -> dict[str, Any]:
    """The effective generation settings: greedy unless sampling is asked for; stop strings as a list."""
    unknown = [k for k in params if k not in _GEN_KEYS]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"models.{model}: unknown generation parameter {key!r}{did_you_mean(key, _GEN_KEYS)}",
                          hint=f"known: {', '.join(_GEN_KEYS)}")
    if "max_tokens" in params and "max_new_tokens" in params:
        raise ConfigError(f"models.{model}: give max_new_tokens or max_tokens, not both")
    p = dict(params)
    out: dict[str, Any] = {"max_new_tokens": int(p.pop("max_new_tokens", p.pop("max_tokens", _DEFAULT_MAX_NEW_TOKENS)))}
    temperature = p.pop("temperature", None)
    do_sample = p.pop("do_sample", None)
    if do_sample is None:
        do_sample = temperature is not None and float(temperature) > 0
    out["do_sample"] = bool(do_sample)
    sampling = {"temperature": temperature, "top_p": p.pop("top_p", None), "top_k": p.pop("top_k", None)}
    if out["do_sample"]:  # greedy ignores these; dropping them keeps the identity (and the cache key) canonical
        out.update({k: v for k, v in sampling.items() if v is not None})
    stop = p.pop("stop", None)
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else list(stop)
        if not stops or not all(isinstance(s, str) and s for s in stops):
            raise ConfigError(f"models.{model}: params.stop must be a non-empty string or list of strings")
        out["stop"] = stops
    out.update({k: v for k, v in p.items() if v is not None})
    if out["max_new_tokens"] < 1:
        raise ConfigError(f"models.{model}: max_new_tokens must be at least 1")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: where its files are and what identifies their content (shared with ``vllm``)."""

    checkpoint: str
    """Absolute path of the checkpoint directory, or the Hub id."""
    checkpoint_dir: Path
    """Local directory (the Hub snapshot for a Hub id)."""
    revision: str | None
    hashes: dict[str, str]
    adapter: str | None
    adapter_dir: Path | None
    adapter_sha256: str | None
    chat_template: str
    chat_template_source: str

    @property
    def chat_template_sha256(self) -> str:
        return hashlib.sha256(self.chat_template.encode()).hexdigest()


def resolve_spec(*, checkpoint: str, adapter: str | None, revision: str | None, chat_template: str | None,
                 suite_dir: Path, model: str) -> ModelSpec:
    """Resolve paths (or Hub snapshots), hash contents and find the chat template; loads no weights."""
    ident, local = resolve_path(checkpoint, suite_dir, "checkpoint", model)
    hashes: dict[str, str]
    if local is None:
        local = _hub_snapshot(ident, revision, model, "checkpoint")
        hashes = {"commit": local.name}  # a Hub snapshot directory is named by its commit: a content address
    else:
        if not (local / "config.json").is_file():
            raise ConfigError(f"models.{model}: checkpoint {ident!r} has no config.json",
                              hint="point at the directory written by save_pretrained()")
        hashes = checkpoint_hashes(local, model)
    adapter_ident = adapter_dir = adapter_hash = None
    if adapter is not None:
        adapter_ident, adapter_dir = resolve_path(adapter, suite_dir, "adapter", model)
        if adapter_dir is None:
            adapter_dir = _hub_snapshot(adapter_ident, None, model, "adapter")
        adapter_hash = adapter_sha256(adapter_dir, model)
    template, source = resolve_chat_template(chat_template, local, suite_dir, model)
    return ModelSpec(ident, local, revision, hashes, adapter_ident, adapter_dir, adapter_hash, template, source)


def render_prompt(tokenizer: Any, template: str, messages: list[dict[str, str]] | tuple[dict[str, str], ...]) -> str:
    """The exact text the model sees: the chat template applied with a generation prompt."""
    return tokenizer.apply_chat_template([dict(m) for m in messages], chat_template=template, tokenize=False,
                                         add_generation_prompt=True)


class HFRunner(Runner):
    """The runner behind ``kind: hf``."""

    kind = "hf"

    def __init__(self, spec: ModelSpec, *, device: str, dtype: str, params: dict[str, Any], batch_size: int,
                 allow_inactive_adapter: bool, context: RunnerContext) -> None:
        self.spec, self.device, self.dtype = spec, device, dtype
        self.params, self.batch_size = params, batch_size
        self.allow_inactive_adapter = allow_inactive_adapter
        self.model_name = context.model_name
        self.adapter_check: dict[str, Any] | None = None
        """After loading: whether the adapter changes the model (LoRA B non-zero, probe logits differ)."""
        self._shared: Any = None
        self._adapter_name: str | None = None
        self._load_error: RunnerError | None = None
        self._ready: asyncio.Future[None] | None = None
        self._batcher: MicroBatcher | None = None

    def identity(self) -> dict[str, Any]:
        s = self.spec
        return {"kind": self.kind, "checkpoint": s.checkpoint, "revision": s.revision, **s.hashes,
                "adapter": s.adapter, "adapter_sha256": s.adapter_sha256,
                "chat_template": {"source": s.chat_template_source, "sha256": s.chat_template_sha256},
                "params": self.params, "dtype": self.dtype, "device": self.device}

    def check(self) -> None:
        if not self.spec.checkpoint_dir.is_dir():
            raise ConfigError(f"models.{self.model_name}: checkpoint {self.spec.checkpoint!r} no longer exists")
        if self.spec.adapter_dir is not None:
            check_adapter_dir(self.spec.adapter_dir, self.model_name)

    @property
    def shared_model(self) -> Any:
        """The process-wide loaded model this runner uses (None before the first request)."""
        return self._shared

    async def start(self) -> None:
        """Load (or join) the shared model and attach the adapter; idempotent. Raises RunnerError."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._load())
        await asyncio.shield(self._ready)

    async def _load(self) -> None:
        from . import hf_models

        if self._shared is None:
            self._shared = hf_models.acquire(hf_models.ModelKey(self.spec.checkpoint, self.spec.revision,
                                                                self.device, self.dtype), self.spec.checkpoint_dir)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._shared.executor, self._shared.load)
            if self.spec.adapter_dir is not None:
                name, report = await loop.run_in_executor(
                    self._shared.executor, self._shared.attach, self.spec.adapter_dir, self.spec.adapter_sha256)
                self._adapter_name, self.adapter_check = name, report
                if not report["active"]:
                    message = f"models.{self.model_name}: adapter {self.spec.adapter} has no effect: {report['reason']}"
                    if not self.allow_inactive_adapter:
                        raise RunnerError(f"{message} (set allow_inactive_adapter: true to run it anyway)")
                    warnings.warn(message, stacklevel=1)
        except RunnerError as exc:
            self._load_error = exc
            raise
        except Exception as exc:  # a broken checkpoint must fail every case with the reason, not crash the run
            self._load_error = RunnerError(f"models.{self.model_name}: loading {self.spec.checkpoint} failed: "
                                           f"{type(exc).__name__}: {str(exc)[:300]}")
            raise self._load_error from None

    async def generate(self, request: Request) -> Response:
        if self._load_error is not None:
            raise self._load_error
        await self.start()
        if self._batcher is None:
            self._batcher = MicroBatcher(self.batch_size, self._run_batch)
        return await self._batcher.submit(request)

    async def _run_batch(self, requests: list[Request]) -> list[Response]:
        results = await asyncio.get_running_loop().run_in_executor(
            self._shared.executor, self._shared.generate_batch, self._adapter_name, self.spec.chat_template,
            [r.messages for r in requests], self.params)
        return [HFResponse(r["text"], r["prompt_tokens"], r["completion_tokens"], r["finish_reason"],
                           r["latency_ms"], rendered_prompt=r["prompt"]) for r in results]

    async def aclose(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        shared, self._shared, self._ready, self._batcher = self._shared, None, None, None
        if shared is not None:
            from . import hf_models

            hf_models.release(shared, self._adapter_name)


class MicroBatcher:
    """Collects concurrent requests for up to BATCH_WAIT_S (or until ``size``) and runs them as one batch.

    Lives on one event loop. A request whose caller gave up (engine timeout) is dropped from a batch not yet
    started; a batch's failure fails each of its requests with a RunnerError.
    """

    def __init__(self, size: int, run: Callable[[list[Request]], Awaitable[list[Response]]]) -> None:
        self.size, self.run = size, run
        self.queue: list[tuple[Request, asyncio.Future[Response]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        self.queue.append((request, future))
        if len(self.queue) >= self.size:
            self.flush()
        elif self.timer is None:
            self.timer = loop.call_later(BATCH_WAIT_S, self.flush)
        return await future

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch = [(r, f) for r, f in self.queue[: self.size] if not f.done()]
        del self.queue[: self.size]
        if self.queue:
            self.timer = asyncio.get_running_loop().call_later(0, self.flush)
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[Request, asyncio.Future[Response]]]) -> None:
        try:
            responses = await self.run([r for r, _ in batch])
            error: RunnerError | None = None
        except RunnerError as exc:
            error = exc
        except Exception as exc:
            error = RunnerError(f"generation failed: {type(exc).__name__}: {str(exc)[:300]}")
        for i, (_, future) in enumerate(batch):
            if future.done():  # the engine gave up on this request
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(responses[i])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for _, future in self.queue:
            if not future.done():
                future.cancel()
        self.queue.clear()


@runner("hf", description="A local Hugging Face checkpoint (transformers), optionally + a PEFT/LoRA adapter")
def hf(
    *,
    checkpoint: str,
    adapter: str | None = None,
    revision: str | None = None,
    device: str = "cpu",
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
    params: dict[str, Any] | None = None,
    chat_template: str | None = None,
    batch_size: int = 8,
    allow_inactive_adapter: bool = False,
    context: RunnerContext,
) -> HFRunner:
    """Generate locally with transformers; base and adapter models on one checkpoint share its weights."""
    require_extra()
    model = context.model_name
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"models.{model}: device {device!r} is not one of cpu, cuda, cuda:N, mps, auto")
    if batch_size < 1:
        raise ConfigError(f"models.{model}: batch_size must be at least 1")
    spec = resolve_spec(checkpoint=checkpoint, adapter=adapter, revision=revision, chat_template=chat_template,
                        suite_dir=Path(context.suite_dir), model=model)
    return HFRunner(spec, device=device, dtype=dtype, params=generation_params(params or {}, model),
                    batch_size=batch_size, allow_inactive_adapter=allow_inactive_adapter, context=context)


@hookimpl
def register_runners(register: Callable[[Any], None]) -> None:
    register(hf)
