"""Edge formats of a bundle: ORT format with static shapes, int8 (static QDQ), fp16.

Needs onnx and onnxruntime only (no torch). Each conversion writes a complete new bundle;
the runtime loads it like any other. int8 quantizes the chain as one graph calibrated on
real images and cuts it at the exits again, handing on uint8 tensors (export/quantize.py).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ranet_edge.errors import DataError, ExportError
from ranet_edge.runtime.chain import ExitChain
from ranet_edge.runtime.manifest import MANIFEST, load_manifest, replace_dir, sha256_file, write_json_atomic

TARGETS = ("ort", "int8", "fp16")


logger = logging.getLogger(__name__)  # what was converted (the CLI prints it)


def _fix_batch(m: onnx.ModelProto, batch: int) -> onnx.ModelProto:
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

    inferred = onnx.shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
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


def _int8(src: Path, tmp: Path, work: Path, data: dict, images: np.ndarray, recipe=None) -> None:
    """Write the int8 stages (and the int8 whole graph as the monolithic baseline) into
    ``tmp`` and update the graph and exit entries of ``data`` (see export/quantize.py)."""
    from .graph_costs import intermediate_values
    from .quantize import quantize_chain

    chain = ExitChain.load(src, warmup=False)
    x = chain.preprocess(images)
    graphs = data["graphs"]
    q = quantize_chain([src / g["path"] for g in graphs], [list(g["logits"]) for g in graphs], chain.input_name,
                       x, work, data.get("batch_size"), recipe)
    batch = data.get("batch_size") or 1
    values = intermediate_values(q.model, {chain.input_name: x[:batch]})
    values[chain.input_name] = x[:batch]
    by_graph = {}
    for g, st in zip(graphs, q.stages, strict=True):
        (tmp / g["path"]).write_bytes(st.model.SerializeToString(deterministic=True))
        g.update(inputs=st.inputs, cache_outputs=st.cache_outputs, tensors={
            n: {"shape": [None if data.get("batch_size") is None else batch, *values[n].shape[1:]],
                "dtype": str(values[n].dtype)} for n in st.inputs + st.cache_outputs})
        by_graph[g["path"]] = st
    for e in data["exits"]:
        st = by_graph[e["graph"]]
        e.update(inputs=st.inputs, cache_outputs=st.cache_outputs, cache_bytes_per_sample=int(sum(
            values[n][0].nbytes for n in st.cache_outputs)))
    if data.get("monolithic"):  # the baseline is the very graph the stages were cut from
        (tmp / data["monolithic"]["path"]).write_bytes(q.model.SerializeToString(deterministic=True))
        data["monolithic"]["note"] = "the int8 whole graph the stages were cut from"
    data["int8"] = {"recipe": q.recipe.describe(), "uint8_resizes": q.uint8_resizes}


def _fp16(src: Path, dst: Path, keep_float: list[str] | bool = True) -> None:
    """float16 weights and activations; the tensors named in ``keep_float`` (or every input
    and output when True) stay float32 at the graph's boundary."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_float)
    dst.write_bytes(m.SerializeToString(deterministic=True))


