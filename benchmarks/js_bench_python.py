"""The Python side of benchmarks/js_bench.mjs: the torch-free runtime on the same images, one
intra-op thread, driven round by round over stdin so that the JS sides and this one are
measured interleaved.

Protocol: one JSON line per request, {"count": N, "batch": B}; one JSON line per answer,
{"all_ms": ms per image (every exit), "adaptive_ms": ms per image (default operating point),
"exits": per-image exits}. The first line written is {"ready": true, ...versions}.
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
        t0 = time.perf_counter()
        for x in batches:
            chain.run_all(x)
        t1 = time.perf_counter()
        exits = [chain.predict(x).exits for x in batches]
        t2 = time.perf_counter()
        print(json.dumps({"all_ms": (t1 - t0) * 1e3 / n, "adaptive_ms": (t2 - t1) * 1e3 / n,
                          "exits": np.concatenate(exits).tolist()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
