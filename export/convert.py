"""Edge formats of a bundle: ORT format with static shapes, int8 (static QDQ), fp16, and
qnn (int8 QDQ with static shapes for the Qualcomm HTP, compiled into EPContext models).

Needs onnx and onnxruntime only (no torch). Each conversion writes a complete new bundle;
the runtime loads it like any other. int8 quantizes the chain as one graph calibrated on
real images and cuts it at the exits again, handing on uint8 tensors (export/int8_stages.py,
export/quantize.py); the ORT target is in export/mobile.py, the QNN target in export/qnn.py.

:func:`convert_bundle` runs named steps: check the request, convert the graphs (one step
per target), sign them (sha256 and sizes in the manifest), record where the bundle came
from, measure agreement with the source, and rename the temporary directory into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ranet_edge.errors import DataError, ExportError
from ranet_edge.runtime.chain import ExitChain
from ranet_edge.runtime.files import staged_dir
from ranet_edge.runtime.manifest import MANIFEST, load_manifest, sha256_file, write_json_atomic

from .int8_stages import write_int8
from .mobile import mobile_report, mobile_rewrite, to_ort
from .qnn import to_qnn

__all__ = ["TARGETS", "convert_bundle", "mobile_report", "mobile_rewrite"]

TARGETS = ("ort", "int8", "fp16", "qnn")


logger = logging.getLogger(__name__)  # what was converted (the CLI prints it)


def _fp16(src: Path, tmp: Path, data: dict, entries: list[dict], log: Callable[[str], None]) -> None:
    """float16 weights and activations. The image and the logits stay float32 (what
    preprocessing gives and the host reads); cached feature maps go from graph to graph in
    float16, no casts. The monolithic baseline keeps every input and output float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    image = data["preprocessing"]["input"]
    for entry in entries:
        stage = entry is not data.get("monolithic")
        m = convert_float_to_float16(onnx.load(str(src / entry["path"])),
                                     keep_io_types=[image, *entry["logits"]] if stage else True)
        (tmp / entry["path"]).write_bytes(m.SerializeToString(deterministic=True))
        if stage:
            for tname, t in entry.get("tensors", {}).items():
                t["dtype"] = t["dtype"] if tname == image else "float16"
        log(f"  converted {entry['path']}")


def convert_bundle(bundle: str | os.PathLike, out: str | os.PathLike, target: str, batch_size: int = 1,
                   images: np.ndarray | None = None, calib_size: int = 256, force: bool = False,
                   log: Callable[[str], None] | None = None, mobile_ops: bool = True, int8_recipe=None,
                   compile_qnn: bool = True) -> dict:
    """Write ``out``: ``bundle`` converted to ``target`` (ort, int8, fp16 or qnn); returns its manifest.

    qnn: int8 QDQ with a static batch of ``batch_size`` for the QNN HTP, and (``compile_qnn``,
    where onnxruntime-qnn is installed) each graph compiled into an EPContext model beside it
    (see export/qnn.py).

    Progress goes to the ``logging`` logger of this module (or to ``log``, if given)."""
    log = log or logger.info
    src, outp = Path(bundle), Path(out)
    data = _check_request(src, outp, target, batch_size, images, force)
    with staged_dir(outp) as tmp:
        work = tmp / ".work"
        work.mkdir()
        entries = list(data["graphs"]) + ([data["monolithic"]] if data.get("monolithic") else [])
        if target == "int8":
            write_int8(src, tmp, work, data, images[:calib_size], int8_recipe)
            log(f"  quantized {len(data['graphs'])} graphs as one and cut it at the exits again")
        elif target == "fp16":
            _fp16(src, tmp, data, entries, log)
        elif target == "qnn":
            to_qnn(src, tmp, work, data, images[:calib_size], batch_size, log, int8_recipe, compile_qnn)
        else:
            to_ort(src, tmp, work, data, entries, batch_size, mobile_ops, log)
        shutil.rmtree(work)
        _sign(tmp, data, entries)
        _record_source(data, src, target, calib_size, images)
        write_json_atomic(tmp / MANIFEST, data)
        if (src / "thresholds.json").exists():
            shutil.copy(src / "thresholds.json", tmp / "thresholds.json")
        held = images[calib_size:] if images is not None and len(images) > calib_size else images
        agreement = _agreement(src, tmp, held, qdq=target == "qnn")  # on images not calibrated on, if any
        if agreement is not None:
            data["conversion_check"] = agreement
            write_json_atomic(tmp / MANIFEST, data)
    return data


