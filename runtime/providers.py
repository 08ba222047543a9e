"""Execution providers: short names, availability checks and session options."""
from __future__ import annotations

import threading
from typing import Any

from ranet_edge.errors import InputError, ProviderError

from ._ort import ort  # onnxruntime, through the build check
from .plugins import BUILT_IN, PLUGINS, install_hint, installed

__all__ = [
    "DEVICE_PROVIDERS", "PACKAGES", "SHORT_NAMES", "available", "is_plugin", "open_session", "provider_list",
    "resolve_provider", "session_options", "shared_cpu_arena",
]

SHORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dml": "DmlExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}

#: Which package brings each provider.
PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu (pip install 'ranet-edge[gpu]' after uninstalling other builds)",
    "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT installed)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino (pip install 'ranet-edge[openvino]')",
    "CoreMLExecutionProvider": "onnxruntime on macOS/iOS (onnxruntime-c / onnxruntime-objc)",
    "NnapiExecutionProvider": "onnxruntime-android",
    "XnnpackExecutionProvider": "onnxruntime-android / onnxruntime-mobile builds with XNNPACK",
    "DmlExecutionProvider": "onnxruntime-directml (pip install 'ranet-edge[directml]')",
    "QNNExecutionProvider": "onnxruntime-qnn (pip install 'ranet-edge[qnn]'; a plugin beside the CPU build)",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "WebGpuExecutionProvider": "onnxruntime-ep-webgpu (a plugin beside the CPU build)",
}

#: Providers whose tensors live on an accelerator (feature maps stay there between stages).
DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda",
                    "ROCMExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


def resolve_provider(provider: str) -> str:
    """Short (``"cuda"``, any case) or full name -> the full name, when this build offers the
    provider or an installed plugin package brings it (see :mod:`.plugins`). Plugins are not
    registered here.

    Raises:
        ProviderError: when the provider is unknown, not in this build, or its plugin package
            is not installed; the message names the package to install.
    """
    full = SHORT_NAMES.get(provider.lower(), provider)
    if full in BUILT_IN:
        return full
    if full in PLUGINS:
        if installed(full):
            return full
        raise ProviderError(f"execution provider {provider!r} ({full}) is not in this onnxruntime build and its "
                            f"plugin package {PLUGINS[full].package} is not installed; {install_hint(full)}, "
                            "then run `ranet-edge doctor`")
    available = ort.get_available_providers()
    if full not in available:
        known = full in PACKAGES or full in SHORT_NAMES.values()
        hint = f"; install {PACKAGES[full]} to get it, and run `ranet-edge doctor`" if full in PACKAGES else ""
        what = "is not available in this onnxruntime build" if known else "is not a known provider"
        raise ProviderError(
            f"execution provider {provider!r} ({full}) {what}; available: {', '.join(available)}{hint}"
        )
    return full


def provider_list(provider: str, options: dict[str, Any] | None = None) -> list:
    """The providers argument for InferenceSession: the requested one, then CPU for the
    operators it cannot run (ONNX Runtime's usual partitioning, reported per session).
    ``options`` are the provider's own (e.g. ``device_id``), passed with it.

    Raises:
        ProviderError: as :func:`resolve_provider`.
    """
    full = resolve_provider(provider)
    first = (full, dict(options)) if options else full
    return [first] if full == "CPUExecutionProvider" else [first, "CPUExecutionProvider"]


def open_session(path: str, so: ort.SessionOptions, provider: str,
                 options: dict[str, Any] | None = None) -> ort.InferenceSession:
    """A session on one graph file with ``provider`` (short or full name): a plugin provider
    is selected in ``so`` (runtime/plugins.py, registering its library once per process), a
    built-in one named in ``providers=``.

    Raises:
        ProviderError: as :func:`resolve_provider`, or when a plugin cannot be registered or
            offers no device on this machine.
    """
    full = resolve_provider(provider)
    if is_plugin(full):
        from .plugins import select

        select(so, full, options)
        return ort.InferenceSession(path, so)
    return ort.InferenceSession(path, so, providers=provider_list(provider, options))


def is_plugin(full: str) -> bool:
    """Whether provider ``full`` comes from a plugin package (selected per device through
    the session options) rather than built into this onnxruntime build (selected by name)."""
    return full not in BUILT_IN and full in PLUGINS


_ARENA_LOCK = threading.Lock()
_arena_shared: bool | None = None  # None: not tried yet


def shared_cpu_arena() -> bool:
    """Register one CPU memory arena with ONNX Runtime's environment (once per process).

    Each session otherwise keeps an arena of its own that never shrinks, so a chain of k
    graphs holds the sum of k peaks; sessions created with :func:`session_options` allocate
    from this one instead and the process holds the largest peak. False where this build
    cannot share one (its sessions then keep their own arenas).
    """
    global _arena_shared
    with _ARENA_LOCK:
        if _arena_shared is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _arena_shared = True
            except Exception as exc:  # another library in this process registered one first: share it
                _arena_shared = "already" in str(exc).lower()
        return _arena_shared


def session_options(threads: int | None, spinning: bool = False) -> ort.SessionOptions:
    """Options measured on small CNNs (see benchmarks/README): one intra-op thread unless told
    otherwise, no busy-wait spinning, sequential execution, every graph optimisation, and
    the process-wide CPU arena (benchmarks/predict_memory.py). Sessions record which provider
    took each node (:func:`ranet_edge.runtime.placement.node_placement` reads it).

    Args:
        threads: intra-op threads; None for one.
        spinning: let idle intra-op threads busy-wait (lower latency, a core kept busy).

    Raises:
        InputError: when ``threads`` is not a whole number >= 1 or None.
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads={threads!r}: give a whole number >= 1 (or None for one thread)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.log_severity_level = 3
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if shared_cpu_arena():
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so


def available() -> list[dict[str, str]]:
    """Every provider ONNX Runtime offers, with its short name, after registering every
    installed plugin package (those rows name it under ``plugin``, with their devices). A
    plugin that fails to register does not raise: its row, if listed, carries ``error``."""
    from .plugins import describe, devices, register

    plugged = {}
    for p in PLUGINS:
        if p not in BUILT_IN and installed(p):
            try:
                register(p)
                plugged[p] = {"plugin": PLUGINS[p].package, "devices": [describe(d) for d in devices(p)]}
            except ProviderError as exc:
                plugged[p] = {"plugin": PLUGINS[p].package, "devices": [], "error": str(exc)}
    short = {v: k for k, v in SHORT_NAMES.items()}
    return [{"name": p, "short": short.get(p, p), **plugged.get(p, {})} for p in ort.get_available_providers()]
