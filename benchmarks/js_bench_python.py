"""The Python side of benchmarks/js_bench.mjs: the torch-free runtime on the same images, one
intra-op thread, driven over stdin so that the JS sides and this one are measured interleaved.

Protocol: one JSON line per request, {"count": N, "batch": B, "mode": "all" | "adaptive"}; one
JSON line per answer, {"ms": wall ms per image, "cpu_ms": process CPU ms per image, "exits":
per-image exits (adaptive)}. "all" runs every exit (run_all), "adaptive" predicts at the
bundle's default operating point. The first line written is {"ready": true, "onnxruntime": ...}.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort

from ranet_edge.assets import SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain


def main(bundle: str) -> None:
    chain = ExitChain.load(bundle, provider="cpu", threads=1)
    with np.load(SAMPLE_IMAGES) as z:
        images = z["x"]
    print(json.dumps({"ready": True, "onnxruntime": ort.__version__, "threads": 1}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        n, b = int(req["count"]), int(req["batch"])
        batches = [chain.preprocess(images[i:min(i + b, n)]) for i in range(0, n, b)]
        exits = []
        wall, cpu = time.perf_counter(), time.process_time()
        if req["mode"] == "all":
            for x in batches:
                chain.run_all(x)
        else:
            exits = [chain.predict(x).exits for x in batches]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(json.dumps({"ms": wall * 1e3 / n, "cpu_ms": cpu * 1e3 / n,
                          "exits": np.concatenate(exits).tolist() if exits else []}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