def _check_request(src: Path, outp: Path, target: str, batch_size: int, images: np.ndarray | None,
                   force: bool) -> dict:
    """Refuse what cannot be converted, before any work; returns a copy of the source manifest."""
    if target not in TARGETS:
        raise ExportError(f"unknown conversion target {target!r}; use one of {', '.join(TARGETS)}")
    man = load_manifest(src, verify=True)
    data = json.loads(json.dumps(man.data))
    if data.get("precision", "fp32") != "fp32" or data.get("graph_format", "onnx") != "onnx":
        raise ExportError(f"{src} is already converted ({data.get('precision')}, {data.get('graph_format')}); "
                          "convert the fp32 ONNX bundle instead")
    if outp.resolve() == src.resolve():
        raise ExportError("the output must be a new directory, not the source bundle")
    if outp.exists() and (not outp.is_dir() or any(outp.iterdir())) and not force:
        raise ExportError(f"output directory {outp} exists and is not empty; pass --force to replace it")
    if target in ("int8", "qnn") and (images is None or len(images) == 0):
        raise DataError(f"{target} needs calibration images: pass --data with real images (any format the readers know)")
    if batch_size < 1:
        raise ExportError(f"--batch-size must be >= 1, got {batch_size}")
    return data


def _sign(tmp: Path, data: dict, entries: list[dict]) -> None:
    """The sha256 and size of every graph written, in its entry and the exits it carries."""
    for entry in entries:
        entry["sha256"] = sha256_file(tmp / entry["path"])
        entry["bytes"] = (tmp / entry["path"]).stat().st_size
    by_path = {g["path"]: g["sha256"] for g in data["graphs"]}
    for e in data["exits"]:
        e["sha256"] = by_path[e["graph"]]


def _record_source(data: dict, src: Path, target: str, calib_size: int, images: np.ndarray | None) -> None:
    data["precision"] = {"int8": "int8-qdq", "qnn": "int8-qdq", "fp16": "fp16"}.get(target, "fp32")
    data["graph_format"] = "ort" if target == "ort" else "onnx"
    data["converted_from"] = {"bundle": src.name, "manifest_sha256": sha256_file(src / MANIFEST),
                              "target": target, "calibration_images": int(min(calib_size, len(images)))
                              if target in ("int8", "qnn") else None}


def _agreement(src: Path, dst: Path, images: np.ndarray | None, n: int = 256, qdq: bool = False) -> dict | None:
    """Top-1 agreement per exit between the fp32 and the converted chain on real images.

    ``qdq`` (the qnn target): the converted QDQ graphs run as written (CPU provider, graph
    optimisations off; ranet_edge/agreement.py: ``qdq_run_all``), which is what the HTP
    implements, instead of the CPU provider's int8 kernels: those saturate on x86 CPUs
    without VNNI, so the figure would describe the converting machine, not the bundle.
    """
    if images is None or len(images) == 0:
        return None
    a = ExitChain.load(src, warmup=False)
    x = a.preprocess(images[-n:])
    if qdq:
        from ranet_edge.agreement import qdq_run_all

        la, lb = a.run_all(x), qdq_run_all(dst, x)
    else:
        la, lb = a.run_all(x), ExitChain.load(dst, warmup=False).run_all(x)
    return {"images": int(len(x)),
            "top1_agreement": [float((p.argmax(1) == q.argmax(1)).mean()) for p, q in zip(la, lb)],
            "max_abs_logit_diff": [float(np.abs(p - q.astype(np.float32)).max()) for p, q in zip(la, lb)]}
