"""int8 / fp16 / ORT bundles against fp32: per-exit accuracy, CPU latency, mobile coverage.

    python benchmarks/edge_formats.py --bundle B [--data DIR --holdout 5000] [--threads 1,2] --out J

Latency: every chain computes all exits (run_all); int8 and fp16 against fp32, timed
interleaved in settled blocks for each thread setting (spinning off); the ratios are
medians over --rounds rounds of per-round ratios of medians over the calls no other
process preempted (``_common.interleaved``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import held_out_images, interleaved, median_ms, write

from ranet_edge.export.convert import convert_bundle
from ranet_edge.runtime import ExitChain


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--holdout", type=int, default=5000)
    ap.add_argument("--calib-size", type=int, default=500)
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (spinning off)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="../build/bench/edge")
    ap.add_argument("--out", default="results/edge_formats.json")
    args = ap.parse_args()
    x_u8, y = held_out_images(args.data, args.holdout)
    calib, test = x_u8[: args.calib_size], slice(args.calib_size, None)
    work = Path(args.work)
    bundles = {"fp32": Path(args.bundle)}
    written = {}  # each converted bundle's manifest, as convert_bundle wrote it
    for target in ("int8", "fp16", "ort"):
        bundles[target] = work / target
        written[target] = convert_bundle(args.bundle, bundles[target], target, 1, calib if target == "int8" else x_u8[:300],
                       args.calib_size, force=True, log=lambda m: None)
    chains = {k: ExitChain.load(v, threads=1) for k, v in bundles.items()}
    xt, yt = chains["fp32"].preprocess(x_u8[test]), y[test]
    result: dict = {"eval_images": int(len(yt)), "calibration_images": int(len(calib)), "top1": {}}
    for name, chain in chains.items():
        logits = [np.concatenate(col) for col in zip(*[chain.run_all(xt[i:i + 250]) for i in range(0, len(xt), 250)])]
        result["top1"][name] = [float((z.argmax(1) == yt).mean()) for z in logits]
    result["int8_minus_fp32_points"] = [100 * (a - b) for a, b in zip(result["top1"]["int8"], result["top1"]["fp32"])]
    result["int8_recipe"] = written["int8"].get("int8", {}).get("recipe")
    result["latency"] = {}
    for threads in (int(v) for v in args.threads.split(",")):
        timed = {k: ExitChain.load(bundles[k], threads=threads) for k in ("fp32", "int8", "fp16")}
        per_thread = result["latency"][str(threads)] = {}
        for batch in (1, 64):
            xb = xt[:batch]
            rounds, rounds_cpu, skipped = [], [], []
            for _ in range(args.rounds):
                cpu: dict = {}
                pre: dict = {}
                t = interleaved({k: (lambda c=c, xb=xb: c.run_all(xb)) for k, c in timed.items()},
                                600 if batch == 1 else 40, block=100 if batch == 1 else 10, settle=10 if batch == 1 else 2,
                                cpu=cpu, preempted=pre)
                rounds.append({k: median_ms(v, pre[k]) for k, v in t.items()})
                rounds_cpu.append({k: median_ms(v, pre[k]) for k, v in cpu.items()})
                skipped.append({k: float(v.mean()) for k, v in pre.items()})
            med = {k: float(np.median([r[k] for r in rounds])) for k in timed}
            ratios = [r["int8"] / r["fp32"] for r in rounds]
            entry = per_thread[f"batch{batch}"] = {
                "run_all_ms": med, "int8_over_fp32": float(np.median(ratios)), "round_ratios": ratios,
                "fp16_over_fp32": float(np.median([r["fp16"] / r["fp32"] for r in rounds])),
                "preempted_share": {k: float(np.mean([r[k] for r in skipped])) for k in timed}}
            line = (f"threads {threads}, batch {batch:>2}: fp32 {med['fp32']:.3f} ms, int8 {med['int8']:.3f} ms, "
                    f"int8/fp32 x{np.median(ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)})")
            if threads == 1:  # ONNX Runtime computes in the calling thread: its CPU time is the work
                cpu_ratios = [r["int8"] / r["fp32"] for r in rounds_cpu]
                entry.update(cpu_int8_over_fp32=float(np.median(cpu_ratios)), cpu_round_ratios=cpu_ratios)
                line += f"; thread CPU time x{np.median(cpu_ratios):.3f}"
            print(line)
    first = result["latency"][args.threads.split(",")[0]]
    for batch in (1, 64):  # the first thread setting at the top level, as before
        result[f"run_all_ms_batch{batch}"] = first[f"batch{batch}"]["run_all_ms"]
        result[f"int8_over_fp32_batch{batch}"] = first[f"batch{batch}"]["int8_over_fp32"]
    result["mobile_coverage"] = chains["ort"].manifest.mobile_report
    write(args.out, result)
    print(json.dumps({k: result[k] for k in ("top1", "int8_minus_fp32_points", "int8_over_fp32_batch1",
                                              "int8_over_fp32_batch64")}, indent=1))


if __name__ == "__main__":
    main()
