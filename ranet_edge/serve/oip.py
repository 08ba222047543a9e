"""The Open Inference Protocol v2 (KServe v2) as ranet-edge speaks it: requests in, answers out.

A codec, no server: the HTTP ingress calls :func:`parse_rest_infer` and
:func:`rest_infer_response`, the gRPC service (``grpc_service.py``) calls :func:`build_request`
and :func:`output_tensors`; both hand :attr:`InferRequest.x` to the engine. Ray-free. The
input tensor itself is decoded and checked in ``oip_tensors.py``.

An image bundle takes exactly one input per request:

- ``image``, ``BYTES [-1]``: one encoded JPEG or PNG per element (OpenVINO Model Server's
  convention). In the JSON form each element is a base64 string; in binary (the binary
  tensor data extension, gRPC ``raw_input_contents``) each element is a 4-byte
  little-endian length followed by the file's bytes; gRPC ``bytes_contents`` holds the files.
- ``input``, ``FP32 [-1, C, H, W]``: already preprocessed, C, H, W from the manifest.

A bundle of named inputs (text) takes one tensor per input its manifest declares
(``oip_named.py``: ``input_ids`` ``INT64 [-1, -1]`` ...).

It answers ``label`` ``INT64 [-1]``, ``exit`` ``INT64 [-1]``, ``confidence`` ``FP32 [-1]``
and, when asked for, ``logits`` ``FP32 [-1, classes]``. The request parameter
``operating_point`` picks a stored operating point; ``deadline_ms`` (a number) asks for the
deepest exit reached that many ms after arrival, and adds ``deadline_cut`` ``BOOL [-1]`` (the
images it stopped) to the default outputs; ``rule`` and ``patience`` pick the exit rule as
``ExitChain.predict`` takes them (``patience=2``: PABEE's rule). Every refusal is a
:class:`~ranet_edge.serve.api.RequestError` with a 4xx status and a one-line message.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ranet_edge import __version__
from ranet_edge.errors import RanetEdgeError
from ranet_edge.runtime.inputs import NamedBatch

from .api import RequestError
from .engine import ServedModel
from .oip_named import accepted_any, decode_inputs, input_metadata
from .oip_tensors import TensorIn, kind, show
from .oip_widths import logits_metadata
from .progress import DEADLINE_PARAMETER, deadline_cut, parse_deadline
from .rules import PATIENCE_PARAMETER, RULE_PARAMETER, parse_rule

SERVER_NAME = "ranet-edge"
DEFAULT_MODEL_NAME = "ranet-edge"
MODEL_VERSION = "1"
Admit = Callable[[Any, Any, Any, Any, int], None]  # admit(point, rule, patience, deadline_s, n): may raise 503
PLATFORM = "ranet_edge"  # a bundle of ONNX Runtime graphs with per-sample early exit
EXTENSIONS = ("binary_tensor_data", "parameters")
HEADER_LENGTH = "Inference-Header-Content-Length"

#: output name -> (datatype, numpy dtype as sent: little-endian)
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("INT64", "<i8"), "exit": ("INT64", "<i8"), "confidence": ("FP32", "<f4"), "logits": ("FP32", "<f4"),
    "deadline_cut": ("BOOL", "?")}
DEFAULT_OUTPUTS = ("label", "exit", "confidence")
#: request-level parameters read; any other is accepted and ignored (the parameters extension)
POINT_PARAMETER = "operating_point"
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass(frozen=True)
class RequestedOutput:
    """One output a request asks for, and how it goes back."""

    name: str  # one of OUTPUTS
    binary: bool  # REST: sent after the JSON header (binary tensor data extension); gRPC ignores it


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request, ready for ``engine.classify(x, point)``."""

    id: str | None  # echoed in the response when given
    x: np.ndarray | NamedBatch  # float32 (n, C, H, W), preprocessed; or a named-input bundle's arrays
    point: str | None  # parameters.operating_point; None: the server's default
    outputs: tuple[RequestedOutput, ...]  # in the order the response lists them
    deadline_s: float | None = None  # parameters.deadline_ms, in seconds; None: no deadline
    rule: str | None = None  # parameters.rule; None: the point's
    patience: int | None = None  # parameters.patience (rule "patience")


class Answer(Protocol):
    """What an engine answers for one request (``stage_engine.Answer``), as the codec reads it."""

    labels: np.ndarray  # int64 (n,)
    exits: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,)
    logits: np.ndarray  # float32 (n, classes)
    operating_point: str | None  # the stored point its images ran at, named in the response's parameters


