"""Make the recorded base/tuned outputs that let the example suites run offline.

THESE ARE NOT LANGUAGE-MODEL OUTPUTS. No model can be downloaded on the machines this project is built on, so
the offline demo replays deterministic stand-ins that behave like the two models a team compares:

- ``base`` (an untuned model): answers with the golden answer of the most similar *other* case (word overlap,
  leave-one-out) with lay wording instead of the domain's terms -- plausible, on topic, often wrong. For
  classification it guesses the label of the most similar other case, wrapped in chatty text, and sometimes
  names no label at all.
- ``tuned`` (a fine-tuned model): the golden answer, lightly shortened; for a seeded ~12% of cases it falls
  back to the base answer (regressions), so the comparison has flips in both directions. For classification
  it answers the gold label with seeded ~10% mistakes.

Run ``python evals/make_demo_outputs.py CASES.jsonl OUTDIR [--classification]``; it writes OUTDIR/base.jsonl and
OUTDIR/tuned.jsonl (``{"id", "output", "latency_ms", "prompt_tokens", "completion_tokens"}`` per line). Point a
suite's models at real endpoints to evaluate real models (see the README).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

LAY_TERMS = {  # what an untuned model tends to say instead of the mandated term
    "out-of-pocket maximum": "spending cap",
    "deductible": "amount you pay first",
    "premium": "monthly price",
    "coinsurance": "your share",
    "copayment": "fee",
    "Marketplace": "government website",
    "open enrollment": "sign-up season",
}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if len(w) > 3}


def unit(seed: str) -> float:
    return int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def nearest_other(i: int, bags: list[set[str]]) -> int:
    best, best_score = (i + 1) % len(bags), -1.0
    for j, bag in enumerate(bags):
        if j == i:
            continue
        score = len(bags[i] & bag) / (len(bags[i] | bag) or 1)
        if score > best_score:
            best, best_score = j, score
    return best


def lay(text: str) -> str:
    for term, plain in LAY_TERMS.items():
        text = re.sub(rf"\b{re.escape(term)}s?\b", plain, text, flags=re.IGNORECASE)
    return text


def shorten(text: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(sentences[: max(1, len(sentences) - 1)]) if len(sentences) > 2 else text.strip()


def record(case_id: str, output: str, model: str, prompt: str) -> dict:
    latency = 180 + 900 * unit(f"{model}:{case_id}:latency") + 8 * len(output.split())
    return {"id": case_id, "output": output, "latency_ms": round(latency, 1),
            "prompt_tokens": len(prompt.split()) + 24, "completion_tokens": len(output.split())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--classification", action="store_true")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.cases.read_text(encoding="utf-8").splitlines() if line.strip()]
    bags = [words(r["input"]) for r in rows]
    base, tuned = [], []
    for i, r in enumerate(rows):
        other = rows[nearest_other(i, bags)]
        if args.classification:
            guess = other["expected"]
            u = unit(f"base:{r['id']}")
            b = "I'm not sure which category this is." if u < 0.08 else f"This looks like: {guess}."
            t = r["expected"]
            if unit(f"tuned:{r['id']}") < 0.10:
                t = guess if guess != r["expected"] else next(x for x in r["labels"] if x != r["expected"])
        else:
            b = lay(other["expected"])
            t = shorten(r["expected"]) if unit(f"tuned:{r['id']}") >= 0.12 else b
        base.append(record(r["id"], b, "base", r["input"]))
        tuned.append(record(r["id"], t, "tuned", r["input"]))
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name, recs in (("base", base), ("tuned", tuned)):
        with (args.outdir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for rec in recs:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"wrote {len(base)} base and {len(tuned)} tuned outputs to {args.outdir}")


if __name__ == "__main__":
    main()
