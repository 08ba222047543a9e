"""ranet-edge: deploy Resolution Adaptive Networks (RANet) as chained per-exit ONNX graphs.

Importing the package is cheap and torch-free; the torch side lives in
``ranet_edge.model``, ``ranet_edge.checkpoint``, ``ranet_edge.train`` and ``ranet_edge.export``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import RanetEdgeError  # noqa: E402

__all__ = ["RanetEdgeError", "__version__"]
