"""Provider options for GPU providers: cuDNN algorithm search, TensorRT profiles and engine cache.

``ExitChain.load`` asks :func:`graph_providers` for each graph's ``providers`` argument.
For the CUDA provider it checks ``cudnn_conv_algo_search``; for TensorRT it adds the CUDA
provider behind it (for nodes TensorRT does not take), an engine and timing cache directory
(so a second load reuses the engines instead of building them again) and explicit profile
shapes per graph, min/opt/max from the batch buckets, so that one engine serves every
bucket. Options the caller gave always win.
"""
from __future__ import annotations

import os
from pathlib import Path

from ranet_edge.errors import InputError

from ._ort import ort  # onnxruntime, through the build check

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: The CUDA provider's cuDNN convolution algorithm search modes. EXHAUSTIVE (ONNX Runtime's
#: default) benchmarks every algorithm for each new input shape, HEURISTIC asks cuDNN's
#: heuristics, DEFAULT takes the first algorithm. Which pays off is measured, per GPU, by
#: ``benchmarks/gpu/check.sh`` (its ``cudnn_search`` section).
CUDNN_SEARCH_MODES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def _name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


def _options(p) -> dict:
    return dict(p[1]) if isinstance(p, tuple) else {}


def check_options(providers: list) -> None:
    """One-line errors for option values ONNX Runtime would reject with a long message."""
    for p in providers:
        mode = _options(p).get("cudnn_conv_algo_search")
        if _name(p) == CUDA and mode is not None and str(mode).upper() not in CUDNN_SEARCH_MODES:
            raise InputError(f"cudnn_conv_algo_search={mode!r} is not a cuDNN search mode; "
                             f"use one of {', '.join(CUDNN_SEARCH_MODES)}")


def trt_cache_dir(manifest) -> Path:
    """Where TensorRT engines of this bundle are kept: ``$RANET_EDGE_CACHE`` (default
    ``~/.cache/ranet-edge``) ``/tensorrt/<first 16 hex of the manifest's sha256>``."""
    root = Path(os.environ.get("RANET_EDGE_CACHE") or Path.home() / ".cache" / "ranet-edge")
    import hashlib  # here: only TensorRT needs it, and it costs ~4 ms at import (benchmarks/runtime_footprint.py)

    digest = hashlib.sha256((Path(manifest.root) / "manifest.json").read_bytes()).hexdigest()[:16]
    return root / "tensorrt" / digest


def _input_shapes(manifest, entry) -> dict[str, list] | None:
    """Each input's shape with the batch axis as None, from the manifest (None if unknown)."""
    image = manifest.preprocessing
    out = {}
    for name in entry.inputs:
        tensor = entry.tensor(name)
        shape = list(image.shape) if image is not None and name == image.input else (list(tensor.shape) if tensor else None)
        if not shape or shape[0] is not None or any(d is None for d in shape[1:]):
            return None  # unknown, or a static batch (nothing to profile)
        out[name] = shape
    return out


def trt_profile(manifest, entry, sizes: list[int]) -> dict[str, str]:
    """TensorRT profile options for one graph: min = smallest bucket, opt = max = largest
    (the batch the engine is tuned for is the one routing spends most rows in)."""
    shapes = _input_shapes(manifest, entry)
    if shapes is None or not sizes:
        return {}

    def spec(b: int) -> str:
        return ",".join(f"{n}:{'x'.join(str(d) for d in [b, *s[1:]])}" for n, s in shapes.items())

    return {"trt_profile_min_shapes": spec(min(sizes)), "trt_profile_opt_shapes": spec(max(sizes)),
            "trt_profile_max_shapes": spec(max(sizes))}


def graph_providers(providers: list, manifest, entry, sizes: list[int] | None) -> list:
    """The ``providers`` argument for one graph's session (``sizes``: its batch buckets)."""
    if _name(providers[0]) != TENSORRT:
        return providers
    opts = {"trt_engine_cache_enable": True, "trt_timing_cache_enable": True}
    cache = _options(providers[0]).get("trt_engine_cache_path") or str(trt_cache_dir(manifest))
    opts.update(trt_engine_cache_path=cache, trt_timing_cache_path=cache)
    if sizes:
        opts.update(trt_profile(manifest, entry, sizes))
    opts.update(_options(providers[0]))
    Path(cache).mkdir(parents=True, exist_ok=True)
    rest = [p for p in providers[1:] if _name(p) != CUDA]
    cuda = [CUDA] if CUDA in ort.get_available_providers() else []
    return [(TENSORRT, opts), *cuda, *rest]


def gather_providers(providers: list) -> list:
    """Providers for the one-node Gather sessions: never TensorRT (an engine for one Gather
    per shape would cost far more than the copy it does)."""
    out = [p for p in providers if _name(p) != TENSORRT]
    if _name(providers[0]) == TENSORRT and CUDA in ort.get_available_providers():
        out.insert(0, CUDA)
    return out
