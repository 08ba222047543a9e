"""One input tensor of an Open Inference Protocol request -> the float32 NCHW batch the engine takes.

``image`` (BYTES: encoded files, as base64 strings in JSON, length-prefixed in binary, or the
files themselves in gRPC ``bytes_contents``) is decoded and preprocessed as the bundle's
manifest says; ``input`` (FP32, already preprocessed) is checked against the manifest's
shape. Every refusal is a RequestError with a one-line message. Used by ``oip.py``.
"""
from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranet_edge.runtime.preprocess import fit_image

from .api import RequestError, decode_image
from .engine import ServedModel

IMAGE, INPUT = "image", "input"


@dataclass(frozen=True)
class TensorIn:
    """One input tensor as either transport carries it, before it is checked."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None  # binary contents (REST binary extension, gRPC raw_input_contents)
    data: Any = None  # otherwise: the JSON ``data`` (nested lists) or gRPC typed contents
    parameters: Mapping[str, Any] | None = None  # the tensor's own parameters


def input_shape(model: ServedModel) -> tuple[int, int, int]:
    """(C, H, W) of the ``input`` tensor, from the bundle's manifest."""
    c, h, w = model.chain.input_shape
    return int(c), int(h), int(w)


def decode_input(t: TensorIn, model: ServedModel, max_images: int) -> np.ndarray:
    """``t`` (named IMAGE or INPUT) -> float32 (N, C, H, W), preprocessed.

    Raises:
        RequestError: 400 for a wrong datatype or shape, no image, data that is malformed or
            disagrees with the shape, an image that does not decode or non-finite values;
            413 for more than ``max_images`` images or one over ``api.MAX_IMAGE_PIXELS`` pixels.
    """
    return _images(t, model, max_images) if t.name == IMAGE else _array(t, model, max_images)


def accepted(model: ServedModel) -> str:
    """The inputs this model takes, as the end of a refusal's message."""
    c, h, w = input_shape(model)
    return (f"send {IMAGE!r} (BYTES [-1], one JPEG/PNG file per element) or {INPUT!r} "
            f"(FP32 [-1, {c}, {h}, {w}], preprocessed)")


def _count(n: int, max_images: int) -> None:
    if n == 0:
        raise RequestError(400, "the request holds no image; send at least one")
    if n > max_images:
        raise RequestError(413, f"{n} images in one request, this server takes at most {max_images} "
                                "(its max batch); split the request")


def _images(t: TensorIn, model: ServedModel, max_images: int) -> np.ndarray:
    """``image``: encoded files -> float32 NCHW, preprocessed as the manifest says."""
    if t.datatype != "BYTES":
        raise RequestError(400, f"input {IMAGE!r} has datatype {show(t.datatype)}; send BYTES (one encoded "
                                f"JPEG/PNG per element), or preprocessed FP32 as {INPUT!r}")
    if len(t.shape) != 1:
        raise RequestError(400, f"input {IMAGE!r} has shape {list(t.shape)}; send shape [N], one file per element")
    n = t.shape[0]
    _count(n, max_images)
    if t.raw is not None:
        files = _unpack_bytes(t.raw, n)
    else:
        files = _byte_elements(t.data, n)
    spec = model.chain.preprocess_spec
    fitted = []
    for i, data in enumerate(files):
        image = decode_image(data) if data else None
        if image is None:
            raise RequestError(400, f"image element {i} cannot be decoded: it is corrupt or not a JPEG/PNG file")
        fitted.append(fit_image(image, spec))
    return model.chain.preprocess(np.stack(fitted))


