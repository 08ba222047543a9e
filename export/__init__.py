"""Per-exit ONNX export of multi-exit models (needs the ``export`` extra: torch, onnx, onnxsim)."""
from __future__ import annotations

from ranet_edge.runtime.ortbuilds import import_onnxruntime

import_onnxruntime()  # validation runs the graphs: one line naming the extras if no build is installed