def convert_bundle(bundle: str | os.PathLike, out: str | os.PathLike, target: str, batch_size: int = 1,
                   images: np.ndarray | None = None, calib_size: int = 256, force: bool = False,
                   log: Callable[[str], None] | None = None, mobile_ops: bool = True, int8_recipe=None) -> dict:
    """Write ``out``: ``bundle`` converted to ``target`` (ort, int8 or fp16); returns its manifest.

    Progress goes to the ``logging`` logger of this module (or to ``log``, if given)."""
    log = log or logger.info
    if target not in TARGETS:
        raise ExportError(f"unknown conversion target {target!r}; use one of {', '.join(TARGETS)}")
    src = Path(bundle)
    man = load_manifest(src, verify=True)
    data = json.loads(json.dumps(man.data))
    if data.get("precision", "fp32") != "fp32" or data.get("graph_format", "onnx") != "onnx":
        raise ExportError(f"{src} is already converted ({data.get('precision')}, {data.get('graph_format')}); "
                          "convert the fp32 ONNX bundle instead")
    outp = Path(out)
    if outp.resolve() == src.resolve():
        raise ExportError("the output must be a new directory, not the source bundle")
    if outp.exists() and (not outp.is_dir() or any(outp.iterdir())) and not force:
        raise ExportError(f"output directory {outp} exists and is not empty; pass --force to replace it")
    if target == "int8" and (images is None or len(images) == 0):
        raise DataError("int8 needs calibration images: pass --data with real images (any format the readers know)")
    if batch_size < 1:
        raise ExportError(f"--batch-size must be >= 1, got {batch_size}")
    outp.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outp.name}.", dir=outp.parent))
    try:
        work = tmp / ".work"
        work.mkdir()
        entries = list(data["graphs"]) + ([data["monolithic"]] if data.get("monolithic") else [])
        if target == "int8":
            _int8(src, tmp, work, data, images[:calib_size], int8_recipe)
            log(f"  quantized {len(data['graphs'])} graphs as one and cut it at the exits again")
        report = {}
        for entry in entries if target != "int8" else []:
            name = Path(entry["path"]).stem
            if target == "fp16":
                # The image and the logits stay float32 (what preprocessing gives and the host
                # reads); cached feature maps go from graph to graph in float16, no casts.
                image = data["preprocessing"]["input"]
                stage = entry is not data.get("monolithic")
                _fp16(src / entry["path"], tmp / entry["path"],
                      [image, *entry["logits"]] if stage else True)
                if stage:
                    for tname, t in entry.get("tensors", {}).items():
                        t["dtype"] = t["dtype"] if tname == image else "float16"
            else:
                m = _fix_batch(onnx.load(str(src / entry["path"])), batch_size)
                if mobile_ops:
                    m, rewritten = mobile_rewrite(m)
                    if any(rewritten.values()):
                        log(f"  {entry['path']}: rewrote {rewritten['Resize']} Resize and {rewritten['Flatten']} "
                            "Flatten nodes for mobile EPs")
                onnx.checker.check_model(m)
                onnx.save(m, str(work / f"{name}.onnx"))
                report[name] = mobile_report(m)
            log(f"  converted {entry['path']}")
        if target == "ort":
            from onnxruntime.tools.convert_onnx_models_to_ort import (
                OptimizationStyle,
                convert_onnx_models_to_ort,
            )

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
        shutil.rmtree(work)
        for entry in entries:
            entry["sha256"] = sha256_file(tmp / entry["path"])
            entry["bytes"] = (tmp / entry["path"]).stat().st_size
        by_path = {g["path"]: g["sha256"] for g in data["graphs"]}
        for e in data["exits"]:
            e["sha256"] = by_path[e["graph"]]
        data["precision"] = {"int8": "int8-qdq", "fp16": "fp16"}.get(target, "fp32")
        data["graph_format"] = "ort" if target == "ort" else "onnx"
        data["converted_from"] = {"bundle": src.name, "manifest_sha256": sha256_file(src / MANIFEST),
                                  "target": target, "calibration_images": int(min(calib_size, len(images)))
                                  if target == "int8" else None}
        write_json_atomic(tmp / MANIFEST, data)
        if (src / "thresholds.json").exists():
            shutil.copy(src / "thresholds.json", tmp / "thresholds.json")
        held = images[calib_size:] if images is not None and len(images) > calib_size else images
        agreement = _agreement(src, tmp, held)  # on images int8 was not calibrated on, when there are any
        if agreement is not None:
            data["conversion_check"] = agreement
            write_json_atomic(tmp / MANIFEST, data)
        replace_dir(tmp, outp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return data


def _agreement(src: Path, dst: Path, images: np.ndarray | None, n: int = 256) -> dict | None:
    """Top-1 agreement per exit between the fp32 and the converted chain on real images."""
    if images is None or len(images) == 0:
        return None
    a = ExitChain.load(src, warmup=False)
    b = ExitChain.load(dst, warmup=False)
    x = a.preprocess(images[-n:])
    la, lb = a.run_all(x), b.run_all(x)
    return {"images": int(len(x)),
            "top1_agreement": [float((p.argmax(1) == q.argmax(1)).mean()) for p, q in zip(la, lb)],
            "max_abs_logit_diff": [float(np.abs(p - q.astype(np.float32)).max()) for p, q in zip(la, lb)]}
