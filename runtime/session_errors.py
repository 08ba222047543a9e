"""Provisional: replaced by the load-error classification (see the qnn branch)."""
from __future__ import annotations

from ranet_edge.errors import BundleError, RanetEdgeError


def load_error(path: str, exc: Exception, provider: str) -> RanetEdgeError:
    return BundleError(f"ONNX Runtime cannot load graph {path} ({str(exc)[:160]}); re-export the bundle")
