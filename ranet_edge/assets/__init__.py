"""Files shipped with the package: the trained default model and a few validation images."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_CHECKPOINT = HERE / "default.pt"  # trained cifar10-w8, see README "Bundled default model"
SAMPLE_IMAGES = HERE / "cifar10-val-500.npz"  # x (N,32,32,3 uint8), y, classes
