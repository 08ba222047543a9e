"""Two source trees side by side in one run: what a runtime change costs or saves.

    python benchmarks/core_regression.py --before ../old-checkout --after . [--rounds 5] --out J

Each tree runs with its own ``.venv`` (``make install`` there), in turns, on the shipped
default bundle with one intra-op thread, spinning off:

- ``predict`` at batch 1 (64 images, one call each), ``predict`` and ``run_all`` at batch 64:
  wall time and the calling thread's CPU time (with one intra-op thread ONNX Runtime computes
  on the calling thread, so the CPU time leaves out waits for a preempted core);
- ``benchmarks/chain_overhead.py`` (chain / monolithic at batch 1 and 64, one thread);
- ``import ranet_edge.runtime`` and ``from ranet_edge.runtime import ExitChain``, each a fresh
  interpreter (wall time of the whole process);
- ``ranet-edge serve`` (one process, stage batching) under wrk at 8 and 32 connections, both
  servers up at once and loaded in turns.

Per figure: each tree's median over rounds, and ``after / before`` (for req/s, higher is
better; for times, lower is). Rounds alternate the trees, so drift on a shared machine hits
both alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _common import ensure_wrk, write
from serve_load import WRK_SCRIPT, free_ports, stop, wrk

WORKER = r'''
import json, sys, time
import numpy as np
from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
chain = ExitChain.load(DEFAULT_BUNDLE, threads=1)
with np.load(SAMPLE_IMAGES) as z:
    x = chain.preprocess(z["x"][:64])
def med(f, n):
    for _ in range(max(3, n // 10)):
        f()
    ts, cs = [], []
    for _ in range(n):
        c = time.thread_time(); t = time.perf_counter(); f(); ts.append(time.perf_counter() - t); cs.append(time.thread_time() - c)
    return float(np.median(ts)) * 1e3, float(np.median(cs)) * 1e3
i = [0]
def one():
    i[0] = (i[0] + 1) % 64
    chain.predict(x[i[0]:i[0] + 1])
out = {}
for name, f, n in (("predict_b1", one, 64), ("predict_b64", lambda: chain.predict(x), 4),
                   ("run_all_b64", lambda: chain.run_all(x), 4)):
    out[name + "_ms"], out[name + "_thread_cpu_ms"] = med(f, int(sys.argv[1]) * n)
print(json.dumps(out))
'''


def py(tree: Path) -> str:
    return str(tree / ".venv" / "bin" / "python")


def worker(tree: Path, reps: int) -> dict:
    out = subprocess.run([py(tree), "-c", WORKER, str(reps)], cwd=tree, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_s(tree: Path, code: str) -> float:
    t = time.perf_counter()
    subprocess.run([py(tree), "-c", code], cwd=tree, check=True, timeout=120)
    return time.perf_counter() - t


def overhead(tree: Path, work: Path) -> dict:
    out = work / f"overhead-{tree.name}-{time.monotonic_ns()}.json"
    bundle = tree / "ranet_edge" / "assets" / "default-bundle"
    subprocess.run([py(tree), "benchmarks/chain_overhead.py", "--bundle", str(bundle), "--threads", "1",
                    "--rounds", "3", "--repeats", "300", "--out", str(out)], cwd=tree, check=True, timeout=1200,
                   capture_output=True)
    data = json.loads(out.read_text())
    return {f"chain_over_{k}": v for k, v in _ratios(data).items()}


def _ratios(data: dict) -> dict:
    """The chain / monolithic ratios chain_overhead.json records, by batch (flattened)."""
    found = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, [*path, str(k)])
        elif isinstance(node, (int, float)) and "ratio" in path[-1] and "cpu" not in path[-1]:
            found["/".join(path)] = float(node)
    walk(data, [])
    return found


def serve(tree: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [str(tree / ".venv" / "bin" / "ranet-edge"), "serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, cwd=tree, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"{tree}: the server did not come up: {log.read_text()[-1500:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, type=Path)
    ap.add_argument("--after", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="timed calls per round: reps*64 at batch 1, reps*4 at 64")
    ap.add_argument("--seconds", type=int, default=3, help="wrk seconds per block")
    ap.add_argument("--no-serve", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/core_regression.json")
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, tree in trees.items():
        if not Path(py(tree)).exists():
            sys.exit(f"error: {tree} has no .venv; run `make install` there first ({name})")
    work = Path(tempfile.mkdtemp(prefix="core-regression-"))
    got: dict[str, dict[str, list[float]]] = {k: {} for k in trees}

    def add(side: str, values: dict) -> None:
        for k, v in values.items():
            got[side].setdefault(k, []).append(v)

    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for side in order:
            add(side, worker(trees[side], args.reps))
            add(side, {"import_runtime_s": import_s(trees[side], "import ranet_edge.runtime"),
                       "import_exitchain_s": import_s(trees[side], "from ranet_edge.runtime import ExitChain")})
            if r < 3:
                add(side, overhead(trees[side], work))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    if not args.no_serve:
        ensure_wrk()
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        with np.load(args.after / "ranet_edge" / "assets" / "cifar10-val-500.npz") as z:
            images = z["x"][:64]
        pngs = []
        for i, im in enumerate(images):
            p = work / f"{i}.png"
            p.write_bytes(cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes())
            pngs.append(str(p))
        bodies = work / "png.list"
        bodies.write_text("\n".join(pngs) + "\n")
        ports = dict(zip(trees, free_ports(2)))
        procs = {side: serve(trees[side], ports[side], work / f"{side}.log") for side in trees}
        try:
            for side in trees:
                wrk(f"http://127.0.0.1:{ports[side]}", 8, 1, script, bodies, "image/png")  # settle
            for r in range(args.rounds):
                for c in (8, 32):
                    for side in (trees if r % 2 == 0 else list(reversed(trees))):
                        res = wrk(f"http://127.0.0.1:{ports[side]}", c, args.seconds, script, bodies, "image/png")
                        if res["non2xx"] or res["socket_errors"]:
                            raise RuntimeError(f"{side}: wrk saw errors: {res}")
                        add(side, {f"serve_req_s_c{c}": res["requests"] / (res["duration_us"] / 1e6),
                                   f"serve_p50_ms_c{c}": res["p50_us"] / 1e3})
        finally:
            for p in procs.values():
                stop(p)
    summary = {}
    for key in got["after"]:
        b, a = statistics.median(got["before"][key]), statistics.median(got["after"][key])
        summary[key] = {"before": round(b, 5), "after": round(a, 5), "after_over_before": round(a / b, 4)}
        print(f"{key:60s} before {b:10.4f}  after {a:10.4f}  after/before {a / b:6.3f}")
    write(args.out, {"trees": {k: str(v) for k, v in trees.items()}, "rounds": args.rounds, "reps": args.reps,
                     "figures": summary, "raw": got})


if __name__ == "__main__":
    main()
