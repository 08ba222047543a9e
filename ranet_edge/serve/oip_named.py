"""Input tensors of an Open Inference Protocol request -> a named-input bundle's arrays.

A bundle of named inputs (a text encoder's INT64 ``input_ids`` and ``attention_mask``, a
dynamic sequence axis) takes one tensor per input the manifest declares, each under its own
name, with the datatype of its dtype (:data:`DATATYPES`), its rank and its fixed axes; -1 in
the metadata marks a dynamic axis. Contents come as JSON ``data`` (flat or nested, row-major),
binary (REST binary extension, gRPC ``raw_input_contents``: little-endian) or gRPC typed
``contents``. Every refusal is a one-line RequestError naming the input; the arrays are then
checked together by :meth:`~ranet_edge.serve.engine.ServedModel.check_named` (shared batch
and sequence sizes, ``max_length``). :func:`decode_inputs` picks this or the image inputs
(``oip_tensors.py``) by the bundle. Used by ``oip.py``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ranet_edge.runtime.inputs import NamedBatch
from ranet_edge.runtime.tensors import InputInfo

from .api import RequestError
from .engine import ServedModel
from .oip_tensors import IMAGE, INPUT, TensorIn, decode_input, flatten, input_shape, kind, show
from .oip_tensors import accepted as image_accepted

#: numpy dtype of a manifest input -> (Open Inference Protocol datatype, little-endian dtype as sent)
DATATYPES: dict[str, tuple[str, str]] = {
    "float32": ("FP32", "<f4"), "float16": ("FP16", "<f2"), "float64": ("FP64", "<f8"), "int64": ("INT64", "<i8"),
    "int32": ("INT32", "<i4"), "uint8": ("UINT8", "u1"), "bool": ("BOOL", "?")}


def signature(info: InputInfo) -> str:
    """``INT64 [-1, -1]``: what a request sends for ``info`` (-1: a dynamic axis)."""
    return f"{DATATYPES[info.dtype][0]} {[-1 if d is None else d for d in info.shape]}"


def metadata(model: ServedModel) -> list[dict]:
    """The ``inputs`` of the model metadata: one per manifest input."""
    return [{"name": i.name, "datatype": DATATYPES[i.dtype][0], "shape": [-1 if d is None else d for d in i.shape]}
            for i in model.chain.inputs]


def accepted(model: ServedModel) -> str:
    """The inputs this model takes, as the end of a refusal's message."""
    return "send " + ", ".join(f"{i.name!r} ({signature(i)})" for i in model.chain.inputs) + ", each once"


def input_metadata(model: ServedModel) -> list[dict]:
    """The model metadata's ``inputs``: an image bundle's ``image`` and ``input``, or the
    named inputs of its manifest."""
    if model.named:
        return metadata(model)
    c, h, w = input_shape(model)
    return [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}]


def accepted_any(model: ServedModel) -> str:
    """What the model takes, either kind of bundle, as the end of a refusal's message."""
    return accepted(model) if model.named else image_accepted(model) + ", exactly one"


def decode_inputs(tensors: Sequence[TensorIn], model: ServedModel, max_rows: int) -> np.ndarray | NamedBatch:
    """A request's input tensors -> what the engine takes: an image bundle's float32 NCHW
    batch (exactly one of ``image``, ``input``) or a named-input bundle's arrays.

    Raises:
        RequestError: as :func:`decode_named`, or for an image bundle an unknown input, not
            exactly one, or a refusal of :func:`~ranet_edge.serve.oip_tensors.decode_input`.
    """
    if model.named:
        return decode_named(tensors, model, max_rows)
    names = [t.name for t in tensors]
    for t in tensors:
        if t.name not in (IMAGE, INPUT):
            raise RequestError(400, f"unknown input {show(t.name)}; {image_accepted(model)}")
    if len(tensors) != 1:
        what = "both" if set(names) == {IMAGE, INPUT} else f"{len(tensors)} inputs"
        raise RequestError(400, f"the request gives {what}; {image_accepted(model)}, exactly one")
    return decode_input(tensors[0], model, max_rows)


