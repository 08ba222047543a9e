"""Full chain (every exit, stage by stage) against the monolithic graph, interleaved.

    python benchmarks/chain_overhead.py --bundle B [--threads 1] --out J
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from _common import held_out_images, interleaved, write

from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.latency import cached_inputs
from ranet_edge.runtime.providers import session_options


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/chain_overhead.json")
    args = ap.parse_args()
    chain = ExitChain.load(args.bundle, threads=args.threads)
    mono = ort.InferenceSession(str(chain.manifest.root / chain.manifest.data["monolithic"]["path"]),
                                session_options(args.threads), providers=["CPUExecutionProvider"])
    x_u8, _ = held_out_images(None, 0)
    result = {"threads": args.threads, "onnxruntime": ort.__version__}
    for batch in (1, 64):
        x = chain.preprocess(x_u8[:batch])
        feeds = cached_inputs(chain, x)
        graphs = chain.graphs
        t = interleaved({
            "chain": lambda x=x: chain.run_all(x),
            "sessions_only": lambda gs=graphs, fs=feeds: [g.session.run(g.output_names, f) for g, f in zip(gs, fs)],
            "monolithic": lambda x=x: mono.run(None, {chain.input_name: x}),
        }, args.repeats if batch == 1 else max(30, args.repeats // 10), block=100 if batch == 1 else 10,
            settle=10 if batch == 1 else 2)
        med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
        result[f"batch{batch}"] = {"median_ms": med, "overhead_ratio": med["chain"] / med["monolithic"],
                                   "driver_overhead_ms": med["chain"] - med["sessions_only"]}
        print(f"batch {batch}: chain {med['chain']:.3f} ms, monolithic {med['monolithic']:.3f} ms, "
              f"ratio x{med['chain'] / med['monolithic']:.3f} (driver {med['chain'] - med['sessions_only']:.3f} ms)")
    write(args.out, result)


if __name__ == "__main__":
    main()
