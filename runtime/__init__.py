"""The torch-free ONNX Runtime side of ranet-edge (numpy + onnxruntime only).

>>> from ranet_edge.runtime import ExitChain
>>> chain = ExitChain.load("bundle/", provider="cpu")
>>> result = chain.predict(chain.preprocess(images))
"""
from __future__ import annotations

from . import _ort  # noqa: F401  (first: checks which onnxruntime build is installed)
from .chain import ExitChain, Prediction, StageRows, softmax
from .manifest import Manifest, load_manifest
from .operating_points import OperatingPoint, load_points, save_point
from .preprocess import PreprocessSpec, preprocess, read_image
from .providers import available as available_providers

__all__ = [
    "ExitChain", "Manifest", "OperatingPoint", "Prediction", "PreprocessSpec", "StageRows", "available_providers",
    "load_manifest", "load_points", "preprocess", "read_image", "save_point", "softmax",
]
