"""Which onnxruntime build is installed: exactly one of the variants the extras bring.

Every onnxruntime build (``onnxruntime``, ``onnxruntime-gpu``, ``onnxruntime-openvino``,
``onnxruntime-directml``, ...) installs the same ``onnxruntime/`` package folder. With two
of them installed, whichever pip wrote last is the one that runs, and a provider silently
disappears (CUDA after a later ``pip install onnxruntime``). The base requirements therefore
hold no build; the extras ``cpu``, ``gpu``, ``openvino`` and ``directml`` each bring one.

Imports nothing heavy, so ``ranet-edge doctor`` can report even when onnxruntime is missing.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType

from ranet_edge.errors import MissingExtraError

__all__ = [
    "BUILDS", "EXTRAS_HINT", "PLUGIN_SINCE", "Build", "SeveralBuildsWarning", "import_onnxruntime",
    "imported_from", "installed_builds", "several_builds_message",
]

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

#: Distributions that became plugin execution providers from a major version on: from then
#: they install a package of their own beside the CPU build (onnxruntime-qnn 2.x:
#: ``onnxruntime_qnn/``), not an ``onnxruntime/`` folder, so they are no second build.
PLUGIN_SINCE: dict[str, int] = {"onnxruntime-qnn": 2}

EXTRAS_HINT = ("pip install 'ranet-edge[cpu]' (or [gpu] for CUDA and TensorRT, [openvino] for "
               "Intel OpenVINO, [directml] for DirectML on Windows)")


class SeveralBuildsWarning(UserWarning):
    """More than one onnxruntime distribution is installed."""


@dataclass(frozen=True)
class Build:
    """One installed onnxruntime distribution, as its ``*.dist-info`` folder names it."""

    name: str  # distribution name, e.g. "onnxruntime-gpu"
    version: str
    extra: str | None  # the ranet-edge extra that installs it, if any
    location: str = ""  # the sys.path entry it is installed in


_DIST_NAMES = {name.replace("-", "_"): name for name in BUILDS}


def installed_builds() -> list[Build]:
    """Every onnxruntime distribution installed on ``sys.path``, from the names of the
    ``*.dist-info`` / ``*.egg-info`` folders (``onnxruntime_gpu-1.31.1.dist-info``): a directory
    listing per path entry, a few milliseconds, where ``importlib.metadata`` costs about as
    much as importing onnxruntime itself. A distribution installed in two places counts once
    per place, as both are on the path."""
    found, seen = [], set()
    for entry in sys.path:
        where = os.path.abspath(entry or os.curdir)
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for folder in sorted(names):
            stem, dot, kind = folder.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            dist, _, version = stem.partition("-")
            name = _DIST_NAMES.get(dist.lower().replace("-", "_").replace(".", "_"))
            version = version.split("-")[0] or "unknown"
            if name in PLUGIN_SINCE and version.split(".")[0].isdigit() and int(version.split(".")[0]) >= PLUGIN_SINCE[name]:
                continue
            if name is not None and (name, where) not in seen:
                seen.add((name, where))
                found.append(Build(name, version, BUILDS[name], where))
    order = list(BUILDS)
    return sorted(found, key=lambda b: order.index(b.name))  # stable: path order within a name


def several_builds_message(builds: list[Build], imported_from: str | None = None) -> str:
    """The warning for ``builds``; ``imported_from``: the sys.path entry whose onnxruntime/
    folder Python imported, when known."""
    names = " ".join(dict.fromkeys(b.name for b in builds))
    listed = ", ".join(f"{b.name} {b.version}" for b in builds)
    running = [b for b in builds if imported_from and b.location == imported_from]
    if len({b.location for b in builds}) == 1:
        how = "they share one onnxruntime/ folder, so the one installed last runs and providers of the others are missing"
    elif len(running) == 1:
        how = f"the onnxruntime/ folder in {imported_from} ({running[0].name}) runs and the others' providers are missing"
    else:
        how = "the onnxruntime/ folder first on sys.path runs and the others' providers are missing"
    return f"several onnxruntime builds are installed ({listed}); {how}. Repair: pip uninstall -y {names}, then install one: {EXTRAS_HINT}"


def imported_from(onnxruntime: ModuleType) -> str:
    """The sys.path entry whose ``onnxruntime/`` folder ``onnxruntime`` was imported from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(onnxruntime.__file__ or "")))


def import_onnxruntime() -> ModuleType:
    """``import onnxruntime``, checked: the one way the runtime imports it (``_ort``).

    Raises:
        MissingExtraError: when no build can be imported (one line naming the extras; the
            import's own first line in parentheses).

    Warns:
        SeveralBuildsWarning: when more than one build is installed (which one runs, and the
            ``pip uninstall`` that repairs it).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        reason = (str(exc).strip().splitlines() or ["import failed"])[0]
        raise MissingExtraError(f"no onnxruntime build is installed ({reason}); install one: {EXTRAS_HINT}") from None
    builds = installed_builds()
    if len(builds) > 1:
        warnings.warn(several_builds_message(builds, imported_from(onnxruntime)), SeveralBuildsWarning, stacklevel=2)
    return onnxruntime
