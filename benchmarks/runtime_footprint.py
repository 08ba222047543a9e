"""Import time of the runtime against onnxruntime alone, and process memory with a bundle loaded.

    python benchmarks/runtime_footprint.py --bundle B --out J
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
from _common import write

SNIPPET = """
import time, sys
t0 = time.perf_counter()
import {module}
dt = time.perf_counter() - t0
print(dt, 'torch' in sys.modules)
"""

MEMORY = """
import sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
base = rss()
import numpy as np
from ranet_edge.runtime import ExitChain
after_import = rss()
chain = ExitChain.load(sys.argv[1], threads=1)
loaded = rss()
chain.run_all(np.zeros((1, *chain.input_shape), np.float32))
print(base, after_import, loaded, rss(), 'torch' in sys.modules)
"""


def import_time(module: str, repeats: int) -> tuple[list[float], bool]:
    times, torch_loaded = [], False
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", SNIPPET.format(module=module)], capture_output=True,
                             text=True, check=True).stdout.split()
        times.append(float(out[0]))
        torch_loaded |= out[1] == "True"
    return times, torch_loaded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/runtime_footprint.json")
    args = ap.parse_args()
    ort_t, _ = import_time("onnxruntime", args.repeats)
    rt_t, torch_loaded = import_time("ranet_edge.runtime", args.repeats)
    mem = subprocess.run([sys.executable, "-c", MEMORY, args.bundle], capture_output=True, text=True,
                         check=True).stdout.split()
    result = {
        "import_s": {"onnxruntime": float(np.median(ort_t)), "ranet_edge.runtime": float(np.median(rt_t))},
        "import_ratio": float(np.median(rt_t) / np.median(ort_t)),
        "runtime_imports_torch": torch_loaded,
        "rss_mb": {"interpreter": float(mem[0]), "after_import": float(mem[1]), "bundle_loaded": float(mem[2]),
                   "after_first_run": float(mem[3])},
    }
    print(f"import onnxruntime {result['import_s']['onnxruntime'] * 1e3:.0f} ms, ranet_edge.runtime "
          f"{result['import_s']['ranet_edge.runtime'] * 1e3:.0f} ms (x{result['import_ratio']:.2f}); "
          f"RSS with bundle loaded {result['rss_mb']['after_first_run']:.0f} MB")
    write(args.out, result)


if __name__ == "__main__":
    main()
