"""Peak resident memory (ru_maxrss) of classifying many images in one call.

    python benchmarks/predict_memory.py --bundle B [--data DIR] [--images 4096] [--out J]

Each case runs in a fresh process (``os.wait4`` gives that process's own peak RSS):

- ``load``: the bundle loaded and one image run (the floor: interpreter, onnxruntime, sessions);
- ``predict``: ``chain.predict(x)`` on every image in one call;
- ``run_all``: ``chain.run_all(x)`` (every exit) on every image in one call;
- ``random_batches``: 100 ``predict`` calls on random batch sizes 1..1024 in one process;
- ``cli``: ``ranet-edge predict BUNDLE`` on every image as a PNG file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import held_out_images, write

CASES = ("load", "predict", "run_all", "random_batches", "cli")


def child(case: str, bundle: str, images: str, max_batch: int | None) -> None:
    """One case, in this process."""
    from ranet_edge.runtime import ExitChain

    kwargs = {} if max_batch is None else {"max_batch": max_batch}
    chain = ExitChain.load(bundle, **kwargs)
    x = chain.preprocess(np.load(images))
    if case == "load":
        chain.predict(x[:1])
    elif case == "predict":
        chain.predict(x)
    elif case == "run_all":
        chain.run_all(x)
    elif case == "random_batches":
        rng = np.random.default_rng(0)
        for n in rng.integers(1, 1025, 100):
            chain.predict(x[:n])


def machine() -> str:
    import platform

    from ranet_edge.machine import cpu_info

    return f"{cpu_info()[0]}, {os.cpu_count()} vCPUs, {platform.system()}"


def peak_mb(cmd: list[str]) -> float:
    """Peak RSS of the process ``cmd`` runs as, in MB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=None, help="CIFAR-10 training ImageFolder: its 5,000 held-out images")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--max-batch", type=int, default=None, help="ExitChain.load(max_batch=...) [default: its own]")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", nargs=2, metavar=("CASE", "IMAGES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.bundle, args.child[1], args.max_batch)
        return
    x, _ = held_out_images(args.data, 5000)
    x = np.resize(x, (args.images, *x.shape[1:]))  # repeats the images if there are fewer
    here = Path(__file__).resolve()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "images.npy"
        np.save(npy, x)
        for case in args.cases.split(","):
            if case == "cli":
                import cv2

                files = []
                for i, im in enumerate(x):
                    files.append(str(Path(tmp) / f"{i:05d}.png"))
                    cv2.imwrite(files[-1], im[:, :, ::-1])
                cmd = [str(Path(sys.executable).with_name("ranet-edge")), "predict", args.bundle, *files]
            else:
                cmd = [sys.executable, str(here), "--bundle", args.bundle, "--child", case, str(npy)]
                if args.max_batch is not None:
                    cmd += ["--max-batch", str(args.max_batch)]
            results[case] = peak_mb(cmd)
            print(f"{case:<15} peak RSS {results[case]:8.1f} MB", flush=True)
    if args.out:
        write(args.out, {"images": args.images, "max_batch": args.max_batch, "machine": machine(),
                         "peak_rss_mb": results})


if __name__ == "__main__":
    main()
