"""onnxruntime, imported through the build check: one line naming the extras when no build is
installed, a warning when several are (see :mod:`ranet_edge.runtime.ortbuilds`)."""
from __future__ import annotations

from .ortbuilds import import_onnxruntime

ort = import_onnxruntime()
