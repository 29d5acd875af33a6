"""Copy the shared golden data into evals/<use case>/cases.jsonl and make the recorded demo outputs.

Run from the repo root with the project's shared data beside it: ``python evals/prepare.py ../shared/data``.
The copies are verbatim except product_description, which gains ``required_terms`` = [brand] (the mandated
terminology a product copywriter must use) from the row's own ``meta.product.brand``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

USE_CASES = {
    "support_intent": True,  # True: a classification task
    "sentiment": True,
    "product_description": False,
    "translation": False,
    "domain_assistant": False,
}


def main() -> None:
    shared = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    here = Path(__file__).resolve().parent
    for name, classification in USE_CASES.items():
        out = here / name
        out.mkdir(exist_ok=True)
        rows = [json.loads(line) for line in (shared / f"{name}.shared.jsonl").read_text("utf-8").splitlines() if line]
        if name == "product_description":
            for r in rows:
                brand = (r["meta"].get("product") or {}).get("brand")
                r["required_terms"] = [brand] if brand else []
        with (out / "cases.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        cmd = [sys.executable, str(here / "make_demo_outputs.py"), str(out / "cases.jsonl"), str(out)]
        subprocess.run(cmd + (["--classification"] if classification else []), check=True)


if __name__ == "__main__":
    main()
