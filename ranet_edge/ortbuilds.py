"""Which onnxruntime build is installed: exactly one of the variants the extras bring.

Every onnxruntime build (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-openvino``,
``onnxruntime-directml``, ...) installs the same ``onnxruntime/`` package folder. With two
of them installed, whichever pip wrote last is the one that runs, and a provider silently
disappears (CUDA after a later ``pip install onnxruntime``). The base requirements therefore
hold no build; the extras ``cpu``, ``gpu``, ``openvino`` and ``directml`` each bring one.

Imports nothing heavy, so ``ranet-edge doctor`` can report even when onnxruntime is missing.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from types import ModuleType

from .errors import MissingExtraError

#: Distributions that install the ``onnxruntime`` package, with the extra that brings each.
BUILDS: dict[str, str | None] = {
    "onnxruntime": "cpu",
    "onnxruntime-gpu": "gpu",
    "onnxruntime-openvino": "openvino",
    "onnxruntime-directml": "directml",
    "onnxruntime-rocm": None,
    "onnxruntime-qnn": None,
    "onnxruntime-cann": None,
    "onnxruntime-migraphx": None,
    "onnxruntime-training": None,
    "ort-nightly": None,
    "ort-nightly-gpu": None,
}

EXTRAS_HINT = ("pip install 'ranet-edge[cpu]' (or [gpu] for CUDA and TensorRT, [openvino] for "
               "Intel OpenVINO, [directml] for DirectML on Windows)")


class SeveralBuildsWarning(UserWarning):
    """More than one onnxruntime distribution is installed."""


@dataclass(frozen=True)
class Build:
    name: str  # distribution name, e.g. "onnxruntime-gpu"
    version: str
    extra: str | None  # the ranet-edge extra that installs it, if any


def installed_builds() -> list[Build]:
    """Every onnxruntime distribution installed on ``sys.path``, by its metadata."""
    found = []
    for name, extra in BUILDS.items():
        try:
            found.append(Build(name, importlib.metadata.version(name), extra))
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def several_builds_message(builds: list[Build]) -> str:
    names = " ".join(b.name for b in builds)
    listed = ", ".join(f"{b.name} {b.version}" for b in builds)
    return (f"several onnxruntime builds are installed ({listed}); they share one onnxruntime/ folder, so "
            f"the one installed last runs and providers of the others are missing. Repair: pip uninstall -y "
            f"{names}, then install one: {EXTRAS_HINT}")


def import_onnxruntime() -> ModuleType:
    """``import onnxruntime``; a one-line MissingExtraError naming the extras when no build is
    installed, and a SeveralBuildsWarning when more than one is."""
    try:
        import onnxruntime
    except ImportError as exc:
        reason = (str(exc).strip().splitlines() or ["import failed"])[0]
        raise MissingExtraError(f"no onnxruntime build is installed ({reason}); install one: {EXTRAS_HINT}") from None
    builds = installed_builds()
    if len(builds) > 1:
        warnings.warn(several_builds_message(builds), SeveralBuildsWarning, stacklevel=2)
    return onnxruntime