def _unpack_bytes(raw: bytes, n: int) -> list[bytes]:
    """BYTES in binary: each element a 4-byte little-endian length, then that many bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if len(out) == n:
            raise RequestError(400, f"input {IMAGE!r} holds more than the {n} elements its shape says; "
                                    "fix the shape or the data")
        if pos + 4 > len(raw):
            raise RequestError(400, f"input {IMAGE!r}: element {len(out)} is cut short; each BYTES element is "
                                    "a 4-byte little-endian length followed by that many bytes")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise RequestError(400, f"input {IMAGE!r}: element {len(out)} declares {length} bytes, "
                                    f"{len(raw) - pos} follow; each BYTES element is a 4-byte little-endian "
                                    "length followed by that many bytes")
        out.append(raw[pos:pos + length])
        pos += length
    if len(out) != n:
        raise RequestError(400, f"input {IMAGE!r} has shape [{n}] but holds {len(out)} elements; "
                                "fix the shape or the data")
    return out


def _byte_elements(data: Any, n: int) -> list[bytes]:
    """BYTES in JSON (base64 strings) or in gRPC ``bytes_contents`` (the files themselves)."""
    items = flatten(data, IMAGE)
    if len(items) != n:
        raise RequestError(400, f"input {IMAGE!r} has shape [{n}] but holds {len(items)} elements; "
                                "fix the shape or the data")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            try:
                out.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise RequestError(400, f"image element {i} is not valid base64; in JSON each element is "
                                        "a base64-encoded JPEG/PNG file") from None
        else:
            raise RequestError(400, f"image element {i} is {kind(item)}; in JSON each element is "
                                    "a base64-encoded JPEG/PNG file")
    return out


def _array(t: TensorIn, model: ServedModel, max_images: int) -> np.ndarray:
    """``input``: float32 (N, C, H, W) as sent, checked."""
    c, h, w = input_shape(model)
    if t.datatype != "FP32":
        raise RequestError(400, f"input {INPUT!r} has datatype {show(t.datatype)}; send FP32 "
                                f"[N, {c}, {h}, {w}] (float32), or encoded images as BYTES {IMAGE!r}")
    if len(t.shape) != 4 or tuple(t.shape[1:]) != (c, h, w):
        raise RequestError(400, f"input {INPUT!r} has shape {list(t.shape)}; this model takes "
                                f"[N, {c}, {h}, {w}] (from its manifest)")
    n = t.shape[0]
    _count(n, max_images)
    size = n * c * h * w
    if t.raw is not None:
        if len(t.raw) != size * 4:
            raise RequestError(400, f"input {INPUT!r} has shape {list(t.shape)}, {size * 4} bytes of FP32, "
                                    f"but {len(t.raw)} bytes were sent; fix the shape or the data")
        x = np.frombuffer(t.raw, "<f4").astype(np.float32)  # a native, writable copy
    else:
        x = _numbers(t.data, size, t.shape)
    x = x.reshape(n, c, h, w)
    if not np.isfinite(x).all():
        raise RequestError(400, f"input {INPUT!r} contains NaN or infinite values; check the preprocessing")
    return x


def _numbers(data: Any, size: int, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(data, np.ndarray):  # gRPC fp32_contents, already float32
        x = data
    else:
        items = flatten(data, INPUT)
        if len(items) != size:
            raise RequestError(400, f"input {INPUT!r} has shape {list(shape)}, {size} values, but {len(items)} "
                                    "were sent; fix the shape or the data")
        try:
            arr = np.asarray(items)
        except (ValueError, TypeError, OverflowError):
            arr = np.asarray([], dtype=object)
        if arr.dtype.kind not in "iuf" or len(arr) != size:
            raise RequestError(400, f"input {INPUT!r}: every value of `data` must be a number")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
            x = arr.astype(np.float32)
    if x.size != size:
        raise RequestError(400, f"input {INPUT!r} has shape {list(shape)}, {size} values, but {x.size} "
                                "were sent; fix the shape or the data")
    return x


def flatten(data: Any, name: str) -> list:
    """JSON tensor data, flat or nested row-major, as one flat list."""
    if isinstance(data, np.ndarray):
        return list(data.ravel())
    if not isinstance(data, (list, tuple)):
        raise RequestError(400, f"input {name!r}: `data` must be a list, got {kind(data)}")
    if not any(isinstance(v, (list, tuple)) for v in data):
        return list(data)
    out: list = []
    stack = [iter(data)]
    while stack:  # iterative: the JSON parser already bounded the depth
        for v in stack[-1]:
            if isinstance(v, (list, tuple)):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def kind(value: Any) -> str:
    """What a JSON value is, in words ("a list", "null"), for messages that must not echo it."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number", bytes: "bytes"}.get(type(value), type(value).__name__)


def show(value: Any, limit: int = 60) -> str:
    """A value quoted for a one-line message, cut to ``limit`` characters."""
    try:
        text = " ".join(repr(value).split())
    except RecursionError:  # a deeply nested JSON value
        text = kind(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
