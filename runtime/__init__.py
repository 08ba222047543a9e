"""The torch-free ONNX Runtime side of ranet-edge (numpy + onnxruntime only)."""
from __future__ import annotations

from .preprocess import PreprocessSpec, preprocess, read_image

__all__ = ["PreprocessSpec", "preprocess", "read_image"]
