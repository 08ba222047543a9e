"""The ``ort`` conversion target: static shapes, operators mobile EPs take, ORT format.

Graphs get a fixed batch (the Shape->Gather->Resize size chains then fold to constants),
``mobile_rewrite`` replaces operators NNAPI and CoreML reject by the same maths in ones they
run, ``mobile_report`` says what share of nodes each would take, and :func:`to_ort` writes
the ``.ort`` files of a bundle being converted (:mod:`.convert`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from .rewrite import inferred_shapes


def fix_batch(m: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """``m`` with its symbolic ``batch`` axis fixed to ``batch`` (in place), then simplified by
    onnxsim when it is installed, so that shape arithmetic folds to constants; ``m`` as fixed
    when onnxsim is missing or fails its own check."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    make_dim_param_fixed(m.graph, "batch", batch)
    fix_output_shapes(m)
    try:  # with every shape static, the Shape->Gather->Resize size chains fold to constants
        import onnxsim

        folded, ok = onnxsim.simplify(m)
        if ok:
            return folded
    except ImportError:  # onnxsim is in the export extra; without it the graph stays as is
        pass
    return m


def _interp_matrix(out: int, inp: int) -> np.ndarray:
    """Rows of 1-D linear interpolation with align_corners=True (out x inp)."""
    a = np.zeros((out, inp), np.float32)
    for i in range(out):
        src = i * (inp - 1) / (out - 1) if out > 1 else 0.0
        i0 = min(int(np.floor(src)), inp - 1)
        i1 = min(i0 + 1, inp - 1)
        w = src - i0
        a[i, i0] += 1.0 - w
        a[i, i1] += w
    return a


def mobile_rewrite(m: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Rewrite operators mobile EPs reject, for static shapes, without changing the maths:
    bilinear ``Resize`` with ``align_corners`` becomes two MatMuls with constant
    interpolation matrices (NNAPI and CoreML run MatMul), and ``Flatten`` becomes ``Reshape``."""
    from onnx import helper, numpy_helper

    shapes = inferred_shapes(m)  # all static here (fix_batch): src/dst checks below need every dimension
    nodes, inits, counts = [], [], {"Resize": 0, "Flatten": 0}
    for node in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type == "Resize" and attrs.get("mode") == b"linear"
                and attrs.get("coordinate_transformation_mode") == b"align_corners"):
            src, dst = shapes.get(node.input[0]), shapes.get(node.output[0])
            if src and dst and len(src) == 4 and all(src) and all(dst) and src[:2] == dst[:2]:
                base = node.output[0]
                a_h = numpy_helper.from_array(_interp_matrix(dst[2], src[2]), f"{base}__rows")
                b_w = numpy_helper.from_array(np.ascontiguousarray(_interp_matrix(dst[3], src[3]).T), f"{base}__cols")
                inits += [a_h, b_w]
                nodes.append(helper.make_node("MatMul", [node.input[0], b_w.name], [f"{base}__w"], name=f"{node.name}_w"))
                nodes.append(helper.make_node("MatMul", [a_h.name, f"{base}__w"], [base], name=f"{node.name}_h"))
                counts["Resize"] += 1
                continue
        if node.op_type == "Flatten" and attrs.get("axis", 1) == 1:
            shape = numpy_helper.from_array(np.array([0, -1], np.int64), f"{node.output[0]}__shape")
            inits.append(shape)
            nodes.append(helper.make_node("Reshape", [node.input[0], shape.name], list(node.output), name=node.name))
            counts["Flatten"] += 1
            continue
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    return m, counts


def mobile_report(m: onnx.ModelProto) -> dict:
    """Share of nodes NNAPI and CoreML would take, from onnxruntime's usability checker."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    inferred = onnx.shape_inference.infer_shapes(m)
    out = {}
    for ep, fn in (("nnapi", lambda: uc.check_nnapi_partitions(inferred, True)),
                   ("coreml", lambda: uc.check_coreml_partitions(inferred, True, "coreml_supported_mlprogram_ops.md"))):
        info = fn()
        out[ep] = {"nodes": info.num_nodes, "supported": info.num_supported_nodes,
                   "share": round(info.num_supported_nodes / max(info.num_nodes, 1), 4),
                   "partitions": info.num_partitions, "unsupported_ops": sorted(info.unsupported_ops)}
    return out


def to_ort(src: Path, tmp: Path, work: Path, data: dict, entries: list[dict], batch_size: int,
           mobile_ops: bool, log: Callable[[str], None]) -> None:
    """Write every graph of ``entries`` (the manifest's graph entries of ``src``) into
    ``tmp`` as ORT format with batch ``batch_size`` (``work`` holds the intermediate ONNX
    files), and record the new paths, static shapes and mobile coverage in ``data``.

    Raises:
        onnx.checker.ValidationError: a rewritten graph is not valid ONNX.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    report = {}
    for entry in entries:
        name = Path(entry["path"]).stem
        m = fix_batch(onnx.load(str(src / entry["path"])), batch_size)
        if mobile_ops:
            m, rewritten = mobile_rewrite(m)
            if any(rewritten.values()):
                log(f"  {entry['path']}: rewrote {rewritten['Resize']} Resize and {rewritten['Flatten']} "
                    "Flatten nodes for mobile EPs")
        onnx.checker.check_model(m)
        onnx.save(m, str(work / f"{name}.onnx"))
        report[name] = mobile_report(m)
        log(f"  converted {entry['path']}")
    convert_onnx_models_to_ort(work, output_dir=tmp, optimization_styles=[OptimizationStyle.Fixed])
    for cfg in tmp.glob("*.config"):
        cfg.rename(tmp / "required_operators.config")
    for entry in entries:
        entry["path"] = Path(entry["path"]).stem + ".ort"
    for e in data["exits"]:
        e["graph"] = Path(e["graph"]).stem + ".ort"
    for g in data["graphs"]:
        for t in g.get("tensors", {}).values():
            if t["shape"] and t["shape"][0] is None:
                t["shape"][0] = batch_size
    data["batch_size"] = batch_size
    data["preprocessing"]["shape"][0] = batch_size
    data["mobile_report"] = {k: {ep: f"{v[ep]['share']:.0%} of {v[ep]['nodes']} nodes" for ep in v}
                             for k, v in report.items()}
    data["mobile_report_detail"] = report
    data["mobile_ops_rewritten"] = mobile_ops