def decode_named(tensors: Sequence[TensorIn], model: ServedModel, max_rows: int) -> NamedBatch:
    """One array per manifest input from ``tensors``, each checked alone, then all together.

    Raises:
        RequestError: 400 for an unknown, repeated or missing input, a wrong datatype, rank or
            fixed axis, contents that disagree with the shape or the datatype, inputs that
            disagree on the batch or a shared axis; 413 for more than ``max_rows`` rows or an
            axis longer than ``max_length``.
    """
    infos = {i.name: i for i in model.chain.inputs}
    seen: dict[str, TensorIn] = {}
    for t in tensors:
        if t.name not in infos:
            raise RequestError(400, f"unknown input {show(t.name)}; {accepted(model)}")
        if t.name in seen:
            raise RequestError(400, f"input {t.name!r} is given twice; {accepted(model)}")
        seen[t.name] = t
    missing = [name for name in infos if name not in seen]
    if missing:
        raise RequestError(400, f"the request lacks input {missing[0]!r}; {accepted(model)}")
    for name, info in infos.items():  # sizes first: a sequence past max_length is not decoded
        model.check_sizes(info, seen[name].shape)
    arrays = {name: decode_tensor(seen[name], info, max_rows) for name, info in infos.items()}
    return model.check_named(arrays)


def decode_tensor(t: TensorIn, info: InputInfo, max_rows: int) -> np.ndarray:
    """One input tensor ``t`` as the array ``info`` declares (a writable copy in its dtype).

    Raises:
        RequestError: 400 for another datatype, rank or fixed axis, no sample, contents that
            disagree with the shape, or values of another kind or out of the datatype's range;
            413 for more than ``max_rows`` samples.
    """
    datatype, wire = DATATYPES[info.dtype]
    want = f"this model takes {signature(info)} (from its manifest)"
    if t.datatype != datatype:
        raise RequestError(400, f"input {info.name!r} has datatype {show(t.datatype)}; {want}")
    if len(t.shape) != len(info.shape):
        raise RequestError(400, f"input {info.name!r} has shape {list(t.shape)}, rank {len(t.shape)}; {want}")
    for axis, size in enumerate(info.shape):
        if size is not None and t.shape[axis] != size:
            raise RequestError(400, f"input {info.name!r} has shape {list(t.shape)}: axis {axis} must be {size}; "
                                    f"{want}")
    n = t.shape[0]
    if n == 0:
        raise RequestError(400, f"input {info.name!r} holds no sample; send at least one")
    if n > max_rows:
        raise RequestError(413, f"{n} samples in one request, this server takes at most {max_rows} "
                                "(its max batch); split the request")
    size = math.prod(t.shape)  # Python ints: a huge declared shape cannot wrap around
    if t.raw is not None:
        width = np.dtype(wire).itemsize
        if len(t.raw) != size * width:
            raise RequestError(400, f"input {info.name!r} has shape {list(t.shape)}, {size * width} bytes of "
                                    f"{datatype}, but {len(t.raw)} bytes were sent; fix the shape or the data")
        x = np.frombuffer(t.raw, wire)
        if datatype == "BOOL" and (np.frombuffer(t.raw, np.uint8) > 1).any():
            raise RequestError(400, f"input {info.name!r}: BOOL bytes must be 0 or 1")
    else:
        x = _values(t.data, info, datatype, size, list(t.shape))
    return x.astype(np.dtype(info.dtype)).reshape(t.shape)  # a native, writable copy


def _values(data: Any, info: InputInfo, datatype: str, size: int, shape: list[int]) -> np.ndarray:
    """JSON ``data`` or gRPC typed contents -> a flat array of ``info``'s dtype, checked."""
    items = list(data) if isinstance(data, np.ndarray) else flatten(data, info.name)
    if len(items) != size:
        raise RequestError(400, f"input {info.name!r} has shape {shape}, {size} values, but {len(items)} were "
                                "sent; fix the shape or the data")
    bad = next((v for v in items if not _fits(v, datatype)), _FITS)
    if bad is not _FITS:
        what = "true or false" if datatype == "BOOL" else "a whole number" if "INT" in datatype else "a number"
        raise RequestError(400, f"input {info.name!r}: every value must be {what} ({datatype}), got {kind(bad)}")
    dtype = np.dtype(info.dtype)
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if items and (min(items) < limits.min or max(items) > limits.max):
            raise RequestError(400, f"input {info.name!r}: a value is out of the range of {datatype}")
        return np.asarray(items, dtype)
    with np.errstate(over="ignore"):  # beyond the float type: inf, refused by the model's check
        return np.asarray(items, dtype)


_FITS = object()  # no value failed


def _fits(v: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(v, (bool, np.bool_))
    if isinstance(v, (bool, np.bool_)):
        return False
    if "INT" in datatype:
        return isinstance(v, (int, np.integer))
    return isinstance(v, (int, float, np.number))
