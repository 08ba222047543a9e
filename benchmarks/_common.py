"""Helpers shared by the benchmark scripts (timing, interleaving, JSON output)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ranet_edge.data import load_labelled
from ranet_edge.runtime.evaluation import timing


def held_out_images(data: str | None, holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The training run's validation split (or the shipped sample when ``data`` is None), as
    `ranet-edge eval --data DATA --holdout N` loads it."""
    labelled = load_labelled(data, holdout if data is not None else None, seed)
    return labelled.images, labelled.labels


def interleaved(fns: dict, repeats: int, warmup: int = 5, block: int = 100, settle: int = 10,
                cpu: dict | None = None, preempted: dict | None = None) -> dict[str, np.ndarray]:
    """:func:`ranet_edge.runtime.evaluation.timing.interleaved` (the primitive `ranet-edge bench` and
    `eval` time with), its results handed out as before: seconds per call by function;
    ``preempted`` and ``cpu`` (dicts), when given, receive which calls another process
    preempted and the calling thread's CPU seconds of every call."""
    t = timing.interleaved(fns, repeats, warmup=warmup, block=block, settle=settle, cpu=cpu is not None)
    if cpu is not None:
        cpu.update(t.cpu)
    if preempted is not None:
        preempted.update(t.preempted)
    return t.times


median_ms = timing.clean_median  # median over the calls no other process preempted


def write(path: str, obj: dict) -> None:
    obj = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), **obj}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")


def ensure_wrk() -> str:
    """The path of Debian's `wrk` (the C load generator the serving benchmarks drive): installed
    with apt-get when it is missing and we may, otherwise exit naming the fix."""
    import os
    import shutil
    import subprocess

    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if found is None:
        sys.exit("error: wrk is not installed and could not be installed here; install it: sudo apt-get install -y wrk")
    return found
