"""Device-resident chaining for GPU providers: cached feature maps never leave the device.

With IOBinding every cached tensor a graph produces is bound to device memory as an
OrtValue and handed to the next graph as is; only the logits come to the host. The rows of
the samples that go on are gathered on the device by a one-node ONNX ``Gather`` session fed
with the kept indices. The CPU path of :class:`ExitChain` does not use any of this.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def _gather_model(elem_type: int) -> bytes:
    x = helper.make_tensor_value_info("x", elem_type, None)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", elem_type, None)
    graph = helper.make_graph([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)], "gather_rows", [x, idx], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


class DeviceRouter:
    """Runs graphs with IOBinding on ``device`` and gathers rows there."""

    def __init__(self, device: str, providers: list, options: ort.SessionOptions, device_id: int = 0):
        self.device, self.device_id = device, device_id
        self._gather = {
            np.dtype(np.float32): ort.InferenceSession(_gather_model(TensorProto.FLOAT), options, providers=providers),
            np.dtype(np.float16): ort.InferenceSession(_gather_model(TensorProto.FLOAT16), options, providers=providers),
        }

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def run(self, graph, feeds: dict[str, ort.OrtValue]) -> tuple[list[np.ndarray], dict[str, ort.OrtValue]]:
        """(host logits in exit order, device cache tensors by name)."""
        io = graph.session.io_binding()
        for name in graph.inputs:
            io.bind_ortvalue_input(name, feeds[name])
        logit_names = [graph.output_names[p] for p in graph.logit_pos]
        for name in logit_names:
            io.bind_output(name, "cpu")
        for _, name in graph.cache_pos:
            io.bind_output(name, self.device, self.device_id)
        graph.session.run_with_iobinding(io)
        values = dict(zip(graph.output_names, io.get_outputs()))
        return [values[n].numpy() for n in logit_names], {n: values[n] for _, n in graph.cache_pos}

    def gather(self, value: ort.OrtValue, keep: ort.OrtValue) -> ort.OrtValue:
        sess = self._gather[np.dtype(np.float32 if value.data_type() == "tensor(float)" else np.float16)]
        io = sess.io_binding()
        io.bind_ortvalue_input("x", value)
        io.bind_ortvalue_input("idx", keep)
        io.bind_output("y", self.device, self.device_id)
        sess.run_with_iobinding(io)
        return io.get_outputs()[0]
