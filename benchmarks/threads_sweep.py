"""`ranet-edge bench` figures at 1 and 2 intra-op threads, with and without spinning.

    python benchmarks/threads_sweep.py --bundle B --out J
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from _common import held_out_images, interleaved, write

from ranet_edge.runtime import ExitChain


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/threads_sweep.json")
    args = ap.parse_args()
    x_u8, _ = held_out_images(None, 0)
    chains = {f"threads{t}_spin{int(s)}": ExitChain.load(args.bundle, threads=t, spinning=s)
              for t in (1, 2) for s in (False, True)}
    result = {"onnxruntime": ort.__version__}
    for batch in (1, 64):
        x = next(iter(chains.values())).preprocess(x_u8[:batch])
        # Blocks per configuration, the first calls of each block discarded: spinning threads
        # go on burning CPU after a run returns, which would bill the next configuration.
        block, rounds = (100, 6) if batch == 1 else (12, 4)
        samples: dict[str, list[float]] = {k: [] for k in chains}
        for _ in range(rounds):
            for k, c in chains.items():
                t = interleaved({k: (lambda c=c, x=x: c.run_all(x))}, block, warmup=block // 4)
                samples[k].extend(t[k].tolist())
        med = {k: 1e3 * float(np.median(v)) for k, v in samples.items()}
        result[f"batch{batch}_median_ms"] = med
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()))
    write(args.out, result)


if __name__ == "__main__":
    main()
