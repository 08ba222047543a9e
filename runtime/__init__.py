"""The torch-free ONNX Runtime side of ranet-edge (numpy + onnxruntime only).

>>> from ranet_edge.runtime import ExitChain
>>> chain = ExitChain.load("bundle/", provider="cpu")
>>> result = chain.predict(chain.preprocess(images))

Importing the package imports nothing else: each name below loads its module (and with it
numpy and onnxruntime) the first time it is used, so an app pays for what it touches
(benchmarks/runtime_footprint.py).
"""
from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec


def _check_onnxruntime() -> None:
    """No import, only a look: one line naming the extras when no onnxruntime build can be
    imported (the several-builds warning comes with the first real use, via ``_ort``). Run at
    the first use of a public name, not at package import, so that the build detection itself
    (:mod:`.ortbuilds`, which ``ranet-edge doctor`` reads) imports where onnxruntime cannot."""
    try:
        found = find_spec("onnxruntime") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent
        found = False
    if not found:
        from .ortbuilds import import_onnxruntime

        import_onnxruntime()  # raises the one-line MissingExtraError


TYPE_CHECKING = False  # typing itself is not imported: it would cost more than this module
if TYPE_CHECKING:
    from .chain import ExitChain, Prediction, StageRows, softmax
    from .manifest import Manifest, load_manifest
    from .operating_points import OperatingPoint, load_points, save_point
    from .preprocess import PreprocessSpec, preprocess, read_image
    from .providers import available as available_providers

_WHERE = {  # public name -> (module, attribute)
    "ExitChain": (".chain", "ExitChain"), "Prediction": (".chain", "Prediction"), "softmax": (".chain", "softmax"),
    "StageRows": (".chain", "StageRows"),
    "Manifest": (".manifest", "Manifest"), "load_manifest": (".manifest", "load_manifest"),
    "OperatingPoint": (".operating_points", "OperatingPoint"), "load_points": (".operating_points", "load_points"),
    "save_point": (".operating_points", "save_point"), "PreprocessSpec": (".preprocess", "PreprocessSpec"),
    "preprocess": (".preprocess", "preprocess"), "read_image": (".preprocess", "read_image"),
    "available_providers": (".providers", "available"),
}

__all__ = [
    "ExitChain", "Manifest", "OperatingPoint", "Prediction", "PreprocessSpec", "StageRows", "available_providers",
    "load_manifest", "load_points", "preprocess", "read_image", "save_point", "softmax",
]


def __getattr__(name: str) -> object:
    try:
        module, attr = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    _check_onnxruntime()
    value = getattr(import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
