"""The Open Inference Protocol v2 (KServe v2) as ranet-edge speaks it: requests in, answers out.

A codec, no server: the HTTP ingress calls :func:`parse_rest_infer` and
:func:`rest_infer_response`, the gRPC service (``grpc_service.py``) calls :func:`build_request`
and :func:`output_tensors`; both hand :attr:`InferRequest.x` to the engine. Ray-free.

The model takes exactly one input per request:

- ``image``, ``BYTES [-1]``: one encoded JPEG or PNG per element (OpenVINO Model Server's
  convention). In the JSON form each element is a base64 string; in binary (the binary
  tensor data extension, gRPC ``raw_input_contents``) each element is a 4-byte
  little-endian length followed by the file's bytes; gRPC ``bytes_contents`` holds the files.
- ``input``, ``FP32 [-1, C, H, W]``: already preprocessed, C, H, W from the manifest.

It answers ``label`` ``INT64 [-1]``, ``exit`` ``INT64 [-1]``, ``confidence`` ``FP32 [-1]``
and, when asked for, ``logits`` ``FP32 [-1, classes]``. The request parameter
``operating_point`` picks a stored operating point. Every refusal is a
:class:`~ranet_edge.serve.api.RequestError` with a 4xx status and a one-line message.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ranet_edge import __version__
from ranet_edge.errors import RanetEdgeError
from ranet_edge.runtime.preprocess import fit_image

from .api import RequestError, decode_image
from .engine import ServedModel

SERVER_NAME = "ranet-edge"
DEFAULT_MODEL_NAME = "ranet-edge"
MODEL_VERSION = "1"
PLATFORM = "ranet_edge"  # a bundle of ONNX Runtime graphs with per-sample early exit
EXTENSIONS = ("binary_tensor_data", "parameters")
HEADER_LENGTH = "Inference-Header-Content-Length"

IMAGE, INPUT = "image", "input"
#: output name -> (datatype, numpy dtype as sent: little-endian)
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("INT64", "<i8"), "exit": ("INT64", "<i8"), "confidence": ("FP32", "<f4"), "logits": ("FP32", "<f4")}
DEFAULT_OUTPUTS = ("label", "exit", "confidence")
#: request-level parameters read; any other is accepted and ignored (the parameters extension)
POINT_PARAMETER = "operating_point"
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    name: str  # one of OUTPUTS
    binary: bool  # REST: sent after the JSON header (binary tensor data extension); gRPC ignores it


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request, ready for ``engine.classify(x, point)``."""

    id: str | None  # echoed in the response when given
    x: np.ndarray  # float32 (n, C, H, W), preprocessed
    point: str | None  # parameters.operating_point; None: the server's default
    outputs: tuple[RequestedOutput, ...]  # in the order the response lists them


@dataclass(frozen=True)
class TensorIn:
    """One input tensor as either transport carries it, before it is checked."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | None = None  # binary contents (REST binary extension, gRPC raw_input_contents)
    data: Any = None  # otherwise: the JSON ``data`` (nested lists) or gRPC typed contents


class Answer(Protocol):
    """What an engine answers for one request (``stage_engine.Answer``), as the codec reads it."""

    labels: np.ndarray  # int64 (n,)
    exits: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,)
    logits: np.ndarray  # float32 (n, classes)


# ---------------------------------------------------------------------------- metadata
def server_metadata() -> dict:
    """``GET /v2`` (and gRPC ServerMetadata)."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def input_shape(model: ServedModel) -> tuple[int, int, int]:
    """(C, H, W) of the ``input`` tensor, from the bundle's manifest."""
    c, h, w = model.chain.input_shape
    return int(c), int(h), int(w)


