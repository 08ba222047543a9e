"""Plugin execution providers: packages that bring a provider library for the ordinary
onnxruntime build (``onnxruntime-qnn``, ``onnxruntime-ep-openvino``, ``onnxruntime-ep-webgpu``).

Unlike the builds of :mod:`ranet_edge.runtime.ortbuilds`, a plugin installs a package of its own
beside the CPU build. Its library is registered with ONNX Runtime's environment once per
process (:func:`register`); sessions then select one of the devices it offers with
``SessionOptions.add_provider_for_devices`` (:func:`select`), not by name in ``providers=``.

An application may have registered the library itself before loading a chain, as ONNX
Runtime's documentation shows (``ort.register_execution_provider_library(NAME, path)``),
under the provider's name or any other. :func:`register` then reuses that registration: it
finds it among ``ort.get_ep_devices()`` (by the ``library_path`` ONNX Runtime records in
each device's metadata, or by the provider's name) and registers nothing a second time.
Sessions and their placement then name the provider as the application registered it
(:func:`ep_name`).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
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

#: Where ONNX Runtime records, in an EP device's metadata, the library that registered it.
LIBRARY_KEY = "library_path"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _library_names() -> dict[str, str]:
    """Registration name -> library, for every library registered in this process that is
    not part of the onnxruntime package itself (a CUDA plugin it bundles counts as built in)."""
    if not hasattr(ort, "get_ep_devices"):  # onnxruntime < 1.23: no plugin libraries
        return {}
    own = os.path.dirname(os.path.realpath(ort.__file__))
    out = {}
    for d in ort.get_ep_devices():
        lib = dict(d.ep_metadata or {}).get(LIBRARY_KEY)
        if lib and not os.path.realpath(lib).startswith(own + os.sep):
            out[d.ep_name] = lib
    return out


#: What this onnxruntime build offers by itself: its providers, less the plugin libraries
#: an application registered before this module was imported (those go through
#: :func:`register` and :func:`select` like any plugin).
BUILT_IN: tuple[str, ...] = tuple(p for p in ort.get_available_providers() if p not in _library_names())


@dataclass(frozen=True)
class Registration:
    """How a plugin's library is registered in this process."""

    name: str  # the registration name: what sessions and their placement call the provider
    library: str  # the library file
    by_app: bool  # registered before ranet-edge asked (reused as it is)


_LOCK = threading.Lock()
_registered: dict[str, Registration] = {}  # provider -> its registration


def installed(provider: str) -> bool:
    """Whether ``provider``'s plugin can be used: its package is importable (checked without
    importing it), or the application registered a library under the provider's name."""
    plugin = PLUGINS.get(provider)
    if plugin is None:
        return False
    return importlib.util.find_spec(plugin.module) is not None or provider in _library_names()


def _package_library(plugin: Plugin) -> str:
    try:
        return str(importlib.import_module(plugin.module).get_library_path())
    except ImportError as exc:
        raise ProviderError(f"{plugin.provider} needs {plugin.package}, which cannot be imported ({exc}); "
                            f"{_install_hint(plugin)}") from None


def _existing(plugin: Plugin) -> Registration | None:
    """The registration the application made of ``plugin``'s library, if any: under the
    provider's own name first, else under any name whose devices come from the package's
    library. None when no device of it is registered."""
    names = _library_names()
    if plugin.provider in names:
        return Registration(plugin.provider, names[plugin.provider], True)
    if not names or importlib.util.find_spec(plugin.module) is None:
        return None
    lib = _package_library(plugin)
    found = sorted(name for name, path in names.items() if _same_file(path, lib))
    return Registration(found[0], names[found[0]], True) if found else None


def register(provider: str) -> str:
    """Register the plugin library of ``provider`` with ONNX Runtime, once per process, or
    reuse the registration the application made; returns the library path.

    Raises:
        ProviderError: onnxruntime is too old for plugins, the package is missing, or ONNX
            Runtime refuses the library (one line, with the fix).
    """
    return _registration(provider).library


def ep_name(provider: str) -> str:
    """The name ONNX Runtime knows plugin ``provider`` by in this process (what
    ``session.get_providers()`` and the node placement say): the provider's own name,
    unless the application registered its library under another. Registers it if needed.

    Raises:
        ProviderError: as :func:`register`.
    """
    return _registration(provider).name


def provider_of(name: str) -> str:
    """The provider a registration name stands for (``QNNExecutionProvider`` for the name an
    application registered onnxruntime-qnn's library under, once :func:`register` has found
    it); ``name`` itself otherwise."""
    return next((p for p, reg in _registered.items() if reg.name == name), name)


def _registration(provider: str) -> Registration:
    plugin = PLUGINS[provider]
    with _LOCK:
        if provider in _registered:
            return _registered[provider]
        if not hasattr(ort, "register_execution_provider_library"):
            raise ProviderError(f"onnxruntime {ort.__version__} cannot load plugin providers "
                                f"({plugin.package} needs onnxruntime >= 1.23); upgrade onnxruntime")
        found = _existing(plugin)
        if found is None:
            lib = _package_library(plugin)
            try:
                ort.register_execution_provider_library(provider, lib)
            except Exception as exc:
                # "already registered": a library registered under this name that offers no device here
                if "already" not in str(exc).lower():
                    first = (str(exc).strip().splitlines() or ["no message"])[0][:200]
                    raise ProviderError(f"ONNX Runtime refuses the {plugin.package} library {lib} ({first}); "
                                        f"reinstall a version matching onnxruntime {ort.__version__}") from None
            found = Registration(provider, lib, False)
        _registered[provider] = found
        return found


def devices(provider: str) -> list:
    """The OrtEpDevices the registered plugin of ``provider`` offers on this machine (under
    the name it is registered by, see :func:`ep_name`; none before it is registered)."""
    reg = _registered.get(provider)
    name = reg.name if reg else provider
    return [d for d in ort.get_ep_devices() if d.ep_name == name]


def select(so: ort.SessionOptions, provider: str, options: dict[str, Any] | None = None) -> list[str]:
    """Register ``provider``'s plugin and add it to ``so`` on one device it offers, the first
    of its preferred device types (the CPU provider stays behind it for nodes it does not
    take); returns the device in words.

    Raises:
        ProviderError: the plugin cannot be registered (see :func:`register`) or offers no
            device on this machine.
    """
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
    """For ``doctor``: every known plugin, whether it is installed, registered (the library,
    the name it is registered by, whether the application registered it), and the devices it
    offers (registering each installed one)."""
    out = []
    for name, plugin in PLUGINS.items():
        row: dict[str, Any] = {"provider": name, "package": plugin.package, "installed": installed(name),
                               "devices": [], "error": None}
        if row["installed"]:
            try:
                reg = _registration(name)
                row.update(library=reg.library, registered_as=reg.name, registered_by_app=reg.by_app)
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
