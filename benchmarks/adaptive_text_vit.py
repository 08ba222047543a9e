"""Measured against predicted adaptive speed-up of a BERT-like early-exit encoder (sequence
128) and of a ViT with exits, at batch 1 and 32.

    python benchmarks/adaptive_text_vit.py [--shares 0.5 0.3 0.2] [--samples 256] --out J

Models (random weights, built here; no download): the tests' encoder (``tests/text_models.py``:
int64 ids and mask, hidden 256, 4 heads, 6 layers, exits after layers 2/4/6, vocabulary 1000,
each row a random length padded to 128) and ViT (``tests/vit_models.py``: 32x32 RGB, 4x4
patches, hidden 192, 3 heads, 6 blocks, exits after blocks 2/4/6). Random weights give no
calibrated confidences, so the operating point is set by quantiles: on a calibration set
(other samples than the timed ones) each early exit's ``max_prob`` threshold is the value
that lets ``--shares`` of the samples leave there; the shares realised on the timed samples
are reported, and the predictions use them.

Predicted speed-up = full cost / expected cost, expected = sum over exits of (share leaving
there x cost of reaching it), with two costs: the manifest's FLOPs, and the graphs' own
times (each graph's run timed on its cached inputs at the batch size, per sample).
Measured speed-up = time of ``run_all`` (every exit) / time of ``predict`` with the
thresholds, over the same samples (batch 1: one call per sample; batch 32: one per 32),
interleaved in blocks, one intra-op thread; wall and calling-thread CPU time (the steadier
figure on a shared machine; with one thread ONNX Runtime computes in the calling thread).
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
from vit_models import ExitViT  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.decision import softmax  # noqa: E402
from ranet_edge.runtime.evaluation import timing  # noqa: E402
from ranet_edge.runtime.graphs import walk  # noqa: E402


def quantile_thresholds(logits: list[np.ndarray], shares: list[float]) -> list[float]:
    """Per early exit, the max-softmax threshold that lets ``shares[k]`` of all samples leave
    at exit k among those still running (midway between two samples' confidences)."""
    n = len(logits[0])
    alive = np.ones(n, bool)
    thr = []
    for k, share in enumerate(shares[:-1]):
        conf = softmax(logits[k]).max(1)
        c = np.sort(conf[alive])[::-1]
        take = int(round(share * n))
        t = float(np.inf if take == 0 else c[-1] - 1e-9 if take >= len(c) else (c[take - 1] + c[take]) / 2)
        thr.append(t)
        alive &= conf < t
    return thr


def graph_ms(chain: ExitChain, x, repeats: int) -> np.ndarray:
    """Each graph's median ms per sample on its cached inputs (interleaved)."""
    first = x if isinstance(x, dict) else {chain.input_name: x}
    graphs = chain.graphs
    feeds = [f for _, f, _ in walk([g.inputs for g in graphs], first, lambda g, f: graphs[g].run(f))]
    fns = {g: (lambda gi=gi, f=f: gi.session.run(gi.output_names, f)) for g, (gi, f) in
           enumerate(zip(chain.graphs, feeds))}
    t = timing.interleaved(fns, repeats, warmup=2, block=max(1, repeats // 4), settle=1)
    return np.array([t.median_ms(g) for g in fns]) / len(next(iter(feeds[0].values())))


def measure(chain: ExitChain, calib, test, n: int, shares: list[float], slice_rows) -> dict:
    thr = quantile_thresholds(chain.run_all(calib), shares)
    flops = np.asarray(chain.manifest.exit_costs("flops"), float)
    out: dict = {"thresholds": thr}
    for batch in (1, 32):
        calls = [slice_rows(test, i, i + batch) for i in range(0, n, batch)]
        counts = np.zeros(chain.num_exits, int)
        for xb in calls:
            counts += np.bincount(chain.predict(xb, thr).exits, minlength=chain.num_exits)
        share = counts / counts.sum()
        g_ms = graph_ms(chain, calls[0], 30 if batch == 1 else 6)
        exit_graph = [next(g for g, gi in enumerate(chain.graphs) if k in gi.exits) for k in range(chain.num_exits)]
        cum_ms = np.cumsum(g_ms)[exit_graph]
        predicted = {"flops": float(flops[-1] / (share @ flops)), "graph_times": float(cum_ms[-1] / (share @ cum_ms))}
        fns = {"every_exit": lambda xb: chain.run_all(xb), "adaptive": lambda xb: chain.predict(xb, thr)}
        for xb in calls[:3]:
            for f in fns.values():
                f(xb)
        cursors = {k: iter(calls * 2) for k in fns}
        t = timing.interleaved({k: (lambda f=f, it=cursors[k]: f(next(it))) for k, f in fns.items()},
                               2 * len(calls), warmup=0, block=max(1, len(calls) // 4), settle=0, cpu=True)
        wall = {k: float(v.sum()) for k, v in t.times.items()}
        cpu = {k: float(v.sum()) for k, v in t.cpu.items()}
        measured = {"wall": wall["every_exit"] / wall["adaptive"], "cpu": cpu["every_exit"] / cpu["adaptive"]}
        out[f"batch{batch}"] = {
            "samples": int(counts.sum()), "exit_shares": share.tolist(), "graph_ms_per_sample": g_ms.tolist(),
            "ms_per_sample": {k: 1e3 * v / (2 * counts.sum()) for k, v in wall.items()},
            "preempted": {k: float(v.mean()) for k, v in t.preempted.items()},
            "predicted_speedup": predicted, "measured_speedup": measured,
            "measured_over_predicted": {f"{m}/{p}": measured[m] / predicted[p] for m in measured for p in predicted},
        }
        print(f"  batch {batch:>2}: shares {', '.join(f'{s:.2f}' for s in share)}; predicted x{predicted['graph_times']:.2f}"
              f" (graph times), x{predicted['flops']:.2f} (FLOPs); measured x{measured['wall']:.2f} wall, "
              f"x{measured['cpu']:.2f} CPU; measured/predicted (graph times) {measured['wall'] / predicted['graph_times']:.3f}"
              f" wall, {measured['cpu'] / predicted['graph_times']:.3f} CPU", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shares", type=float, nargs="+", default=[0.5, 0.3, 0.2])
    ap.add_argument("--samples", type=int, default=256, help="timed samples (a multiple of 32)")
    ap.add_argument("--out", default="benchmarks/results/adaptive_text_vit.json")
    args = ap.parse_args()
    if len(args.shares) != 3 or abs(sum(args.shares) - 1) > 1e-6 or args.samples % 32:
        sys.exit("error: --shares takes 3 shares summing to 1 and --samples a multiple of 32")
    n = args.samples
    result: dict = {"onnxruntime": ort.__version__, "threads": 1, "shares_asked": args.shares}
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text"
        export_model(EarlyExitBert(vocab=1000, dim=256, heads=4, max_len=128).eval(), text,
                     text_batch(2, 16, vocab=1000), ExportSpec(dynamic_axes=SEQUENCE), log=lambda m: None)
        chain = ExitChain.load(text, threads=1)
        calib = {k: v.numpy() for k, v in text_batch(n, 128, vocab=1000, seed=1).items()}
        test = {k: v.numpy() for k, v in text_batch(n, 128, vocab=1000, seed=2).items()}
        print("BERT-like encoder, hidden 256, 4 heads, sequence 128:")
        result["text_encoder"] = {"hidden": 256, "heads": 4, "layers": 6, "sequence": 128, "exits_after": [2, 4, 6],
                                  **measure(chain, calib, test, n, args.shares,
                                            lambda x, a, b: {k: v[a:b] for k, v in x.items()})}
        vit = Path(tmp) / "vit"
        export_model(ExitViT().eval(), vit, (3, 32, 32), ExportSpec(), log=lambda m: None)
        chain = ExitChain.load(vit, threads=1)
        rng = np.random.default_rng(0)
        calib, test = (rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for _ in range(2))
        print("ViT, 32x32, patch 4, hidden 192, 3 heads, 6 blocks:")
        result["vit"] = {"image": 32, "patch": 4, "hidden": 192, "heads": 3, "blocks": 6, "exits_after": [2, 4, 6],
                         **measure(chain, calib, test, n, args.shares, lambda x, a, b: x[a:b])}
    write(args.out, result)


if __name__ == "__main__":
    main()
