"""Plugin execution providers: packages that bring a provider library for the ordinary
onnxruntime build (``onnxruntime-qnn``, ``onnxruntime-ep-openvino``, ``onnxruntime-ep-webgpu``).

Unlike the builds of :mod:`ranet_edge.runtime.ortbuilds`, a plugin installs a package of its own
beside the CPU build. Its library is registered with ONNX Runtime's environment once per
process (:func:`register`); sessions then select one of the devices it offers with
``SessionOptions.add_provider_for_devices`` (:func:`select`), not by name in ``providers=``.
"""
from __future__ import annotations

import importlib
import importlib.util
import threading
from dataclasses import dataclass
from typing import Any

from ranet_edge.errors import ProviderError

from ._ort import ort  # onnxruntime, through the build check


@dataclass(frozen=True)
class Plugin:
    """One plugin package and the provider it brings."""

    provider: str  # the execution provider name, e.g. "QNNExecutionProvider"
    module: str  # the Python package that knows the library path
    package: str  # the distribution to pip install
    extra: str | None  # the ranet-edge extra that installs it
    options: tuple[tuple[str, str], ...] = ()  # provider options used unless the caller gives them
    prefer: tuple[str, ...] = ("NPU", "GPU", "CPU")  # device types, the first one offered is used


#: Plugins ranet-edge knows. QNN: the HTP (Hexagon NPU) backend, on the NPU device (on x86_64
#: Linux the HTP runs in simulation and is offered as a CPU device), with the graph's input
#: quantization and output dequantization on the HTP too (by default ONNX Runtime leaves them
#: to the CPU provider), so that a converted graph runs whole there. OpenVINO: its CPU device
#: first (the one the tests compare with the CPU provider).
PLUGINS: dict[str, Plugin] = {p.provider: p for p in (
    Plugin("QNNExecutionProvider", "onnxruntime_qnn", "onnxruntime-qnn", "qnn",
           (("backend_type", "htp"), ("offload_graph_io_quantization", "0")), ("NPU", "CPU")),
    Plugin("OpenVINOExecutionProvider", "onnxruntime_ep_openvino", "onnxruntime-ep-openvino", "openvino-plugin",
           prefer=("CPU", "GPU", "NPU")),
    Plugin("WebGpuExecutionProvider", "onnxruntime_ep_webgpu", "onnxruntime-ep-webgpu", None, prefer=("GPU",)),
)}

#: What this onnxruntime build offers by itself, before any plugin is registered.
BUILT_IN: tuple[str, ...] = tuple(ort.get_available_providers())

_LOCK = threading.Lock()
_registered: dict[str, str] = {}  # provider -> library path


def installed(provider: str) -> bool:
    """Whether the plugin package of ``provider`` is importable (without importing it)."""
    plugin = PLUGINS.get(provider)
    return plugin is not None and importlib.util.find_spec(plugin.module) is not None


def register(provider: str) -> str:
    """Register the plugin library of ``provider`` with ONNX Runtime (once per process);
    returns the library path. A one-line ProviderError when the package is missing or
    ONNX Runtime refuses the library."""
    plugin = PLUGINS[provider]
    with _LOCK:
        if provider in _registered:
            return _registered[provider]
        if not hasattr(ort, "register_execution_provider_library"):
            raise ProviderError(f"onnxruntime {ort.__version__} cannot load plugin providers "
                                f"({plugin.package} needs onnxruntime >= 1.23); upgrade onnxruntime")
        try:
            lib = importlib.import_module(plugin.module).get_library_path()
        except ImportError as exc:
            raise ProviderError(f"{provider} needs {plugin.package}, which cannot be imported ({exc}); "
                                f"{_install_hint(plugin)}") from None
        try:
            ort.register_execution_provider_library(provider, str(lib))
        except Exception as exc:
            if "already" not in str(exc).lower():  # another library in this process registered it first
                first = (str(exc).strip().splitlines() or ["no message"])[0][:200]
                raise ProviderError(f"ONNX Runtime refuses the {plugin.package} library {lib} ({first}); "
                                    f"reinstall a version matching onnxruntime {ort.__version__}") from None
        _registered[provider] = str(lib)
        return str(lib)


def devices(provider: str) -> list:
    """The OrtEpDevices the registered plugin of ``provider`` offers on this machine."""
    return [d for d in ort.get_ep_devices() if d.ep_name == provider]


def select(so: ort.SessionOptions, provider: str, options: dict[str, Any] | None = None) -> list[str]:
    """Register ``provider``'s plugin and add it to ``so`` on one device it offers, the first
    of its preferred device types (the CPU provider stays behind it for nodes it does not
    take); returns the device in words. A one-line ProviderError when it offers none."""
    plugin = PLUGINS[provider]
    register(provider)
    offered = devices(provider)
    kinds = [str(d.device.type).rsplit(".", 1)[-1] for d in offered]
    rank = [plugin.prefer.index(k) if k in plugin.prefer else len(plugin.prefer) for k in kinds]
    found = [offered[rank.index(min(rank))]] if offered else []
    if not found:
        raise ProviderError(f"{provider} ({plugin.package}) is installed but offers no device on this machine "
                            f"(devices seen: {', '.join(describe(d) for d in ort.get_ep_devices()) or 'none'}); "
                            "run `ranet-edge doctor`, or use --provider cpu")
    opts = dict(plugin.options)
    opts.update({str(k): str(v) for k, v in (options or {}).items()})
    so.add_provider_for_devices(found, opts)
    return [describe(d) for d in found]


def describe(device) -> str:
    """``"QNNExecutionProvider on CPU (AMD)"``: one device of a provider, in words."""
    hw = device.device
    kind = str(hw.type).rsplit(".", 1)[-1]
    return f"{device.ep_name} on {kind} ({hw.vendor or device.ep_vendor})"


def report() -> list[dict[str, Any]]:
    """For ``doctor``: every known plugin, whether it is installed, registered, and the
    devices it offers (registering each installed one)."""
    out = []
    for name, plugin in PLUGINS.items():
        row: dict[str, Any] = {"provider": name, "package": plugin.package, "installed": installed(name),
                               "devices": [], "error": None}
        if row["installed"]:
            try:
                row["library"] = register(name)
                row["devices"] = [describe(d) for d in devices(name)]
            except ProviderError as exc:
                row["error"] = str(exc)
        out.append(row)
    return out


def _install_hint(plugin: Plugin) -> str:
    if plugin.extra:
        return f"pip install 'ranet-edge[{plugin.extra}]'"
    return f"pip install {plugin.package}"


def install_hint(provider: str) -> str:
    """How to install the plugin of ``provider``."""
    return _install_hint(PLUGINS[provider])
