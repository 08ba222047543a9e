"""Per-exit ONNX export of multi-exit models (needs the ``export`` extra: torch, onnx, onnxsim)."""
from __future__ import annotations
