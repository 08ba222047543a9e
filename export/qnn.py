"""The ``qnn`` conversion target: int8 QDQ graphs with a static batch for the QNN HTP.

Qualcomm's Hexagon NPU backend ("HTP") validates each node with its tensor shapes and reads
the quantization of each operator from the DequantizeLinear before it and the
QuantizeLinear after it. So the graphs get

- a fixed batch (with a dynamic one every node fails with ``Cannot get shape``),
- the whole-chain int8 recipe of export/quantize.py with two changes: the classifiers'
  Gemm quantized too (the HTP runs no float layer), and none of the CPU-kernel layout
  tricks (a Resize on uint8 or a bare hand-over Transpose has no QDQ around it, and the
  HTP refuses it): every operator sits between a DequantizeLinear and a QuantizeLinear,
  and the tensors handed on between graphs stay NCHW uint8.

Where onnxruntime-qnn is installed, each graph is then compiled by the HTP backend (in
simulation on x86_64 Linux) into an EPContext model holding its context binary, written
beside the graph and listed in the manifest under ``graphs[i].compiled`` with its sha256,
so that a device loads the compiled graph instead of compiling at first load; the share
of each graph's nodes the HTP took is recorded in ``qnn.placement``.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ranet_edge.errors import ExportError
from ranet_edge.runtime.manifest import sha256_file

from .int8_stages import write_int8
from .mobile import fix_batch
from .quantize import Int8Recipe

QNN = "QNNExecutionProvider"

#: int8 for the HTP: every layer quantized, QDQ around every operator, NCHW hand-over, and
#: 8-bit weights (the HTP accumulates without saturating; the 7-bit weights of the CPU recipe
#: only work around the int16 saturation of x86 CPUs without VNNI, see Int8Recipe).
QNN_RECIPE = Int8Recipe(float_ops=(), cpu_layout=False, reduce_range=False)


def to_qnn(src: Path, tmp: Path, work: Path, data: dict, images: np.ndarray, batch: int,
           log: Callable[[str], None], recipe: Int8Recipe | None = None, compile_graphs: bool = True) -> None:
    """Write the int8 static-batch stages of bundle ``src`` into ``tmp`` (calibrated on
    ``images``), compile each for the HTP where onnxruntime-qnn is installed, and update
    the manifest ``data`` (batch, shapes, compiled graphs, placement)."""
    if len(images) < batch:
        raise ExportError(f"--batch-size {batch} is larger than the {len(images)} calibration images; "
                          "pass more images or a smaller --batch-size")
    fixed = work / "fixed"
    fixed.mkdir()
    for g in data["graphs"]:
        onnx.save(fix_batch(onnx.load(str(src / g["path"])), batch), str(fixed / g["path"]))
    data["batch_size"] = batch
    data["preprocessing"]["shape"][0] = batch
    # calibration runs the static graph: whole batches only
    write_int8(src, tmp, work, data, images[:len(images) // batch * batch], recipe or QNN_RECIPE, stages=fixed)
    log(f"  quantized {len(data['graphs'])} graphs for the QNN HTP (batch {batch}, QDQ around every operator)")
    info: dict = {"backend": "htp", "batch_size": batch, "compiled": False}
    try:
        info["onnxruntime_qnn"] = importlib.metadata.version("onnxruntime-qnn")
    except importlib.metadata.PackageNotFoundError:
        info["onnxruntime_qnn"] = None
    if compile_graphs and info["onnxruntime_qnn"]:
        info["placement"] = compile_contexts(tmp, data["graphs"], log)
        info["compiled"] = True
    else:
        info["note"] = ("not compiled: onnxruntime-qnn is not installed" if compile_graphs
                        else "not compiled (--no-qnn-context)")
    data["qnn"] = info


def compile_contexts(root: Path, graphs: list[dict], log: Callable[[str], None]) -> dict:
    """Compile every graph of ``graphs`` (manifest entries, files under ``root``) with the
    QNN HTP into ``<stem>.qnn_ctx.onnx`` (the context binary embedded), record each in its
    entry's ``compiled``, and return the placement per graph: nodes, how many the HTP took,
    the op types left to the CPU provider."""
    from ranet_edge.runtime._ort import ort
    from ranet_edge.runtime.placement import node_placement, placement_row
    from ranet_edge.runtime.plugins import PLUGINS, select
    from ranet_edge.runtime.providers import is_plugin

    if not is_plugin(QNN):
        raise ExportError("this onnxruntime build has QNN built in; compile with the onnxruntime-qnn plugin "
                          "beside the CPU build, or pass --no-qnn-context")
    out = {}
    for g in graphs:
        ctx = f"{Path(g['path']).stem}.qnn_ctx.onnx"
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        so.add_session_config_entry("ep.context_enable", "1")
        so.add_session_config_entry("ep.context_embed_mode", "1")
        so.add_session_config_entry("ep.context_file_path", str(root / ctx))
        select(so, QNN)
        try:
            sess = ort.InferenceSession(str(root / g["path"]), so)
        except Exception as exc:
            raise ExportError(f"the QNN HTP cannot compile {g['path']} ({str(exc).strip()[:200]}); "
                              "pass --no-qnn-context to write the graphs uncompiled") from None
        row = placement_row(g["path"], node_placement(sess), QNN)
        out[g["path"]] = {"nodes": row["nodes"], "on_qnn": row["providers"].get(QNN, 0),
                          "share": row["share"].get(QNN, 0.0), "on_cpu": row["on_cpu"]}
        if not (root / ctx).is_file():
            raise ExportError(f"the QNN HTP took none of {g['path']} and wrote no context binary; "
                              "pass --no-qnn-context to write the graphs uncompiled")
        g["compiled"] = {QNN: {"path": ctx, "sha256": sha256_file(root / ctx), "bytes": (root / ctx).stat().st_size,
                               "options": dict(PLUGINS[QNN].options)}}
        cpu = ", ".join(f"{n} {op}" for op, n in row["on_cpu"].items()) or "nothing"
        log(f"  {g['path']}: {out[g['path']]['on_qnn']}/{row['nodes']} nodes on the QNN HTP, on the CPU: {cpu}; "
            f"compiled into {ctx}")
    return out
