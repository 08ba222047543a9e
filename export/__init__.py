"""Per-exit ONNX export of multi-exit models (needs the ``export`` extra: torch, onnx, onnxsim).

>>> from ranet_edge.export import ExportSpec, export_checkpoint
>>> export_checkpoint("model.pth", "bundle/", ExportSpec(monolithic=True))

The names below are the curated API; each loads its module (and with it torch and onnx) the
first time it is used, so ``import ranet_edge.export`` stays cheap. The modules behind them
(:mod:`.exporter`, :mod:`.ranet`, :mod:`.validate`, :mod:`.convert`) hold the machinery.
"""
from __future__ import annotations

from importlib import import_module

from ranet_edge.runtime.ortbuilds import import_onnxruntime

import_onnxruntime()  # validation runs the graphs: one line naming the extras if no build is installed

_WHERE = {  # public name -> module
    "ExportSpec": ".spec", "DEFAULT_OPSET": ".spec",
    "ExportResult": ".exporter", "export_model": ".exporter",
    "export_checkpoint": ".ranet", "export_loaded": ".ranet",
    "ExitCheck": ".validate", "validate_bundle": ".validate", "validate_graphs": ".validate",
    "convert_bundle": ".convert",
}

__all__ = [
    "DEFAULT_OPSET", "ExitCheck", "ExportResult", "ExportSpec", "convert_bundle", "export_checkpoint", "export_loaded",
    "export_model", "validate_bundle", "validate_graphs",
]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