def model_metadata(model: ServedModel, name: str) -> dict:
    """``GET /v2/models/{name}`` (and gRPC ModelMetadata)."""
    c, h, w = input_shape(model)
    return {
        "name": name, "versions": [MODEL_VERSION], "platform": PLATFORM,
        "inputs": [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
                   {"name": INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "exit", "datatype": "INT64", "shape": [-1]},
                    {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                    {"name": "logits", "datatype": "FP32", "shape": [-1, model.num_classes]}],
    }


def check_model(name: str, version: str | None, served: str) -> None:
    """RequestError 404 unless ``name`` (and ``version``, when given) is the model served."""
    if name != served:
        raise RequestError(404, f"unknown model {_show(name)}; this server serves {served!r} "
                                f"(GET /v2/models/{served})")
    if version and version != MODEL_VERSION:
        raise RequestError(404, f"model {served!r} has no version {_show(version)}; "
                                f"use version {MODEL_VERSION!r} or leave it out")


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a number (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise RequestError(400, f"{HEADER_LENGTH} must be the byte length of the JSON header, got {_show(value)}")
    return int(text)


# ---------------------------------------------------------------------------- requests
def parse_rest_infer(body: bytes, header_length: int | None, model: ServedModel, max_images: int) -> InferRequest:
    """``POST /v2/models/{name}/infer``: a JSON body, or (``header_length`` given, from the
    ``Inference-Header-Content-Length`` header) a JSON header followed by binary tensor data."""
    if header_length is None:
        header, binary = body, b""
    else:
        if isinstance(header_length, bool) or not isinstance(header_length, int) or header_length < 0:
            raise RequestError(400, f"{HEADER_LENGTH} must be a byte count, got {header_length!r}")
        if header_length > len(body):
            raise RequestError(400, f"{HEADER_LENGTH} is {header_length} but the body has only {len(body)} "
                                    "bytes; send the JSON header's length in bytes")
        header, binary = body[:header_length], body[header_length:]
    doc = _load_json(header)
    _only_keys(doc, "the request", ("id", "parameters", "inputs", "outputs"))
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, f"the request id must be a string, got {_kind(request_id)}")
    parameters = _object(doc.get("parameters"), "the request's parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "the request needs a non-empty list `inputs`: one tensor named "
                                f"{IMAGE!r} (BYTES) or {INPUT!r} (FP32)")
    tensors, offset = [], 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, datatype, shape and data")
        _only_keys(item, f"inputs[{i}]", ("name", "datatype", "shape", "parameters", "data"))
        name = item.get("name")
        if not isinstance(name, str):
            raise RequestError(400, f"inputs[{i}] needs a string `name`: {IMAGE!r} or {INPUT!r}")
        where = f"input {_show(name)}"
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise RequestError(400, f"{where} needs a string `datatype` (BYTES for {IMAGE!r}, FP32 for {INPUT!r})")
        shape = _shape(item.get("shape"), where)
        params = _object(item.get("parameters"), f"{where}'s parameters")
        _no_shared_memory(params, where)
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise RequestError(400, f"{where} has no `data`; give it `data` or `parameters.binary_data_size` "
                                        "and the bytes after the JSON header")
            tensors.append(TensorIn(name, datatype, shape, data=item["data"]))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RequestError(400, f"{where}: binary_data_size must be a byte count, got {_show(size)}")
        if "data" in item:
            raise RequestError(400, f"{where} has both `data` and binary_data_size; send one of them")
        if header_length is None:
            raise RequestError(400, f"{where} has binary_data_size but the request has no {HEADER_LENGTH} "
                                    "header; send the JSON header's length in it")
        if offset + size > len(binary):
            raise RequestError(400, f"the inputs declare more binary data than follows the JSON header "
                                    f"({len(binary)} bytes); check each binary_data_size")
        tensors.append(TensorIn(name, datatype, shape, raw=binary[offset:offset + size]))
        offset += size
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes follow the declared binary data; "
                                f"check {HEADER_LENGTH} and each binary_data_size")
    outputs = doc.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise RequestError(400, f"`outputs` must be a list of objects with a name, got {_kind(outputs)}")
    wanted = []
    for i, item in enumerate(outputs or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, f"outputs[{i}] must be an object with a string `name`: one of {', '.join(OUTPUTS)}")
        _only_keys(item, f"outputs[{i}]", ("name", "parameters"))
        wanted.append((item["name"], _object(item.get("parameters"), f"output {_show(item['name'])}'s parameters")))
    return build_request(request_id, tensors, parameters, wanted, model, max_images)


def build_request(request_id: str | None, inputs: Sequence[TensorIn], parameters: Mapping[str, Any],
                  outputs: Sequence[tuple[str, Mapping[str, Any]]], model: ServedModel,
                  max_images: int) -> InferRequest:
    """Check the decoded parts of a request (either transport) and preprocess its input."""
    binary_default = _flag(parameters.get("binary_data_output", False), "parameter binary_data_output")
    point = parameters.get(POINT_PARAMETER)
    if point is not None:
        if not isinstance(point, str) or not point:
            raise RequestError(400, f"parameter {POINT_PARAMETER} must be the name of a stored operating point, "
                                    f"got {_show(point)}")
        try:
            model.check_point(point)
        except RanetEdgeError as exc:
            raise RequestError(400, f"parameter {POINT_PARAMETER}: {exc}") from None
    requested, seen = [], set()
    for name, params in outputs:
        if name not in OUTPUTS:
            raise RequestError(400, f"unknown output {_show(name)}; this model gives {', '.join(OUTPUTS)}")
        if name in seen:
            raise RequestError(400, f"output {name!r} is requested twice; list each output once")
        seen.add(name)
        _no_shared_memory(params, f"output {name!r}")
        binary = _flag(params.get("binary_data", binary_default), f"output {name!r}: parameter binary_data")
        requested.append(RequestedOutput(name, binary))
    if not requested:
        requested = [RequestedOutput(name, binary_default) for name in DEFAULT_OUTPUTS]
    names = [t.name for t in inputs]
    for name in names:
        if name not in (IMAGE, INPUT):
            raise RequestError(400, f"unknown input {_show(name)}; {_accepted(model)}")
    if len(inputs) != 1:
        what = "both" if set(names) == {IMAGE, INPUT} else f"{len(inputs)} inputs"
        raise RequestError(400, f"the request gives {what}; {_accepted(model)}, exactly one")
    tensor = inputs[0]
    x = _images(tensor, model, max_images) if tensor.name == IMAGE else _array(tensor, model, max_images)
    return InferRequest(request_id or None, x, point, tuple(requested))


