"""Helpers shared by the runtime tests (the bundles they run on are conftest.py's ``tiny`` and
``w8`` fixtures)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def quiet(_msg: str) -> None:
    pass


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Smooth random inputs (upsampled noise) in the normalised range a real image gives."""
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((n, 3, size // 4, size // 4)).astype(np.float32)
    return np.ascontiguousarray(np.repeat(np.repeat(low, 4, axis=2), 4, axis=3) * 1.2)


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))



