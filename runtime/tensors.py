"""What the manifest records of tensors: a bundle's network inputs and the tensors its graphs
hand on, each with its dtype, its shape and the names of its dynamic axes.

Image bundles written before named inputs existed record no ``inputs``: their one input is
read from ``preprocessing`` (float32, a dynamic or static batch, then C, H, W), so old
bundles load unchanged. Text and other non-image bundles record their inputs here and have
no ``preprocessing``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranet_edge.errors import BundleError

from ._fields import Fields, dims, is_list, is_str

__all__ = ["InputInfo", "TensorInfo", "parse_inputs", "parse_tensor"]

#: Element types a named input may have (numpy names).
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool", "uint8")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor handed between graphs, as the exporter recorded it."""

    shape: tuple[int | None, ...]  # None: a dynamic axis (the batch, in a dynamic-batch bundle)
    dtype: str  # numpy name, e.g. "float32"
    #: Per axis, the name of a dynamic axis ("batch", "sequence", ...) or None for a fixed one;
    #: empty in bundles written before the field existed (then only the batch can be dynamic).
    axes: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class InputInfo:
    """One network input: its name, dtype and shape (None on the dynamic axes, named in ``axes``)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    axes: tuple[str | None, ...]

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample (without its batch axis); None on a dynamic axis."""
        return self.shape[1:]

    def describe(self) -> str:
        """``int64 (batch, sequence)`` or ``float32 (N, 3, 32, 32)``: what a caller must give."""
        parts = [a if a is not None else str(d) for d, a in zip(self.shape, self.axes, strict=True)]
        if parts and self.axes and self.axes[0] is None and self.shape[0] is not None:
            parts[0] = str(self.shape[0])
        return f"{self.dtype} ({', '.join(parts)})"


def _axes(v: Any) -> bool:
    return isinstance(v, list) and all(a is None or (isinstance(a, str) and a) for a in v)


def parse_tensor(mpath: Path, raw: Any, where: str) -> TensorInfo:
    """A ``tensors`` entry of a graph.

    Raises:
        BundleError: a field missing or mistyped, or ``axes`` of another length than ``shape``.
    """
    tf = Fields(mpath, raw, where)
    shape = tuple(tf("shape", dims, "a list of sizes"))
    axes = tuple(tf("axes", _axes, "a list of axis names or nulls", []))
    if axes and len(axes) != len(shape):
        raise BundleError(f"{mpath}: {where}.axes names {len(axes)} axes for a shape of {len(shape)}; "
                          "re-export the bundle")
    return TensorInfo(shape, tf("dtype", is_str, 'a dtype name like "float32"'), axes)


def parse_inputs(mpath: Path, raw: Any, image: Any) -> tuple[InputInfo, ...]:
    """The bundle's inputs: ``raw`` (the manifest's ``inputs`` list, None when absent) or,
    in a bundle that records none, the image input its ``preprocessing`` describes.

    Raises:
        BundleError: neither is present, or an entry is malformed (a field missing or
            mistyped, an unknown dtype, a shape and axes that disagree, a name twice).
    """
    if raw is None:
        if image is None:
            raise BundleError(f"{mpath} records neither inputs nor preprocessing; re-export the bundle")
        shape = tuple(image.shape)
        return (InputInfo(image.input, image.dtype, shape, ("batch" if shape[0] is None else None,)
                          + (None,) * (len(shape) - 1)),)
    if not is_list(raw) or not raw:
        raise BundleError(f"{mpath}: inputs is {raw!r:.80}, expected a non-empty list of input objects; "
                          "re-export the bundle")
    out = []
    for i, entry in enumerate(raw):
        f = Fields(mpath, entry, f"inputs[{i}]")
        shape = tuple(f("shape", lambda v: isinstance(v, list) and len(v) >= 1 and all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1) for d in v), "a list of sizes"))
        axes = tuple(f("axes", _axes, "a list of axis names or nulls"))
        if len(axes) != len(shape) or any((a is None) == (d is None) for a, d in zip(axes, shape, strict=False)):
            raise BundleError(f"{mpath}: inputs[{i}] has shape {list(shape)} and axes {list(axes)}: each axis is a "
                              "size or a name; re-export the bundle")
        dtype = f("dtype", lambda v: v in INPUT_DTYPES, f"one of {', '.join(INPUT_DTYPES)}")
        out.append(InputInfo(f("name", lambda v: is_str(v) and bool(v), "a tensor name"), dtype, shape, axes))
    names = [i.name for i in out]
    if len(set(names)) != len(names):
        raise BundleError(f"{mpath}: inputs names a tensor twice ({names}); re-export the bundle")
    return tuple(out)
