"""Rewrite the docs' generated parts from benchmarks/results/*.json and the shipped model: the
``<!-- generated:NAME -->`` blocks of docs/performance.md, docs/guides/training.md and
docs/guides/serving.md (each block is looked for in README.md and every page under docs/).

    python benchmarks/readme_tables.py      (after benchmarks/run_all.sh)

Replaces the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``. The
tables themselves are written by tables_performance.py and tables_serving.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from tables_performance import performance
from tables_serving import serving, serving_load

from ranet_edge.runtime.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def default_model() -> str:
    ck = torch.load(ROOT / "ranet_edge/assets/default.pt", weights_only=True)
    flops = load_manifest(ROOT / "ranet_edge/assets/default-bundle", verify=False).exit_costs("flops")
    secs = sum(h["seconds"] for h in ck["history"])
    k = len(ck["val_acc"])
    return "\n".join([
        f"{ck['train_options']['epochs']} epochs, {secs / 60:.0f} minutes of epoch time on the 2-core CPU up to the "
        f"shipped epoch {ck['epoch']}. Its validation top-1 per exit (5,000 held-out images; training log: "
        "`benchmarks/results/default-model-train.log`):",
        "",
        "| exit | " + " | ".join(str(i) for i in range(k)) + " |",
        "| --- |" + " --- |" * k,
        "| top-1 (%) | " + " | ".join(f"{a:.2f}" for a in ck["val_acc"]) + " |",
        "| MFLOPs | " + " | ".join(f"{f / 1e6:.2f}" for f in flops) + " |",
    ])


def pages() -> list[Path]:
    """Where generated blocks may live: the README and every page of the docs site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main() -> None:
    texts = {page: page.read_text() for page in pages()}
    for name, body in (("default-model", default_model()), ("performance", performance()), ("serving", serving()),
                       ("serving-load", serving_load())):
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
        found = [page for page, text in texts.items() if pattern.search(text)]
        if len(found) != 1:
            raise SystemExit(f"<!-- generated:{name} --> must be in exactly one page of README.md and docs/, "
                             f"found in {len(found)}: {[str(f.relative_to(ROOT)) for f in found]}")
        texts[found[0]] = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(2), texts[found[0]])
    for page, text in texts.items():
        if text != page.read_text():
            page.write_text(text)
            print(f"{page.relative_to(ROOT)} updated")


if __name__ == "__main__":
    main()
