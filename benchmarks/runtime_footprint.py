"""Import time of the runtime against onnxruntime alone, and process memory with a bundle loaded.

    python benchmarks/runtime_footprint.py --bundle B [--rounds 40] --out J

Every import is timed in a fresh interpreter; the three commands run interleaved, one of
each per round (in a rotating order), so that machine noise hits all of them alike; the
ratios are of medians.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
from _common import write

SNIPPET = """
{prelude}
import time, sys
t0, c0 = time.perf_counter(), time.process_time()
{statement}
dt, dc = time.perf_counter() - t0, time.process_time() - c0
print(dt, 'torch' in sys.modules, 'cv2' in sys.modules, 'onnxruntime' in sys.modules, dc)
"""

STATEMENTS = {
    "onnxruntime": "import onnxruntime",
    "ranet_edge.runtime": "import ranet_edge.runtime",
    "ExitChain": "from ranet_edge.runtime import ExitChain",  # pulls in numpy and onnxruntime
}

MEMORY = """
{prelude}
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
print(base, after_import, loaded, rss(), 'torch' in sys.modules, 'cv2' in sys.modules)
"""


def timed_import(statement: str, prelude: str) -> tuple[float, bool, bool, bool, float]:
    """(wall seconds, torch loaded, cv2 loaded, onnxruntime loaded, CPU seconds)."""
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(prelude=prelude, statement=statement)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), out[1] == "True", out[2] == "True", out[3] == "True", float(out[4])


def _install_kind() -> str:
    """"editable" when ranet_edge comes through pip's editable finder (an import hook that adds
    ~14 ms to every import of the package, which an installed wheel does not pay), else "regular"."""
    out = subprocess.run([sys.executable, "-c", "import sys, ranet_edge; "
                          "print(any(m.startswith('__editable__') and 'ranet_edge' in m for m in sys.modules))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return "editable" if out == "True" else "regular"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--prelude", default="", help="code every subprocess runs before the timed import "
                    "(e.g. pointing the editable install at another source tree for a before/after run)")
    ap.add_argument("--out", default="benchmarks/results/runtime_footprint.json")
    args = ap.parse_args()
    names = list(STATEMENTS)
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    loads: dict[str, dict[str, bool]] = {k: {"torch": False, "cv2": False, "onnxruntime": False} for k in names}
    for _ in range(2):  # warm the page cache
        for k in names:
            timed_import(STATEMENTS[k], args.prelude)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            dt, torch_, cv2_, ort_, dc = timed_import(STATEMENTS[k], args.prelude)
            times[k].append(dt)
            cpu[k].append(dc)
            loads[k] = {"torch": loads[k]["torch"] or torch_, "cv2": loads[k]["cv2"] or cv2_,
                        "onnxruntime": loads[k]["onnxruntime"] or ort_}
    mem = subprocess.run([sys.executable, "-c", MEMORY.format(prelude=args.prelude), args.bundle],
                         capture_output=True, text=True, check=True).stdout.split()
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_cpu = {k: float(np.median(v)) for k, v in cpu.items()}
    result = {
        "rounds": args.rounds,
        "install": _install_kind(),
        "import_s": med,
        "import_s_p10_p90": {k: [float(np.percentile(v, 10)), float(np.percentile(v, 90))] for k, v in times.items()},
        "import_ratio": med["ranet_edge.runtime"] / med["onnxruntime"],
        "exitchain_import_ratio": med["ExitChain"] / med["onnxruntime"],
        "import_cpu_s": med_cpu,
        "cpu_import_ratio": med_cpu["ranet_edge.runtime"] / med_cpu["onnxruntime"],
        "cpu_exitchain_import_ratio": med_cpu["ExitChain"] / med_cpu["onnxruntime"],
        "modules_loaded": loads,
        "runtime_imports_torch": loads["ranet_edge.runtime"]["torch"] or loads["ExitChain"]["torch"],
        "rss_mb": {"interpreter": float(mem[0]), "after_import": float(mem[1]), "bundle_loaded": float(mem[2]),
                   "after_first_run": float(mem[3])},
        "run_loads_cv2": mem[5] == "True",
    }
    print(f"import onnxruntime {med['onnxruntime'] * 1e3:.1f} ms, ranet_edge.runtime {med['ranet_edge.runtime'] * 1e3:.1f} ms "
          f"(x{result['import_ratio']:.3f}), from ranet_edge.runtime import ExitChain {med['ExitChain'] * 1e3:.1f} ms "
          f"(x{result['exitchain_import_ratio']:.3f}); medians of {args.rounds} interleaved rounds; CPU time "
          f"x{result['cpu_import_ratio']:.3f} and x{result['cpu_exitchain_import_ratio']:.3f}; {result['install']} install")
    print(f"modules loaded: {loads}; RSS with bundle loaded and run {result['rss_mb']['after_first_run']:.0f} MB")
    write(args.out, result)


if __name__ == "__main__":
    main()
