"""Tiny real Hugging Face models for tests, built from scratch (nothing is downloaded).

``build_tiny_models(root)`` trains a byte-level BPE tokenizer on a few KB of golden text, builds a 2-layer GPT-2
(64-dim), pre-trains it for a few steps so its greedy outputs are not a flat tie, saves it with
``save_pretrained``, then fine-tunes a LoRA adapter on golden sentiment cases: one checkpoint after a few steps,
a second after more steps, and a freshly initialised adapter (LoRA B = 0, so it has no effect) for the
"adapter not applied" check. Every path is absolute, because PEFT stores the base-model path as given.

``tiny_models`` is a session fixture; test modules load this file as a plugin (``pytest_plugins``), so every
module of a test process shares ONE build. (PYTEST_DONT_REWRITE: plain helpers, imported before pytest
registers the plugin; there are no asserts here to rewrite.)
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

EVALS = Path(__file__).resolve().parent.parent / "evals"  # verbatim copies of the shared golden data

# The checkpoint's own chat template: role markers are special tokens, so they survive as single tokens.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>"]
PROMPT = "Sentiment of: {text}\nAnswer positive or negative."


@dataclass(frozen=True)
class TinyModels:
    """Paths of the built artefacts (all absolute) and what they were built from."""

    root: Path
    checkpoint: Path
    """Base checkpoint whose tokenizer carries :data:`CHAT_TEMPLATE`."""
    plain_checkpoint: Path
    """The same weights, with a tokenizer that has no chat template (the runner's fallback applies)."""
    adapter: Path
    """LoRA adapter after ``steps[0]`` training steps (B ≠ 0)."""
    adapter2: Path
    """The same training run after ``steps[1]`` steps."""
    zero_adapter: Path
    """A freshly initialised LoRA adapter: every B matrix is zero, so it changes nothing."""
    steps: tuple[int, int]
    cases: list[dict[str, Any]] = field(default_factory=list)
    """The golden cases the adapter was trained on (id, input, expected)."""
    seconds: float = 0.0
    """Time the build took (imports included)."""


def golden_cases(n: int = 12) -> list[dict[str, Any]]:
    """The first ``n`` real sentiment cases from the shared golden data."""
    rows = []
    with (EVALS / "sentiment" / "cases.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows.append({"id": row["id"], "input": row["input"], "expected": row["expected"]})
            if len(rows) == n:
                break
    return rows


def _corpus() -> list[str]:
    texts = []
    for name in ("sentiment/cases.jsonl", "support_intent/cases.jsonl"):
        with (EVALS / name).open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                row = json.loads(line)
                texts.append(f"{row['input']} {row['expected']}")
                if i == 150:
                    break
    return texts


def _tokenizer(corpus: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([*corpus, PROMPT], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[1:])
    return tok


def _examples(tok: Any, cases: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """Training texts (prompt through the chat template + golden answer + eos) and each prompt's token count."""
    texts, prompt_lens = [], []
    for c in cases:
        messages = [{"role": "user", "content": PROMPT.format(text=c["input"])}]
        prompt = tok.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                         add_generation_prompt=True)
        texts.append(prompt + c["expected"] + tok.eos_token)
        prompt_lens.append(len(tok(prompt, add_special_tokens=False)["input_ids"]))
    return texts, prompt_lens


def _train(model: Any, tok: Any, texts: list[str], steps: int, lr: float, seed: int,
           prompt_lens: list[int] | None = None) -> None:
    """Full-batch AdamW steps; with ``prompt_lens`` the loss covers only the answer tokens."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    tok.padding_side = "right"  # training pads on the right: real tokens keep positions 0..n-1
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    for i, n in enumerate(prompt_lens or []):
        labels[i, :n] = -100
    model.train()
    for _ in range(steps):
        loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def build_tiny_models(root: Path, steps: tuple[int, int] = (10, 40)) -> TinyModels:
    """Build everything under ``root`` (absolute paths); takes a few seconds, most of it imports."""
    started = time.perf_counter()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    root = root.resolve()
    torch.manual_seed(0)
    cases = golden_cases()
    tok = _tokenizer(_corpus())
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    # A little pre-training on golden text gives peaked next-token distributions (no near-ties in greedy decoding).
    _train(model, tok, [t[:160] + tok.eos_token for t in _corpus()[:24]], steps=20, lr=3e-3, seed=0)

    checkpoint = root / "base"
    model.save_pretrained(checkpoint)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(checkpoint)

    plain = root / "base-plain"
    model.save_pretrained(plain)
    tok.chat_template = None
    tok.save_pretrained(plain)
    for leftover in plain.glob("chat_template.*"):  # belt and braces: no template may survive the copy
        leftover.unlink()

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_fc"], lora_dropout=0.0,
                      fan_in_fan_out=True, task_type="CAUSAL_LM")
    zero = get_peft_model(GPT2LMHeadModel.from_pretrained(checkpoint), lora)
    zero_adapter = root / "adapter-zero"
    zero.save_pretrained(zero_adapter)

    peft_model = get_peft_model(GPT2LMHeadModel.from_pretrained(checkpoint), lora)
    texts, prompt_lens = _examples(tok, cases)
    run = root / "runs" / "exp1"
    _train(peft_model, tok, texts, steps=steps[0], lr=1e-2, seed=1, prompt_lens=prompt_lens)
    adapter = run / f"checkpoint-{steps[0]}"
    peft_model.save_pretrained(adapter)
    _train(peft_model, tok, texts, steps=steps[1] - steps[0], lr=1e-2, seed=2, prompt_lens=prompt_lens)
    adapter2 = run / f"checkpoint-{steps[1]}"
    peft_model.save_pretrained(adapter2)
    return TinyModels(root, checkpoint, plain, adapter, adapter2, zero_adapter, steps, cases,
                      time.perf_counter() - started)


_BUILT: dict[str, TinyModels] = {}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """One build per test process (the memo also covers a module that imports the fixture directly)."""
    import torch

    # One intra-op thread: with pytest-xdist's two workers on two cores, torch's default (one thread per core
    # in each worker) oversubscribes the CPU and makes these tiny matrix ops ~8x slower.
    torch.set_num_threads(1)
    if "models" not in _BUILT:
        _BUILT["models"] = build_tiny_models(tmp_path_factory.mktemp("tinymodels"))
    return _BUILT["models"]


def copy_adapter(src: Path, dst: Path) -> Path:
    """A copy of an adapter directory (to change its weights without touching the shared one)."""
    shutil.copytree(src, dst)
    return dst.resolve()


def write_suite(m: TinyModels, tmp_path: Path, *, name: str, adapter: Path, metrics: str = "") -> Path:
    """A suite comparing the tiny checkpoint (base) with checkpoint + ``adapter`` (tuned) on the tiny cases."""
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in m.cases), encoding="utf-8")
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        models:
          base:
            runner: hf
            checkpoint: {m.checkpoint}
            params: {{max_new_tokens: 6}}
          tuned:
            runner: hf
            checkpoint: {m.checkpoint}
            adapter: {adapter}
            params: {{max_new_tokens: 6}}
        prompt:
          template: "Sentiment of: {{{{ input }}}}\\nAnswer positive or negative."
        cases:
          path: cases.jsonl
        metrics:
          exact: {{type: exact_match}}
        """) + metrics, encoding="utf-8")
    return path
