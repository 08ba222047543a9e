"""Helpers shared by the benchmark scripts (timing, interleaving, JSON output)."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ranet_edge.data import load_labelled


def held_out_images(data: str | None, holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The training run's validation split (or the shipped sample when ``data`` is None), as
    `ranet-edge eval --data DATA --holdout N` loads it."""
    labelled = load_labelled(data, holdout if data is not None else None, seed)
    return labelled.images, labelled.labels


def interleaved(fns: dict, repeats: int, warmup: int = 5, block: int = 100, settle: int = 10,
                cpu: dict | None = None, preempted: dict | None = None) -> dict[str, np.ndarray]:
    """Time each function ``repeats`` times, side by side: blocks of ``block`` calls per
    function in turn, each block preceded by ``settle`` untimed calls. Slow drifts of the
    machine hit every function alike, while no timed call pays for the caches another
    function just evicted (per-call round-robin biases results by position).

    With ``preempted`` (a dict), it receives per function which calls the kernel interrupted
    to give a core to another process (an involuntary context switch of any thread of this
    one): on a loaded two-core machine a millisecond call is preempted so often that the
    plain median jumps between the cost of the code and the length of other processes' time
    slices (see :func:`median_ms`). With ``cpu`` (a dict), the calling thread's CPU time of
    every call goes there too (with one intra-op thread ONNX Runtime computes in the calling
    thread)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {k: np.empty(repeats) for k in fns}
    if cpu is not None:
        cpu.update({k: np.empty(repeats) for k in fns})
    if preempted is not None:
        preempted.update({k: np.zeros(repeats, bool) for k in fns})
    for start in range(0, repeats, block):
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
            for i in range(start, min(start + block, repeats)):
                if preempted is not None:
                    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
                c0 = time.thread_time()
                t0 = time.perf_counter()
                fn()
                out[k][i] = time.perf_counter() - t0
                if cpu is not None:
                    cpu[k][i] = time.thread_time() - c0
                if preempted is not None:
                    preempted[k][i] = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw != switches
    return out


def median_ms(times: np.ndarray, preempted: np.ndarray, min_clean: int = 10) -> float:
    """Median in ms over the calls no other process preempted, when there are at least
    ``min_clean`` of them (else over all calls: long calls on a busy machine)."""
    clean = times[~preempted]
    return 1e3 * float(np.median(clean if len(clean) >= min_clean else times))


def write(path: str, obj: dict) -> None:
    obj = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), **obj}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
