"""Files shipped with the package: the trained default model and a few validation images."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_CHECKPOINT = HERE / "default.pt"  # trained cifar10-w8, see docs/guides/training.md "Bundled default model"
SAMPLE_IMAGES = HERE / "cifar10-val-500.npz"  # x (N,32,32,3 uint8), y, classes
DEFAULT_BUNDLE = HERE / "default-bundle"  # DEFAULT_CHECKPOINT exported with --monolithic (torch-free use)
#: DEFAULT_BUNDLE for the Qualcomm HTP: `ranet-edge convert DEFAULT_BUNDLE -o qnn-bundle --to qnn
#: --data SAMPLE_IMAGES` (int8 QDQ, batch 1, EPContext models compiled by onnxruntime-qnn 2.7.0)
QNN_BUNDLE = HERE / "qnn-bundle"


def default_bundle() -> str:
    """The shipped bundle, for commands given no BUNDLE; a clear error if this install lacks it."""
    from ranet_edge.errors import BundleError

    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        raise BundleError("no BUNDLE given and this install ships no default bundle; "
                          "make one with `ranet-edge export -o DIR` and pass DIR")
    return str(DEFAULT_BUNDLE)
