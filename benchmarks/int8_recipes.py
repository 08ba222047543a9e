"""int8 recipes side by side: per-exit accuracy lost and latency against the fp32 chain.

    python benchmarks/int8_recipes.py --bundle B --data DIR --holdout 5000 [--threads 1] --out J

Each recipe (export/quantize.py: Int8Recipe) is calibrated on the first --calib-size
held-out images and evaluated on the rest; every chain computes all exits (run_all), timed
interleaved in one process with the fp32 chain.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import held_out_images, interleaved, write

from ranet_edge.export.convert import convert_bundle
from ranet_edge.export.quantize import Int8Recipe
from ranet_edge.runtime import ExitChain

RECIPES = {
    "u8s8-per-channel-shared-concat": Int8Recipe(),  # the default
    "u8s8-per-channel": Int8Recipe(shared_concat_scales=False),
    "u8s8-per-tensor": Int8Recipe(per_channel=False, shared_concat_scales=False),
    "u8s8-per-tensor-shared-concat": Int8Recipe(per_channel=False),
    "s8s8-per-channel": Int8Recipe(activations="int8", shared_concat_scales=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--eval-size", type=int, default=4500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--work", default="../build/bench/int8-recipes")
    ap.add_argument("--out", default="results/int8_recipes.json")
    args = ap.parse_args()
    x_u8, y = held_out_images(args.data, args.holdout)
    calib, test = x_u8[: args.calib_size], slice(args.calib_size, args.calib_size + args.eval_size)
    chains = {"fp32": ExitChain.load(args.bundle, threads=args.threads)}
    for name in args.recipes.split(","):
        out = Path(args.work) / name
        convert_bundle(args.bundle, out, "int8", images=calib, calib_size=len(calib), force=True, log=lambda m: None,
                       int8_recipe=RECIPES[name])
        chains[name] = ExitChain.load(out, threads=args.threads)
    xt, yt = chains["fp32"].preprocess(x_u8[test]), y[test]
    top1 = {}
    for name, chain in chains.items():
        logits = [np.concatenate(col) for col in zip(*[chain.run_all(xt[i:i + 250]) for i in range(0, len(xt), 250)])]
        top1[name] = [float((z.argmax(1) == yt).mean()) for z in logits]
    result: dict = {"threads": args.threads, "eval_images": int(len(yt)), "calibration_images": int(len(calib)),
                    "recipes": {k: RECIPES[k].describe() for k in chains if k != "fp32"}, "top1": top1,
                    "points_lost": {k: [100 * (b - a) for a, b in zip(v, top1["fp32"])] for k, v in top1.items()}}
    for batch in (1, 64):
        xb = xt[:batch]
        t = interleaved({k: (lambda c=c, xb=xb: c.run_all(xb)) for k, c in chains.items()},
                        600 if batch == 1 else 60, block=100 if batch == 1 else 10, settle=10 if batch == 1 else 2)
        med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
        result[f"run_all_ms_batch{batch}"] = med
        result[f"over_fp32_batch{batch}"] = {k: v / med["fp32"] for k, v in med.items()}
    print(f"{'recipe':<34}{'max points lost':>16}{'int8/fp32 b1':>14}{'int8/fp32 b64':>15}")
    for k in chains:
        print(f"{k:<34}{max(result['points_lost'][k]):>16.2f}{result['over_fp32_batch1'][k]:>14.3f}"
              f"{result['over_fp32_batch64'][k]:>15.3f}")
    write(args.out, result)


if __name__ == "__main__":
    main()
