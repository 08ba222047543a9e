"""The float64 reference fold the exported weights must equal bit for bit (needs torch and onnx)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def reference_fold(state: dict, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """name -> float32 weight the export must hold: convs followed by a batch norm (module
    ``P.i`` with its BN at ``P.{i+1}``) folded in float64 and rounded once, the rest as is."""
    state = {k.removeprefix("module."): v.numpy() for k, v in state.items()}
    out = {k: v for k, v in state.items() if v.dtype == np.float32}
    for key in [k for k in state if k.endswith(".running_mean")]:
        bn = key.removesuffix(".running_mean")
        parent, idx = bn.rsplit(".", 1)
        conv = f"{parent}.{int(idx) - 1}"
        f64 = np.float64
        s = state[f"{bn}.weight"].astype(f64) / np.sqrt(state[f"{bn}.running_var"].astype(f64) + f64(eps))
        w = state[f"{conv}.weight"].astype(f64) * s[:, None, None, None]
        b = state.get(f"{conv}.bias", np.zeros(len(s), np.float32)).astype(f64)
        b = (b - state[key].astype(f64)) * s + state[f"{bn}.bias"].astype(f64)
        out[f"{conv}.weight"], out[f"{conv}.bias"] = w.astype(np.float32), b.astype(np.float32)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            out.pop(f"{bn}.{suffix}", None)
    return out


def assert_weights_are_reference(bundle: Path, expected: dict[str, np.ndarray]) -> int:
    """Every float initializer of every graph equals the reference bit for bit; every Conv
    reads a folded weight and bias; no BatchNormalization is left. Returns the count checked."""
    checked = 0
    for path in sorted(bundle.glob("*.onnx")):
        m = onnx.load(str(path))
        assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"], path.name
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        for node in m.graph.node:
            if node.op_type == "Conv":
                assert len(node.input) == 3 and node.input[1] in expected and node.input[2] in expected, node.name
        # Resize scales are constants of the graph (the exporter's constant-scale rewrite), not weights.
        resize_args = {i for n in m.graph.node if n.op_type == "Resize" for i in n.input[1:]}
        for name, arr in inits.items():
            if arr.dtype != np.float32 or name in resize_args:
                continue
            assert name in expected, f"{path.name}: {name} is not a checkpoint weight"
            ref = expected[name]
            assert arr.shape == ref.shape and arr.tobytes() == ref.tobytes(), f"{path.name}: {name} differs"
            checked += 1
    return checked
