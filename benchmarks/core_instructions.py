"""Instructions per call, two source trees side by side: what a runtime change costs, measured
in a way that a busy machine does not move.

    python benchmarks/core_instructions.py --before ../old-checkout --after . [--out J]

Wall-clock ratios on a shared 2-core machine move by several percent from run to run
(``core_regression.py`` measured batch-1 ``predict`` at 0.986x and 1.141x of the same two
trees in two runs). Valgrind's callgrind counts the instructions a process executes, the
Python interpreter's and ONNX Runtime's kernels' alike, and the count does not depend on
what else runs. It does not see cache misses or waits, so it complements the wall-clock
benchmark rather than replacing it.

Each tree runs with its own ``.venv`` (``make install`` there) under
``valgrind --tool=callgrind --instr-atstart=no``: the chain is loaded and warmed up with
counting off, then counting is switched on (``callgrind_control -i on``) for the measured
calls only. Figures: instructions per call of ``predict`` at batch 1 (64 calls, the shipped
bundle's images in turn, one intra-op thread), ``predict`` at batch 64 and ``run_all`` at
batch 64, and ``after / before``. ``--serve``: also the instructions per answered request of
``ranet-edge serve`` (the whole server process: HTTP, decoding, the engine's routing and
graphs), counted while 200 one-image ``POST /v1/classify`` requests are sent one after the
other, so each is a batch of one in both trees and the work done does not depend on timing.

Needs valgrind (``apt-get install valgrind``); a phase takes a minute or two.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import write

WORKER = r'''
import sys
import numpy as np
from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
chain = ExitChain.load(DEFAULT_BUNDLE, threads=1)
with np.load(SAMPLE_IMAGES) as z:
    x = chain.preprocess(z["x"][:64])
ones = [x[i:i + 1].copy() for i in range(64)]
phase = sys.argv[1]
def work():
    if phase == "predict_b1":
        for a in ones:
            chain.predict(a)
    elif phase == "predict_b64":
        chain.predict(x)
    else:
        chain.run_all(x)
work()
work()
print("READY", flush=True)
sys.stdin.readline()
work()
print("DONE", flush=True)
sys.stdin.readline()
'''
#: Phase: calls per measured ``work()``.
PHASES = {"predict_b1": 64, "predict_b64": 1, "run_all_b64": 1}


def count(tree: Path, phase: str, scratch: Path) -> float:
    """Instructions per call of ``phase`` in ``tree``'s environment."""
    out = scratch / f"{tree.name}-{phase}.callgrind"
    worker = scratch / "worker.py"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             str(tree / ".venv" / "bin" / "python"), str(worker), phase], cwd=tree,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if not proc.stdout.readline().startswith("READY"):
            raise RuntimeError(f"{tree}: the worker did not start under valgrind")
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if not proc.stdout.readline().startswith("DONE"):
            raise RuntimeError(f"{tree}: the worker stopped before it finished")
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    total = re.search(r"^totals: (\d+)", out.read_text(), re.M)
    if total is None:
        raise RuntimeError(f"{out}: no totals line")
    return int(total.group(1)) / PHASES[phase]


SERVE_REQUESTS = 200


def count_serve(tree: Path, scratch: Path, port: int) -> float:
    """Instructions of the whole server process per answered one-image request."""
    import urllib.request

    import cv2
    import numpy as np

    out = scratch / f"{tree.name}-serve.callgrind"
    script = tree / ".venv" / "bin" / "ranet-edge"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             str(tree / ".venv" / "bin" / "python"), str(script), "serve", "--port", str(port),
                             "--no-access-log"], cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    with np.load(tree / "ranet_edge" / "assets" / "cifar10-val-500.npz") as z:
        bodies = [cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes() for im in z["x"][:64]]
    url = f"http://127.0.0.1:{port}"

    def post(body: bytes) -> None:
        req = urllib.request.Request(f"{url}/v1/classify", data=body, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=300) as r:
            if r.status != 200:
                raise RuntimeError(f"{tree}: answer {r.status}")
            r.read()

    try:
        deadline = time.monotonic() + 1200
        while True:
            try:
                post(bodies[0])
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{tree}: the server did not come up under valgrind") from None
                time.sleep(1)
        for body in bodies:  # warm: every image once, counting off
            post(body)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        for i in range(SERVE_REQUESTS):
            post(bodies[i % len(bodies)])
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    totals = [int(m) for f in scratch.glob(f"{out.name}*") for m in re.findall(r"^totals: (\d+)", f.read_text(), re.M)]
    if not totals:
        raise RuntimeError(f"{out}: no totals line")
    return sum(totals) / SERVE_REQUESTS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--serve", action="store_true", help="also count ranet-edge serve per request")
    ap.add_argument("--only-serve", action="store_true", help="only the serve figure")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "core_instructions.json")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("core_instructions: valgrind is not installed; apt-get install valgrind", file=sys.stderr)
        return 2
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        (scratch / "worker.py").write_text(WORKER)
        for phase in ([] if args.only_serve else PHASES):
            with ThreadPoolExecutor(2) as pool:  # the two trees at once: counts do not depend on the load
                got = dict(zip(trees, pool.map(count, trees.values(), [phase] * 2, [scratch] * 2)))
            figures[phase + "_instructions"] = {**{k: round(v) for k, v in got.items()},
                                                "after_over_before": round(got["after"] / got["before"], 4)}
            print(f"{phase}: before {got['before']:,.0f}  after {got['after']:,.0f}  "
                  f"after/before {got['after'] / got['before']:.4f}", flush=True)
        if args.serve or args.only_serve:
            with ThreadPoolExecutor(2) as pool:
                got = dict(zip(trees, pool.map(count_serve, trees.values(), [scratch] * 2, [18431, 18432])))
            figures["serve_v1_request_instructions"] = {**{k: round(v) for k, v in got.items()},
                                                        "after_over_before": round(got["after"] / got["before"], 4)}
            print(f"serve, per /v1 request: before {got['before']:,.0f}  after {got['after']:,.0f}  "
                  f"after/before {got['after'] / got['before']:.4f}", flush=True)
    write(args.out, {"trees": {k: str(v) for k, v in trees.items()}, "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
