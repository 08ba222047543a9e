"""Where the time goes, per operator: ONNX Runtime's profiler on the chain and on the
monolithic graph of one or more bundles, run interleaved.

    python benchmarks/op_profile.py --bundle B [--bundle B_INT8] [--batch 1] [--threads 1] --out J

For every node of the optimized graphs (what ONNX Runtime really runs: fused, NCHWc or
channels-last kernels) it takes the median kernel time over the runs, then sums per
operator type. The profiler adds its own cost per node and per run, so absolute figures are
high at batch 1; compare the columns, not the totals with benchmarks/chain_overhead.py.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _common import write

from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.providers import session_options


def _session(path: Path, threads: int, prefix: str) -> ort.InferenceSession:
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _collect(sess: ort.InferenceSession) -> tuple[dict[str, float], dict[str, int], float]:
    """(median kernel microseconds per op type, node count per op type, median model_run)."""
    path = sess.end_profiling()
    per_node: dict[tuple[str, str], list[float]] = defaultdict(list)
    runs = []
    for e in json.loads(Path(path).read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["name"], e["args"]["op_name"])].append(e["dur"])
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    os.unlink(path)
    us: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for (_, op), durs in per_node.items():
        us[op] += float(np.median(durs))
        count[op] += 1
    return dict(us), dict(count), float(np.median(runs[1:])) if len(runs) > 1 else float("nan")


def profile(bundle: str, batch: int, threads: int, runs: int, tmp: str) -> dict:
    man = load_manifest(bundle, verify=True)
    x = np.random.default_rng(0).standard_normal((batch, *man.preprocessing.sample_shape)).astype(np.float32)
    chain = [_session(Path(bundle) / g.path, threads, f"{tmp}/c{i}") for i, g in enumerate(man.graphs)]
    mono = _session(Path(bundle) / man.monolithic.path, threads, f"{tmp}/m")
    env = {man.input_name: x}
    feeds = []
    for s, g in zip(chain, man.graphs):
        feeds.append({n: env[n] for n in g.inputs})
        env.update(zip([o.name for o in s.get_outputs()], s.run(None, feeds[-1])))
    for _ in range(runs):  # interleaved: the chain, then the whole graph
        for s, f in zip(chain, feeds):
            s.run(None, f)
        mono.run(None, {man.input_name: x})
    ops_c: dict[str, float] = defaultdict(float)
    nodes_c: dict[str, int] = defaultdict(int)
    run_c = 0.0
    for s in chain:
        us, count, run = _collect(s)
        run_c += run
        for k, v in us.items():
            ops_c[k] += v
            nodes_c[k] += count[k]
    ops_m, nodes_m, run_m = _collect(mono)
    return {"chain_us": dict(ops_c), "chain_nodes": dict(nodes_c), "chain_model_run_us": run_c,
            "monolithic_us": ops_m, "monolithic_nodes": nodes_m, "monolithic_model_run_us": run_m}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", action="append", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/results/op_profile.json")
    args = ap.parse_args()
    result: dict = {"batch": args.batch, "threads": args.threads, "runs": args.runs, "onnxruntime": ort.__version__,
                    "bundles": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.bundle:
            result["bundles"][Path(b).name] = profile(b, args.batch, args.threads, args.runs, tmp)
    cols = [(name, side) for name in result["bundles"] for side in ("chain", "monolithic")]
    ops = sorted({op for r in result["bundles"].values() for side in ("chain_us", "monolithic_us") for op in r[side]},
                 key=lambda op: -max(r[s].get(op, 0) for r in result["bundles"].values()
                                     for s in ("chain_us", "monolithic_us")))
    print(f"batch {args.batch}, {args.threads} thread(s): median kernel us per run, summed per operator (nodes)")
    print(f"{'operator':<20}" + "".join(f"{(n + ' ' + s)[:27]:>28}" for n, s in cols))
    for op in ops:
        cells = []
        for n, s in cols:
            r = result["bundles"][n]
            cells.append(f"{r[s + '_us'].get(op, 0):>20.1f} ({r[s + '_nodes'].get(op, 0):>4})")
        print(f"{op:<20}" + "".join(cells))
    print(f"{'sum of kernels':<20}" + "".join(f"{sum(result['bundles'][n][s + '_us'].values()):>28.1f}" for n, s in cols))
    print(f"{'model_run (p50)':<20}" + "".join(f"{result['bundles'][n][s + '_model_run_us']:>28.1f}" for n, s in cols))
    write(args.out, result)


if __name__ == "__main__":
    main()