# ---------------------------------------------------------------------------- metadata
def server_metadata() -> dict:
    """``GET /v2`` (and gRPC ServerMetadata)."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(model: ServedModel, name: str) -> dict:
    """``GET /v2/models/{name}`` (and gRPC ModelMetadata)."""
    return {
        "name": name, "versions": [MODEL_VERSION], "platform": PLATFORM, "inputs": input_metadata(model),
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "exit", "datatype": "INT64", "shape": [-1]},
                    {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                    logits_metadata(model),  # the widest exit's columns (oip_widths.py)
                    {"name": "deadline_cut", "datatype": "BOOL", "shape": [-1]}],
    }


def check_model(name: str, version: str | None, served: str) -> None:
    """Check that ``name`` (and ``version``, when given) is the model served.

    Raises:
        RequestError: 404, another model name or version.
    """
    if name != served:
        raise RequestError(404, f"unknown model {show(name)}; this server serves {served!r} "
                                f"(GET /v2/models/{served})")
    if version and version != MODEL_VERSION:
        raise RequestError(404, f"model {served!r} has no version {show(version)}; "
                                f"use version {MODEL_VERSION!r} or leave it out")


def parse_header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as a number (None when absent).

    Raises:
        RequestError: 400, the header is not a whole number.
    """
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise RequestError(400, f"{HEADER_LENGTH} must be the byte length of the JSON header, got {show(value)}")
    return int(text)


