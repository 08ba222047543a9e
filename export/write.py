"""Export step 6, write: the manifest of a validated export, and the bundle on disk.

A bundle is written into a temporary directory beside its target and renamed into place
(:func:`~ranet_edge.runtime.manifest.replace_dir`): a failed or interrupted export leaves
nothing half-written. Graphs are serialized deterministically and the manifest holds no
timestamps, so exporting one checkpoint twice gives byte-identical bundles.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ranet_edge import __version__
from ranet_edge.errors import ExportError
from ranet_edge.runtime.files import staged_dir
from ranet_edge.runtime.manifest import FORMAT, MANIFEST, SCHEMA_VERSION, write_json_atomic

from .graph_costs import Costs
from .partition import Stage
from .rewrite import opset_of
from .spec import ExportSpec
from .to_onnx import INPUT_NAME, Traced, logit_names
from .validate import ExitCheck

MONOLITHIC = "monolithic.onnx"


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse to replace a non-empty ``out`` unless ``force``: checked before any work.

    Raises:
        ExportError: ``out`` is a file, or a non-empty directory, and ``force`` is false.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"output directory {out} exists and is not empty; pass --force to replace it")


def read_assets(assets: Mapping[str, str | os.PathLike | bytes] | None) -> dict[str, bytes]:
    """The bytes of each asset a bundle carries (a tokenizer.json...), by file name.

    Raises:
        ExportError: a name that is not a plain file name, that a bundle's own files use, or
            a path that cannot be read.
    """
    out = {}
    for name, src in (assets or {}).items():
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(".") \
                or name == MANIFEST or name.endswith(".onnx"):
            raise ExportError(f"asset name {name!r} is not allowed: give a plain file name (not manifest.json, "
                              "no .onnx, no directory)")
        try:
            out[name] = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
        except OSError as exc:
            raise ExportError(f"asset {name!r}: cannot read {src}: {exc.strerror or exc}") from exc
    return out


def graph_files(stages: Sequence[Stage], baseline: onnx.ModelProto | None) -> dict[str, bytes]:
    """File name -> deterministic bytes of every graph of the bundle, stages first."""
    files = {f"stage{st.index}.onnx": st.model.SerializeToString(deterministic=True) for st in stages}
    if baseline is not None:
        files[MONOLITHIC] = baseline.SerializeToString(deterministic=True)
    return files


def build_manifest(traced: Traced, stages: Sequence[Stage], files: Mapping[str, bytes], costs: Costs,
                   spec: ExportSpec, input_shape: tuple[int, int, int] | None, table: Sequence[ExitCheck],
                   notes: list[str], metadata: dict | None = None) -> dict:
    """The bundle's ``manifest.json`` (see docs/bundle-contract.md and ranet_edge/schemas/manifest.schema.json); ``metadata``
    (model, preprocessing, class names...) overrides the generic fields it names. ``input_shape``
    None: named inputs (``traced.inputs``), recorded in ``inputs`` with every tensor's
    symbolic axes, and no image preprocessing."""
    values = traced.values
    named = input_shape is None
    axes = traced.axes if named else None
    digest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    graphs, exits = [], []
    for st in stages:
        fname = f"stage{st.index}.onnx"
        cache_bytes = sum(int(np.prod(values[c].shape[1:])) * values[c].dtype.itemsize for c in st.cache_outputs)
        graphs.append({
            "path": fname, "sha256": digest[fname], "inputs": st.inputs, "logits": st.logits,
            "cache_outputs": st.cache_outputs, "exits": st.exits, "flops": costs.graph_flops[st.index],
            "bytes": len(files[fname]),
            "tensors": {n: _tensor_desc(values[n], spec.batch_size, axes[n] if axes else None)
                        for n in st.inputs + st.cache_outputs},
        })
        for k in st.exits:
            exits.append({
                "index": k, "graph": fname, "sha256": digest[fname], "inputs": st.inputs,
                "logits": f"logits_{k}", "cache_outputs": st.cache_outputs,
                "flops": costs.flops[k], "stage_flops": costs.exit_flops[k], "dead_flops": costs.dead_flops[k],
                "run_flops": costs.run_flops[st.index], "params": costs.params[k],
                "cache_bytes_per_sample": cache_bytes, "num_classes": int(values[f"logits_{k}"].shape[1]),
            })
    if len({e["num_classes"] for e in exits}) == 1:  # recorded only where exits differ (absent: all equal),
        for e in exits:  # so the manifests of the usual case stay what they were
            del e["num_classes"]
    mono = None
    if MONOLITHIC in files:
        mono = {"path": MONOLITHIC, "sha256": digest[MONOLITHIC], "inputs": list(traced.inputs.names) if named else [INPUT_NAME],  # type: ignore[union-attr]
                "logits": logit_names(traced.num_exits), "bytes": len(files[MONOLITHIC])}
    generic_pre = None if named else {  # a model that states no preprocessing takes its input as given
        "input": INPUT_NAME, "shape": [spec.batch_size, *input_shape], "dtype": "float32", "layout": "NCHW",
        "color": "RGB", "size": input_shape[-1], "mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3,
        "resize": None, "scale": "uint8 / 255",
    }
    inputs = {"inputs": [{"name": n, **_tensor_desc(values[n], spec.batch_size, traced.axes[n])}
                         for n in traced.inputs.names]} if named else {}  # type: ignore[union-attr]
    return {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, **inputs,
        "preprocessing": generic_pre, "num_classes": int(values[f"logits_{traced.num_exits - 1}"].shape[1]),
        **(metadata or {}),
        "granularity": spec.granularity, "opset": opset_of(traced.graph), "batch_size": spec.batch_size,
        "rewrites": {"constant_resize": traced.resizes,
                     "applied_to": "stages and monolithic" if traced.baseline_rewritten else "stages"},
        "precision": "fp32", "graph_format": "onnx",
        "graphs": graphs, "exits": exits, "monolithic": mono,
        "validation": {"tolerance": spec.tolerance, "reference": "PyTorch eager, float32",
                       "table": [row.to_dict() for row in table]},
        "tools": _tool_versions(),
        "notes": notes,
    }


def write_bundle(out: str | os.PathLike, files: Mapping[str, bytes], manifest: dict) -> Path:
    """Write ``files`` and ``manifest.json`` into a temporary directory beside ``out`` and
    rename it into place (replacing ``out``); nothing is left behind on failure.

    Raises:
        OSError: the directory beside ``out`` cannot be written or renamed (the staged copy is
            removed first).
    """
    out = Path(out)
    with staged_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_json_atomic(tmp / MANIFEST, manifest)
    return out


def _tensor_desc(arr: np.ndarray, static_batch: int | None, axes: Sequence[str | None] | None = None) -> dict:
    """Shape (None on a dynamic axis) and dtype; with ``axes`` (named-input bundles), the
    axes' symbolic names too. Image bundles keep the form they always had."""
    shape: list[Any] = list(arr.shape)
    if axes is not None:
        return {"shape": [None if a else d for d, a in zip(shape, axes, strict=True)], "dtype": str(arr.dtype),
                "axes": list(axes)}
    if arr.dtype.kind == "f" and static_batch is None:
        shape[0] = None
    return {"shape": shape, "dtype": str(arr.dtype)}


def _tool_versions() -> dict[str, str]:
    versions = {"ranet_edge": __version__, "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        import onnxsim

        versions["onnxsim"] = getattr(onnxsim, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        pass
    return versions
