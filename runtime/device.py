"""Device-resident chaining for GPU providers: cached feature maps never leave the device.

With IOBinding every cached tensor a graph produces is bound to device memory as an
OrtValue and handed to the next graph as is; only the logits come to the host. The rows of
the samples that go on are gathered on the device by a one-node ONNX ``Gather`` session fed
with the kept indices. The CPU path of :class:`ExitChain` does not use any of this.
"""
from __future__ import annotations

import numpy as np

from ._ort import ort  # onnxruntime, through the build check
from .graphs import GraphInfo

# ONNX TensorProto element types of the cached tensors the router gathers.
FLOAT, FLOAT16, INT64, BOOL = 1, 10, 7, 9
ELEM_TYPES = {"float32": FLOAT, "float16": FLOAT16, "int64": INT64, "bool": BOOL}
IR_VERSION, OPSET = 8, 13  # readable by every onnxruntime the project supports (>= 1.17)


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


def gather_model(elem_type: int) -> bytes:
    """The serialised ONNX model ``y = Gather(x, idx, axis=0)`` for tensors of ``elem_type``.

    Written field by field in protobuf wire format, so the runtime needs no ``onnx`` package;
    a test checks the bytes against what ``onnx.helper`` builds (ModelProto: ir_version 1,
    graph 7, opset_import 8; GraphProto: node 1, name 2, input 11, output 12; NodeProto: input
    1, output 2, op_type 4, attribute 5; AttributeProto: name 1, i 3, type 20 = INT).
    """
    axis = _bytes(1, "axis") + _int(3, 0) + _int(20, 2)
    node = _bytes(1, "x") + _bytes(1, "idx") + _bytes(2, "y") + _bytes(4, "Gather") + _bytes(5, axis)
    graph = (_bytes(1, node) + _bytes(2, "gather_rows") + _bytes(11, _value_info("x", elem_type, None))
             + _bytes(11, _value_info("idx", INT64, "n")) + _bytes(12, _value_info("y", elem_type, None)))
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(7, graph) + _bytes(8, opset)


def _scalar_int64(name: str, value: int) -> bytes:
    """TensorProto of an int64 scalar: data_type 2, name 8, raw_data 9 (little-endian)."""
    return _int(2, INT64) + _bytes(8, name) + _bytes(9, int(value).to_bytes(8, "little", signed=True))


def gather_plan_model(elem_types: list[int], head: int = 3) -> bytes:
    """The serialised ONNX model a fixed-address plan hands rows on with, for ``len(elem_types)``
    tensors: ``idx = Gather(summary, offsets)``, ``y_i = Gather(x_i, idx)`` and
    ``alive = offsets < summary[0] + head``.

    ``summary`` is the decision graph's output (``[go_on, left, near, order...]``), ``offsets``
    a fixed buffer holding ``head .. head + b' - 1`` for the next bucket ``b'``: the first b'
    rows of the order (the rows that go on, then padding rows that hold ordinary numbers) land
    in the next bucket's fixed buffers, and ``alive`` marks the real ones. No shape depends on
    the data. Field numbers as in :func:`gather_model`, plus GraphProto.initializer 5.
    """
    nodes = [_bytes(1, "summary") + _bytes(1, "offsets") + _bytes(2, "idx") + _bytes(4, "Gather"),
             _bytes(1, "summary") + _bytes(1, "zero") + _bytes(2, "go") + _bytes(4, "Gather"),
             _bytes(1, "go") + _bytes(1, "head") + _bytes(2, "go_head") + _bytes(4, "Add"),
             _bytes(1, "offsets") + _bytes(1, "go_head") + _bytes(2, "alive") + _bytes(4, "Less")]
    nodes += [_bytes(1, f"x{i}") + _bytes(1, "idx") + _bytes(2, f"y{i}") + _bytes(4, "Gather")
              for i in range(len(elem_types))]
    graph = b"".join(_bytes(1, nd) for nd in nodes) + _bytes(2, "gather_plan")
    graph += _bytes(5, _scalar_int64("zero", 0)) + _bytes(5, _scalar_int64("head", head))
    inputs = [_value_info(f"x{i}", t, None) for i, t in enumerate(elem_types)]
    inputs += [_value_info("summary", INT64, "s"), _value_info("offsets", INT64, "b")]
    outputs = [_value_info(f"y{i}", t, None) for i, t in enumerate(elem_types)] + [_value_info("alive", BOOL, "b")]
    graph += b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs)
    opset = _bytes(1, "") + _int(2, OPSET)
    return _int(1, IR_VERSION) + _bytes(7, graph) + _bytes(8, opset)


class DeviceRouter:
    """Runs graphs with IOBinding on ``device`` and gathers rows there."""

    def __init__(self, device: str, providers: list, options: ort.SessionOptions, device_id: int = 0):
        self.device, self.device_id = device, device_id
        self._gather = {
            np.dtype(np.float32): ort.InferenceSession(gather_model(FLOAT), options, providers=providers),
            np.dtype(np.float16): ort.InferenceSession(gather_model(FLOAT16), options, providers=providers),
        }

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, graph: GraphInfo, feeds: dict[str, ort.OrtValue]) -> tuple[list[np.ndarray], dict[str, ort.OrtValue]]:
        """(host logits in exit order, device cache tensors by name)."""
        io = graph.session.io_binding()
        for name in graph.inputs:
            io.bind_ortvalue_input(name, feeds[name])
        for name in graph.logit_names:
            io.bind_output(name, "cpu")
        for name in graph.cache_names:
            io.bind_output(name, self.device, self.device_id)
        graph.session.run_with_iobinding(io)
        values = dict(zip(graph.output_names, io.get_outputs()))
        return [values[n].numpy() for n in graph.logit_names], {n: values[n] for n in graph.cache_names}

    def gather(self, value: ort.OrtValue, keep: ort.OrtValue) -> ort.OrtValue:
        sess = self._gather[np.dtype(np.float32 if value.data_type() == "tensor(float)" else np.float16)]
        io = sess.io_binding()
        io.bind_ortvalue_input("x", value)
        io.bind_ortvalue_input("idx", keep)
        io.bind_output("y", self.device, self.device_id)
        sess.run_with_iobinding(io)
        return io.get_outputs()[0]