# ---------------------------------------------------------------------------- requests
def parse_rest_infer(body: bytes, header_length: int | None, model: ServedModel, max_images: int,
                     admit: Admit | None = None) -> InferRequest:
    """``POST /v2/models/{name}/infer``: a JSON body, or (``header_length`` given, from the
    ``Inference-Header-Content-Length`` header) a JSON header followed by binary tensor data.
    ``admit``: see :func:`build_request`.

    Raises:
        RequestError: 400 for a malformed request, 413 for too many images (see :func:`build_request`).
    """
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
        raise RequestError(400, f"the request id must be a string, got {kind(request_id)}")
    parameters = _object(doc.get("parameters"), "the request's parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, f"the request needs a non-empty list `inputs`: {accepted_any(model)}")
    tensors, offset = [], 0
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise RequestError(400, f"inputs[{i}] must be an object with name, datatype, shape and data")
        _only_keys(item, f"inputs[{i}]", ("name", "datatype", "shape", "parameters", "data"))
        name = item.get("name")
        if not isinstance(name, str):
            raise RequestError(400, f"inputs[{i}] needs a string `name`; {accepted_any(model)}")
        where = f"input {show(name)}"
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise RequestError(400, f"{where} needs a string `datatype`; {accepted_any(model)}")
        shape = _shape(item.get("shape"), where)
        params = _object(item.get("parameters"), f"{where}'s parameters")
        _no_shared_memory(params, where)  # before binary_data_size: shared memory sets one too
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise RequestError(400, f"{where} has no `data`; give it `data` or `parameters.binary_data_size` "
                                        "and the bytes after the JSON header")
            tensors.append(TensorIn(name, datatype, shape, data=item["data"], parameters=params))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RequestError(400, f"{where}: binary_data_size must be a byte count, got {show(size)}")
        if "data" in item:
            raise RequestError(400, f"{where} has both `data` and binary_data_size; send one of them")
        if header_length is None:
            raise RequestError(400, f"{where} has binary_data_size but the request has no {HEADER_LENGTH} "
                                    "header; send the JSON header's length in it")
        if offset + size > len(binary):
            raise RequestError(400, f"the inputs declare more binary data than follows the JSON header "
                                    f"({len(binary)} bytes); check each binary_data_size")
        tensors.append(TensorIn(name, datatype, shape, raw=binary[offset:offset + size], parameters=params))
        offset += size
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes follow the declared binary data; "
                                f"check {HEADER_LENGTH} and each binary_data_size")
    outputs = doc.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise RequestError(400, f"`outputs` must be a list of objects with a name, got {kind(outputs)}")
    wanted = []
    for i, item in enumerate(outputs or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RequestError(400, f"outputs[{i}] must be an object with a string `name`: one of {', '.join(OUTPUTS)}")
        _only_keys(item, f"outputs[{i}]", ("name", "parameters"))
        wanted.append((item["name"], _object(item.get("parameters"), f"output {show(item['name'])}'s parameters")))
    return build_request(request_id, tensors, parameters, wanted, model, max_images, admit)


def build_request(request_id: str | None, inputs: Sequence[TensorIn], parameters: Mapping[str, Any],
                  outputs: Sequence[tuple[str, Mapping[str, Any]]], model: ServedModel,
                  max_images: int, admit: Admit | None = None) -> InferRequest:
    """Check the decoded parts of a request (either transport) and preprocess its input.
    ``admit(point, rule, patience, deadline_s, n)`` may refuse it (503) before the input is decoded.

    Raises:
        RequestError: 400 for a malformed parameter, an unknown operating point, output or
            input, shared memory, or not exactly one input; 400/413 from decoding the input
            (:func:`~ranet_edge.serve.oip_tensors.decode_input`).
    """
    binary_default = _flag(parameters.get("binary_data_output", False), "parameter binary_data_output")
    point = parameters.get(POINT_PARAMETER)
    if point is not None:
        if not isinstance(point, str) or not point:
            raise RequestError(400, f"parameter {POINT_PARAMETER} must be the name of a stored operating point, "
                                    f"got {show(point)}")
        try:
            model.check_point(point)
        except RanetEdgeError as exc:
            raise RequestError(400, f"parameter {POINT_PARAMETER}: {exc}") from None
    deadline_s = parse_deadline(parameters.get(DEADLINE_PARAMETER))
    rule, patience = parse_rule(parameters.get(RULE_PARAMETER), parameters.get(PATIENCE_PARAMETER))
    model.decision_of(point, rule, patience)  # 400 for a rule or patience that does not go with the point
    requested, seen = [], set()
    for name, params in outputs:
        if name not in OUTPUTS:
            raise RequestError(400, f"unknown output {show(name)}; this model gives {', '.join(OUTPUTS)}")
        if name in seen:
            raise RequestError(400, f"output {name!r} is requested twice; list each output once")
        seen.add(name)
        _no_shared_memory(params, f"output {name!r}")
        binary = _flag(params.get("binary_data", binary_default), f"output {name!r}: parameter binary_data")
        requested.append(RequestedOutput(name, binary))
    if not requested:
        requested = [RequestedOutput(name, binary_default) for name in DEFAULT_OUTPUTS
                     + ("deadline_cut",) * (deadline_s is not None)]
    for t in inputs:
        _no_shared_memory(t.parameters or {}, f"input {show(t.name)}")
        if any(d < 0 for d in t.shape):
            raise RequestError(400, f"input {show(t.name)} has shape {list(t.shape)}; dimensions are whole numbers >= 0")
    if admit is not None:
        admit(point, rule, patience, deadline_s, inputs[0].shape[0] if len(inputs) == 1 and inputs[0].shape else 1)
    x = decode_inputs(inputs, model, max_images)
    return InferRequest(request_id or None, x, point, tuple(requested), deadline_s, rule, patience)


# ---------------------------------------------------------------------------- responses
def output_tensors(req: InferRequest, answer: Answer) -> list[tuple[RequestedOutput, str, np.ndarray]]:
    """(requested output, datatype, little-endian array) for each output, in the request's order."""
    values = {"label": answer.labels, "exit": answer.exits, "confidence": answer.confidences,
              "logits": answer.logits, "deadline_cut": deadline_cut(answer)}
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
    if getattr(answer, "operating_point", None) is not None:  # the stored point its images ran at
        doc["parameters"] = {POINT_PARAMETER: answer.operating_point}
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
        raise RequestError(400, f"the request must be a JSON object with `inputs`, got {kind(doc)}")
    return doc


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, f"{where} must be an object, got {kind(value)}")
    return value


def _only_keys(doc: dict, where: str, known: tuple[str, ...]) -> None:
    extra = sorted(k for k in doc if k not in known)
    if extra:
        raise RequestError(400, f"{where} has unknown field {show(extra[0])}; known fields: {', '.join(known)}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise RequestError(400, f"{where} needs `shape`, a list of whole numbers >= 0, got {show(value)}")
    return tuple(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(400, f"{where} must be true or false, got {show(value)}")
    return value


def _no_shared_memory(params: Mapping[str, Any], where: str) -> None:
    if any(k in params for k in _SHARED_MEMORY):
        raise RequestError(400, f"{where} uses shared memory, which this server does not offer; "
                                "send the data in the request")