def _accepted(model: ServedModel) -> str:
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
        raise RequestError(400, f"input {IMAGE!r} has datatype {_show(t.datatype)}; send BYTES (one encoded "
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
    items = _flatten(data, IMAGE)
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
            raise RequestError(400, f"image element {i} is {_kind(item)}; in JSON each element is "
                                    "a base64-encoded JPEG/PNG file")
    return out


def _array(t: TensorIn, model: ServedModel, max_images: int) -> np.ndarray:
    """``input``: float32 (N, C, H, W) as sent, checked."""
    c, h, w = input_shape(model)
    if t.datatype != "FP32":
        raise RequestError(400, f"input {INPUT!r} has datatype {_show(t.datatype)}; send FP32 "
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
        items = _flatten(data, INPUT)
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


def _flatten(data: Any, name: str) -> list:
    """JSON tensor data, flat or nested row-major, as one flat list."""
    if isinstance(data, np.ndarray):
        return list(data.ravel())
    if not isinstance(data, (list, tuple)):
        raise RequestError(400, f"input {name!r}: `data` must be a list, got {_kind(data)}")
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


# ---------------------------------------------------------------------------- responses
def output_tensors(req: InferRequest, answer: Answer) -> list[tuple[RequestedOutput, str, np.ndarray]]:
    """(requested output, datatype, little-endian array) for each output, in the request's order."""
    values = {"label": answer.labels, "exit": answer.exits, "confidence": answer.confidences,
              "logits": answer.logits}
    out = []
    for wanted in req.outputs:
        datatype, dtype = OUTPUTS[wanted.name]
        out.append((wanted, datatype, np.ascontiguousarray(values[wanted.name], dtype=dtype)))
    return out


def rest_infer_response(req: InferRequest, answer: Answer, model_name: str,
                        model_version: str = MODEL_VERSION) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or with binary outputs a JSON header followed
    by the outputs' bytes (``Inference-Header-Content-Length`` says where the header ends)."""
    outputs, chunks = [], []
    for wanted, datatype, arr in output_tensors(req, answer):
        entry: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": list(arr.shape)}
        if wanted.binary:
            data = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = arr.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if req.id is not None:
        doc["id"] = req.id
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {"Content-Type": "application/octet-stream",
                                          HEADER_LENGTH: str(len(header))}


# ---------------------------------------------------------------------------- helpers
def _load_json(text: bytes) -> dict:
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"the request is not valid JSON ({exc}); send a KServe v2 inference request "
                                f"(with binary data, {HEADER_LENGTH} gives the JSON's length)") from None
    except RecursionError:
        raise RequestError(400, "the request's JSON is nested too deeply; send a KServe v2 inference request") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the request must be a JSON object with `inputs`, got {_kind(doc)}")
    return doc


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"{where} must be an object, got {_kind(value)}")
    return value


def _only_keys(doc: dict, where: str, known: tuple[str, ...]) -> None:
    extra = sorted(k for k in doc if k not in known)
    if extra:
        raise RequestError(400, f"{where} has unknown field {_show(extra[0])}; known fields: {', '.join(known)}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise RequestError(400, f"{where} needs `shape`, a list of whole numbers >= 0, got {_show(value)}")
    return tuple(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(400, f"{where} must be true or false, got {_show(value)}")
    return value


def _no_shared_memory(params: Mapping[str, Any], where: str) -> None:
    if any(k in params for k in _SHARED_MEMORY):
        raise RequestError(400, f"{where} uses shared memory, which this server does not offer; "
                                "send the data in the request")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number", bytes: "bytes"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """A value quoted for a one-line message, cut to ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
