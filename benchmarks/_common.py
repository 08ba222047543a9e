"""Helpers shared by the benchmark scripts (timing, interleaving, JSON output)."""
from __future__ import annotations

import json
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


def interleaved(fns: dict, repeats: int, warmup: int = 5, block: int = 100, settle: int = 10) -> dict[str, np.ndarray]:
    """Time each function ``repeats`` times, side by side: blocks of ``block`` calls per
    function in turn, each block preceded by ``settle`` untimed calls. Slow drifts of the
    machine hit every function alike, while no timed call pays for the caches another
    function just evicted (per-call round-robin biases results by position)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {k: np.empty(repeats) for k in fns}
    for start in range(0, repeats, block):
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
            for i in range(start, min(start + block, repeats)):
                t0 = time.perf_counter()
                fn()
                out[k][i] = time.perf_counter() - t0
    return out


def write(path: str, obj: dict) -> None:
    obj = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), **obj}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
