"""The small ONNX protobuf codec the executors need, so the runtime never imports ``onnx``.

Writing: the one-purpose models the device executors run beside a bundle's graphs
(:func:`gather_model`, :func:`gather_rows_model`, :func:`concat_rows_model`), written field by
field in protobuf wire format. Reading: :func:`scan_ops`, every operator type of a model,
which the capture check reads for what keeps a graph off CUDA graphs.

Field numbers (onnx.proto): ModelProto ir_version 1, graph 7, opset_import 8; GraphProto node 1,
name 2, initializer 5, input 11, output 12; NodeProto input 1, output 2, op_type 4, attribute 5;
AttributeProto name 1, i 3, g 6, graphs 11, type 20 (INT = 2); TensorProto data_type 2, name 8,
raw_data 9; ValueInfoProto name 1, type 2; TypeProto tensor_type 1 (elem_type 1, shape 2);
TensorShapeProto dim 1 (dim_param 2). A test checks the bytes against what ``onnx.helper`` builds.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

# ONNX TensorProto element types of the tensors the executors move.
FLOAT, FLOAT16, INT64, BOOL = 1, 10, 7, 9
ELEM_TYPES = {"float32": FLOAT, "float16": FLOAT16, "int64": INT64, "bool": BOOL}
ORT_TYPES = {"tensor(float)": FLOAT, "tensor(float16)": FLOAT16, "tensor(int64)": INT64, "tensor(bool)": BOOL}
IR_VERSION, OPSET = 8, 13  # readable by every onnxruntime the project supports (>= 1.17)


# ---------------------------------------------------------------------------- writing
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, elem_type: int, dim_param: str | None) -> bytes:
    """ValueInfoProto: name, tensor type, and a 1-D shape with a symbolic dimension or no shape."""
    shape = b"" if dim_param is None else _bytes(2, _bytes(1, _bytes(2, dim_param)))
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, elem_type) + shape))


def _node(inputs: list[str], outputs: list[str], op: str, attributes: bytes = b"") -> bytes:
    return (b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
            + _bytes(4, op) + attributes)


def _axis0() -> bytes:
    return _bytes(5, _bytes(1, "axis") + _int(3, 0) + _int(20, 2))


def _model(nodes: list[bytes], name: str, inputs: list[bytes], outputs: list[bytes]) -> bytes:
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs)
    return _int(1, IR_VERSION) + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, OPSET))


def gather_model(elem_type: int) -> bytes:
    """The serialised ONNX model ``y = Gather(x, idx, axis=0)`` for tensors of ``elem_type``
    (what ``ranet-edge doctor`` runs to prove a provider can hold tensors on its device)."""
    return _model([_node(["x", "idx"], ["y"], "Gather", _axis0())], "gather_rows",
                  [_value_info("x", elem_type, None), _value_info("idx", INT64, "n")],
                  [_value_info("y", elem_type, None)])


def gather_rows_model(elem_types: list[int]) -> bytes:
    """``y_i = Gather(x_i, idx, axis=0)`` for ``len(elem_types)`` tensors at once: how the device
    executors hand the rows that go on to the next graph, one session run per graph."""
    nodes = [_node([f"x{i}", "idx"], [f"y{i}"], "Gather", _axis0()) for i in range(len(elem_types))]
    inputs = [_value_info(f"x{i}", t, None) for i, t in enumerate(elem_types)] + [_value_info("idx", INT64, "n")]
    outputs = [_value_info(f"y{i}", t, None) for i, t in enumerate(elem_types)]
    return _model(nodes, "gather_rows", inputs, outputs)


def concat_rows_model(elem_type: int, parts: int) -> bytes:
    """``y = Gather(Concat(x_0, ..., x_{parts-1}, axis=0), idx, axis=0)``: rows of several
    device tensors joined (the serving engine's queues merge rows of several requests), then
    the real ones picked and padded to a bucket."""
    names = [f"x{i}" for i in range(parts)]
    nodes = [_node(names, ["joined"], "Concat", _axis0()), _node(["joined", "idx"], ["y"], "Gather", _axis0())]
    inputs = [_value_info(n, elem_type, None) for n in names] + [_value_info("idx", INT64, "n")]
    return _model(nodes, "concat_rows", inputs, [_value_info("y", elem_type, None)])


# ---------------------------------------------------------------------------- reading
def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or the varint) of a protobuf message."""
    i, end = start, len(buf) if end is None else end
    while i < end:
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
            yield num, wire, value, value
        elif wire == 1:
            yield num, wire, i, i + 8
            i += 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            yield num, wire, i, i + n
            i += n
        elif wire == 5:
            yield num, wire, i, i + 4
            i += 4
        else:
            raise ValueError(f"protobuf wire type {wire} at byte {i}: not an ONNX model")


def _graph_ops(buf: bytes, start: int, end: int, out: list[str]) -> None:
    for num, wire, a, b in _fields(buf, start, end):
        if num == 1 and wire == 2:  # GraphProto.node
            for fn, fw, x, y in _fields(buf, a, b):
                if fn == 4 and fw == 2:  # NodeProto.op_type
                    out.append(buf[x:y].decode())
                elif fn == 5 and fw == 2:  # NodeProto.attribute: subgraphs g (6) and graphs (11)
                    for an, aw, p, q in _fields(buf, x, y):
                        if an in (6, 11) and aw == 2:
                            _graph_ops(buf, p, q, out)


def scan_ops(model: bytes | str | os.PathLike) -> list[str]:
    """Every node's operator type in an ONNX model (bytes or a path), subgraphs included.

    Raises:
        ValueError: the bytes are not a readable ONNX model.
    """
    if isinstance(model, bytes):
        buf = model
    else:
        with open(model, "rb") as f:
            buf = f.read()
    out: list[str] = []
    try:
        for num, wire, a, b in _fields(buf):
            if num == 7 and wire == 2:  # ModelProto.graph
                _graph_ops(buf, a, b, out)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a readable ONNX model ({exc})") from None
    return out
