"""`ranet-edge doctor`: what this machine can run, and why a provider is missing.

The first thing to run when a provider is not there: which onnxruntime distributions are
installed (several is the classic trap), which providers the build offers, whether a session
can really be created on each accelerator (with the reason ONNX Runtime gives when not:
a missing CUDA or cuDNN library, no driver, ...), the CPU's instruction sets, whether torch
is installed, the plugin providers (onnxruntime-qnn, onnxruntime-ep-openvino, ...) with the
devices each offers, and, given a bundle, which provider runs each graph and what share of
its nodes it took.

Needs neither torch nor, to report that it is missing, onnxruntime: torch is looked up in
the package metadata, never imported.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .machine import cpu_info, gpu_hint, parse_cpuinfo
from .runtime._capture_output import captured_output
from .runtime.ortbuilds import EXTRAS_HINT, imported_from, installed_builds, several_builds_message

__all__ = ["captured_output", "check_provider", "cpu_info", "diagnose", "gpu_hint", "parse_cpuinfo", "place_bundle"]

#: Providers that run on an accelerator, with the package that brings each.
ACCELERATORS = {
    "CUDAExecutionProvider": "onnxruntime-gpu: pip install 'ranet-edge[gpu]'",
    "TensorrtExecutionProvider": "onnxruntime-gpu with TensorRT installed",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "DmlExecutionProvider": "onnxruntime-directml: pip install 'ranet-edge[directml]'",
    "OpenVINOExecutionProvider": "onnxruntime-openvino: pip install 'ranet-edge[openvino]'",
    "CoreMLExecutionProvider": "onnxruntime on macOS",
    "QNNExecutionProvider": "onnxruntime-qnn: pip install 'ranet-edge[qnn]' (a plugin beside the CPU build)",
    "WebGpuExecutionProvider": "onnxruntime-ep-webgpu (a plugin beside the CPU build)",
}


@dataclass(frozen=True)
class ProviderCheck:
    """Whether a session on one accelerator provider can really be created and run."""

    provider: str
    usable: bool
    reason: str | None  # what ONNX Runtime said when it could not, one line


@dataclass(frozen=True)
class GraphPlacement:
    """Where one graph of a bundle runs: the providers its session got and the nodes each took."""

    graph: str
    providers: list[str]  # what its session got, in priority order
    all_nodes_on_first: bool  # False: some nodes fall back to the providers after the first
    detail: str | None = None  # why not all on the first: the nodes elsewhere, or the load error
    nodes: dict[str, int] = field(default_factory=dict)  # provider -> nodes it took (ONNX Runtime's record)


@dataclass
class DoctorReport:
    """What ``ranet-edge doctor`` found; ``problems`` holds one line per problem, with its fix."""

    python: str
    platform: str
    cpu: str
    cpu_features: list[str]  # of the sets that matter to ONNX Runtime kernels
    onnxruntime_builds: list[dict[str, Any]]  # name, version, extra: every distribution installed
    onnxruntime: str | None  # version imported; None when it cannot be imported
    onnxruntime_path: str | None
    providers: list[str]  # what this build offers
    accelerators: list[ProviderCheck]  # every accelerator provider of this build, really tried
    plugins: list[dict[str, Any]]  # known plugin providers: package, installed, devices, error
    torch: str | None  # version installed (looked up, not imported)
    gpu_hint: str | None  # an accelerator visible on the machine, e.g. an NVIDIA driver
    bundle: dict[str, Any] | None = None  # path, provider, graphs: GraphPlacement rows, error
    problems: list[str] = field(default_factory=list)  # one line each, with the fix

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data (``doctor --json``), ``ok`` included."""
        return {**asdict(self), "ok": self.ok}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ----------------------------------------------------------------------- onnxruntime
def _reason(text: str) -> str | None:
    """The lines of an ONNX Runtime log that say what failed, as one line."""
    lines = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        line = re.sub(r"^\S+ \S+ \[[A-Z]\] ?:?\s*", "", line.strip())  # drop the timestamp and level
        line = re.sub(r"^\[[^\]]*\]\s*", "", line)
        if line and not set(line) <= set("* ") and re.search(r"fail|error|cannot|not |unable|missing", line, re.I):
            lines.append(line)
    return " | ".join(dict.fromkeys(lines)) or None


def check_provider(ort, provider: str) -> ProviderCheck:
    """Create a session on ``provider`` for a one-node graph and run it; if the session does
    not get the provider, say why, as ONNX Runtime said it."""
    import numpy as np

    from .runtime.executors._onnx_proto import FLOAT, gather_model
    from .runtime.providers import is_plugin

    so = ort.SessionOptions()
    so.log_severity_level = 2
    reason = None
    name = provider  # what the session calls it: a plugin the app registered may go by another name
    with captured_output() as log, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")  # onnxruntime's Python wrapper warns, its C++ side logs
        try:
            if is_plugin(provider):  # selected per device (runtime/plugins.py), not by name
                from .runtime.plugins import ep_name, select

                select(so, provider)
                name = ep_name(provider)
            sess = ort.InferenceSession(gather_model(FLOAT), so, providers=None if is_plugin(provider) else
                                        [provider, "CPUExecutionProvider"])
            got = sess.get_providers()
            if got and got[0] == name:
                x = np.arange(6, dtype=np.float32).reshape(3, 2)
                sess.run(None, {"x": x, "idx": np.array([2, 0], np.int64)})
        except Exception as exc:  # what ONNX Runtime raises is the reason
            got, reason = [], f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if got and got[0] == name:
        return ProviderCheck(provider, True, None)
    text = "\n".join([str(w.message) for w in said] + log)
    reason = reason or _reason(text) or "the session fell back to the CPU without a message"
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            reason += "; and libcuda.so.1 (the NVIDIA driver) cannot be loaded"
    return ProviderCheck(provider, False, reason[:600])


