"""Padding the sequence axis of a text encoder: to the call's longest row, to a few bucket
lengths, or always to the full length. Does bucketing pay?

    python benchmarks/text_buckets.py [--buckets 16 32 64 128] [--samples 128] [--passes 3] --out J

The encoder is the tests' BERT-like one (``tests/text_models.py``: hidden 256, 4 heads, 6
layers, exits after 2/4/6, vocabulary 1000; random weights), exported with a dynamic
sequence axis. The rows have lengths drawn uniformly from 8 to 128 tokens, in arrival order
(not sorted by length); at batch 32 a fourth strategy first sorts the rows by length (a
caller grouping similar lengths) and pads each call to its longest. Each strategy pads every call's rows with id 0 and mask 0 to its
length, and ``run_all`` runs every exit (one intra-op thread); calls of 1 and of 32 rows. The
figure is ms per sample over the whole set (the calls differ in cost), the median over
``--passes`` interleaved passes, wall and calling-thread CPU time. At batch 1 every call of
a new length builds a bound plan (``runtime/executors/host.py``), which is part of what
bucketing could save; the chain keeps 4 plans per thread. The padded rows' logits are checked
against the unpadded ones (masked padding changes nothing but rounding).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import write

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from text_models import SEQUENCE, EarlyExitBert, text_batch  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.evaluation import timing  # noqa: E402


def padded(ids: np.ndarray, lengths: np.ndarray, to: int) -> dict[str, np.ndarray]:
    """Rows of ``ids`` cut to their ``lengths`` and padded with 0 (mask 0) to ``to`` tokens."""
    keep = np.arange(to)[None, :] < lengths[:, None]
    return {"input_ids": np.where(keep, ids[:, :to], 0), "attention_mask": keep.astype(np.int64)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buckets", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/text_buckets.json")
    args = ap.parse_args()
    full = max(args.buckets)
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, full + 1, args.samples)
    ids = text_batch(args.samples, full, vocab=1000, seed=5)["input_ids"].numpy()
    ids[:, 0] = 1
    buckets = np.array(sorted(args.buckets))
    to = {"longest": lambda ln: int(ln.max()), "buckets": lambda ln: int(buckets[np.searchsorted(buckets, ln.max())]),
          "full": lambda ln: full}
    result: dict = {"onnxruntime": ort.__version__, "threads": 1, "hidden": 256, "heads": 4, "layers": 6,
                    "lengths": "uniform 8..128", "buckets": buckets.tolist(), "samples": args.samples}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        export_model(EarlyExitBert(vocab=1000, dim=256, heads=4, max_len=full).eval(), bundle,
                     text_batch(2, 16, vocab=1000), ExportSpec(dynamic_axes=SEQUENCE), log=lambda m: None)
        chain = ExitChain.load(bundle, threads=1)
        for batch in (1, 32):
            calls = {name: [padded(ids[i:i + batch], lengths[i:i + batch], f(lengths[i:i + batch]))
                            for i in range(0, args.samples, batch)] for name, f in to.items()}
            if batch > 1:  # the caller groups rows of similar length before batching them
                order = np.argsort(lengths, kind="stable")
                calls["sorted_longest"] = [padded(ids[order[i:i + batch]], lengths[order[i:i + batch]],
                                                  int(lengths[order[i:i + batch]].max()))
                                           for i in range(0, args.samples, batch)]
            worst = 0.0
            for a, b in zip(calls["longest"], calls["full"]):
                for za, zb in zip(chain.run_all(a), chain.run_all(b)):
                    worst = max(worst, float(np.abs(za - zb).max() / np.abs(zb).max()))
            fns = {name: (lambda cs=cs: [chain.run_all(c) for c in cs]) for name, cs in calls.items()}
            t = timing.interleaved(fns, args.passes, warmup=1, block=1, settle=0, cpu=True)
            ms = {k: 1e3 * float(np.median(v)) / args.samples for k, v in t.times.items()}
            cpu = {k: 1e3 * float(np.median(v)) / args.samples for k, v in t.cpu.items()}
            mean_len = {name: float(np.mean([c["input_ids"].shape[1] for c in cs for _ in range(len(c["input_ids"]))]))
                        for name, cs in calls.items()}
            result[f"batch{batch}"] = {"ms_per_sample": ms, "cpu_ms_per_sample": cpu, "mean_padded_length": mean_len,
                                       "max_rel_diff_longest_vs_full": worst,
                                       "buckets_over_longest_cpu": cpu["buckets"] / cpu["longest"],
                                       "full_over_longest_cpu": cpu["full"] / cpu["longest"]}
            print(f"batch {batch:>2}: " + "; ".join(f"{k}: {cpu[k]:.2f} ms/sample CPU, {ms[k]:.2f} wall, mean padded "
                                                    f"length {mean_len[k]:.1f}" for k in calls)
                  + f"; max rel diff padded vs not {worst:.1e}", flush=True)
    write(args.out, result)


if __name__ == "__main__":
    main()
