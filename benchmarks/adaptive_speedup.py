"""Adaptive inference against the monolithic graph and PyTorch eager, at iso-accuracy.

The operating point is the cheapest one whose accuracy on the calibration half reaches the
final exit's accuracy there (iso-accuracy); figures are measured on the other half.
Baselines: the monolithic ONNX graph (all exits, what the official code computes) and the
PyTorch model (eager, same thread count), both at batch 1 and at batch 64.

    python benchmarks/adaptive_speedup.py --bundle B --ckpt C [--data DIR --holdout 5000] --out J
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import torch
from _common import held_out_images, write

from ranet_edge.checkpoint import load_checkpoint
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.evaluation import calibration as cal
from ranet_edge.runtime.evaluation import collect, timing
from ranet_edge.runtime.operating_points import thresholds_to_json
from ranet_edge.runtime.providers import session_options


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=1000, help="timed images at batch 1")
    ap.add_argument("--out", default="benchmarks/results/adaptive_speedup.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chain = ExitChain.load(args.bundle, threads=args.threads)
    x_u8, y = held_out_images(args.data, args.holdout)
    perm = np.random.default_rng([0, 1]).permutation(len(y))
    val, test = perm[: len(y) // 2], perm[len(y) // 2:]
    outs = collect(chain, x_u8[val], y[val])
    conf, correct = outs.conf_correct()
    flops = np.asarray(chain.manifest.exit_costs("flops"), float)
    final_acc = float(correct[-1].mean())
    point = cal.for_accuracy(conf, correct, flops, final_acc)
    thr = [t if t <= 1 else np.inf for t in point.thresholds[:-1]]

    xt, yt = chain.preprocess(x_u8[test]), y[test]
    res = chain.predict(xt, thr)
    counts = np.bincount(res.exits, minlength=chain.num_exits)
    expected = float(counts @ flops / len(yt))
    model = load_checkpoint(args.ckpt).model.eval()
    mono = ort.InferenceSession(str(chain.manifest.root / chain.manifest.monolithic.path),
                                session_options(args.threads), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        torch_final = np.concatenate([model(torch.from_numpy(xt[i:i + 256]))[-1].numpy()
                                      for i in range(0, len(xt), 256)])
    result = {
        "threads": args.threads, "eval_images": int(len(yt)),
        "thresholds": thresholds_to_json([float(t) for t in thr]), "exit_counts": counts.tolist(),
        "accuracy": {"adaptive": float((res.labels == yt).mean()),
                     "final_exit": float((torch_final.argmax(1) == yt).mean()),
                     "val_final_exit": final_acc, "val_adaptive": point.accuracy},
        "mflops": {"adaptive_expected": expected / 1e6, "final_exit": float(flops[-1]) / 1e6},
        "predicted_speedup": float(flops[-1] / expected),
    }
    name = chain.input_name
    fns = {
        "adaptive": lambda xb: chain.predict(xb, thr),
        "monolithic": lambda xb: mono.run(None, {name: xb}),
        "torch_eager": lambda xb: model(torch.from_numpy(xb)),
    }
    for batch in (1, 64):
        n = min(args.images, len(xt)) if batch == 1 else (len(xt) // 64) * 64
        batches = [xt[i:i + batch] for i in range(0, n, batch)]
        block = 100  # interleave in blocks: side by side, without each call evicting the others' caches
        with torch.no_grad():
            for xb in batches[:5]:  # warm-up
                for f in fns.values():
                    f(xb)
            cursors = {k: iter(batches) for k in fns}
            t = timing.interleaved({k: (lambda f=f, it=cursors[k]: f(next(it))) for k, f in fns.items()},
                                   len(batches), warmup=0, block=block, settle=0)
        times = t.times
        per_img = {k: 1e3 * float(v.sum()) / n for k, v in times.items()}
        result[f"batch{batch}"] = {
            "images": n, "ms_per_image": per_img,
            "p99_ms_per_call": {k: 1e3 * float(np.percentile(v, 99)) for k, v in times.items()},
            "preempted": {k: float(v.mean()) for k, v in t.preempted.items()},
            "speedup_vs_monolithic": per_img["monolithic"] / per_img["adaptive"],
            "speedup_vs_torch_eager": per_img["torch_eager"] / per_img["adaptive"],
            "measured_over_predicted": (per_img["monolithic"] / per_img["adaptive"]) / result["predicted_speedup"],
        }
    write(args.out, result)
    for b in ("batch1", "batch64"):
        r = result[b]
        print(f"{b}: adaptive {r['ms_per_image']['adaptive']:.3f} ms/img, monolithic "
              f"{r['ms_per_image']['monolithic']:.3f}, torch {r['ms_per_image']['torch_eager']:.3f}; "
              f"x{r['speedup_vs_monolithic']:.2f} vs monolithic (FLOPs predict x{result['predicted_speedup']:.2f}), "
              f"x{r['speedup_vs_torch_eager']:.2f} vs torch")


if __name__ == "__main__":
    main()