def place_bundle(ort, bundle: str | os.PathLike, provider: str) -> dict[str, Any]:
    """Which providers a session on each graph of ``bundle`` gets with ``provider``, how many
    nodes each took (ONNX Runtime's record), and whether every node runs on it (for a
    built-in provider, a session that may not fall back to the CPU is tried as well)."""
    from .errors import RanetEdgeError
    from .runtime.placement import node_placement
    from .runtime.plugins import ep_name, select
    from .runtime.providers import is_plugin, provider_list, resolve_provider

    out: dict[str, Any] = {"path": str(bundle), "provider": provider, "graphs": [], "error": None}
    try:
        manifest = load_manifest_checked(bundle)
        full = resolve_provider(provider)
        plugin = is_plugin(full)
        providers = None if plugin else provider_list(provider)

        def options(strict: bool = False):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            if strict:
                so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            if plugin:
                select(so, full)
            return so

        options()  # a plugin that offers no device says so here
        name = ep_name(full) if plugin else full  # what its sessions call it (the app may have named it)
    except RanetEdgeError as exc:
        out["error"] = str(exc)
        return out
    for entry in manifest.graphs:
        rel = entry.compiled_path(full) or entry.path
        path = str(Path(manifest.root) / rel)
        with captured_output():
            try:
                sess = ort.InferenceSession(path, options(), providers=providers)
            except Exception as exc:
                out["graphs"].append(asdict(GraphPlacement(rel, [], False, str(exc).splitlines()[0][:300])))
                continue
        got = sess.get_providers()
        placed = {p: len(ops) for p, ops in (node_placement(sess) or {}).items()}
        all_on, detail = True, None
        if placed:
            all_on = set(placed) == {name}
            if not all_on:
                detail = ", ".join(f"{n} of {sum(placed.values())} nodes on {p}" for p, n in placed.items())
        elif full != "CPUExecutionProvider" and not plugin:
            with captured_output():
                try:
                    ort.InferenceSession(path, options(strict=True), providers=providers)
                except Exception as exc:
                    all_on, detail = False, (str(exc).strip().splitlines() or [""])[0][:300]
        out["graphs"].append(asdict(GraphPlacement(rel, got, all_on and got[:1] == [name], detail, placed)))
    return out


def load_manifest_checked(bundle: str | os.PathLike):
    """The bundle's manifest, every sha256 checked.

    Raises:
        BundleError: a manifest or file that is missing, malformed or fails its sha256.
    """
    from .runtime.manifest import load_manifest

    return load_manifest(bundle, verify=True)


# ----------------------------------------------------------------------- the report
def diagnose(bundle: str | os.PathLike | None = None, provider: str | None = None) -> DoctorReport:
    """Everything ``ranet-edge doctor`` reports. ``provider`` (for the bundle) defaults to
    the first accelerator that works, else the CPU."""
    builds = installed_builds()
    cpu, features = cpu_info()
    problems: list[str] = []
    try:
        import onnxruntime as ort
    except ImportError as exc:
        ort, ort_error = None, (str(exc).strip().splitlines() or [""])[0]
    if len(builds) > 1:
        problems.append(several_builds_message(builds, imported_from(ort) if ort is not None else None))
    hint = gpu_hint()
    checks: list[ProviderCheck] = []
    plugins: list[dict[str, Any]] = []
    available: list[str] = []
    if ort is None:
        problems.append(f"onnxruntime cannot be imported ({ort_error}); install one build: {EXTRAS_HINT}")
    else:
        from .runtime.plugins import provider_of
        from .runtime.plugins import report as plugin_report

        plugins = plugin_report()  # registers them: they are then among the providers
        problems += [f"plugin {p['package']}: {p['error']}" for p in plugins if p["error"]]
        available = list(ort.get_available_providers())
        # a plugin library the app registered under a name of its own is checked as its provider
        checks = [check_provider(ort, provider_of(p)) for p in available if provider_of(p) in ACCELERATORS]
        problems += [f"{c.provider} is in this build but no session can use it: {c.reason}" for c in checks
                     if not c.usable]
        if hint and hint.startswith("NVIDIA") and "CUDAExecutionProvider" not in available:
            problems.append(f"an {hint} is present but this onnxruntime build has no CUDA provider; "
                            f"pip uninstall -y {' '.join(b.name for b in builds) or 'onnxruntime'}, "
                            "then pip install 'ranet-edge[gpu]'")
    report = DoctorReport(
        python=platform.python_version(), platform=f"{platform.system()} {platform.machine()}", cpu=cpu,
        cpu_features=features, onnxruntime_builds=[{"name": b.name, "version": b.version, "extra": b.extra} for b in builds],
        onnxruntime=getattr(ort, "__version__", None) if ort else None,
        onnxruntime_path=str(Path(ort.__file__).parent) if ort and getattr(ort, "__file__", None) else None,
        providers=available, accelerators=checks, plugins=plugins, torch=_version("torch") if importlib.util.find_spec("torch") else None,
        gpu_hint=hint, problems=problems)
    if bundle is not None:
        if ort is None:
            report.bundle = {"path": str(bundle), "provider": provider, "graphs": [],
                             "error": "onnxruntime cannot be imported"}
        else:
            from .runtime.providers import is_plugin

            # a plugin (QNN) runs converted bundles only: used when asked for
            chosen = provider or next((c.provider for c in checks if c.usable and not is_plugin(c.provider)),
                                      "CPUExecutionProvider")
            report.bundle = place_bundle(ort, bundle, chosen)
            if report.bundle["error"]:
                problems.append(f"bundle {bundle}: {report.bundle['error']}")
    return report
