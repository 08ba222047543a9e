"""The device executor: cached feature maps stay in device memory between graphs.

With IOBinding every tensor a graph hands on is bound to device memory as an OrtValue and
given to the next graph as is; only the logits come to the host. The rows of the samples that
go on are gathered on the device by a small ONNX session (``Gather`` of every handed-on
tensor at once, :func:`~._onnx_proto.gather_rows_model`) fed with the kept indices; rows of
several calls (the serving engine's queues) are joined the same way
(:func:`~._onnx_proto.concat_rows_model`). Sub-batches are padded to the batch buckets, so a
graph sees only the shapes warm-up prepared. With the CPU provider the same code runs on host
memory (``device_io=True``), which is how the tests exercise it.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .._ort import ort  # onnxruntime, through the build check
from ..graphs import GraphInfo
from ..inputs import NamedBatch
from . import _onnx_proto as proto
from .base import Env, Executor
from .buckets import Buckets


class DeviceExecutor(Executor):
    """Graphs with IOBinding on ``device`` (``"cuda"``, ``"cpu"``, ...), rows gathered there."""

    kind = "device"

    def __init__(self, graphs: Sequence[GraphInfo], input_name: str, buckets: Buckets | None, device: str,
                 providers: list, options: ort.SessionOptions, device_id: int = 0):
        super().__init__(graphs, input_name, buckets)
        self.device, self.device_id = device, device_id
        self._providers, self._options = providers, options
        self._sessions: dict[tuple, ort.InferenceSession] = {}  # helper models, by (kind, element types)
        self._lock = threading.Lock()

    def upload(self, array: np.ndarray) -> ort.OrtValue:
        """A host array as an OrtValue on the executor's device."""
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def feed(self, x: np.ndarray | NamedBatch, scratch: bool = False) -> Env:
        n = len(x)
        rows = self.padded(np.arange(n))
        return Env({name: self.upload(v) for name, v in self.input_values(x if len(rows) == n else x[rows]).items()}, n)

    def run(self, g: int, env: Env) -> tuple[list[np.ndarray], Env]:
        graph = self.graphs[g]
        io = graph.session.io_binding()
        for name in graph.inputs:
            io.bind_ortvalue_input(name, env.values[name])
        for name in graph.logit_names:
            io.bind_output(name, "cpu")
        for name in graph.cache_names:
            io.bind_output(name, self.device, self.device_id)
        graph.session.run_with_iobinding(io)
        values = dict(zip(graph.output_names, io.get_outputs()))
        logits = [values[n].numpy()[:env.rows] for n in graph.logit_names]
        return logits, Env(self.kept(g, env, {n: values[n] for n in graph.cache_names}), env.rows, g)

    def take(self, env: Env, keep: np.ndarray) -> Env:
        names = sorted(env.values)
        sess = self._session("gather", tuple(_elem(env.values[n]) for n in names))
        io = sess.io_binding()
        for i, name in enumerate(names):
            io.bind_ortvalue_input(f"x{i}", env.values[name])
            io.bind_output(f"y{i}", self.device, self.device_id)
        io.bind_ortvalue_input("idx", self.upload(self.padded(np.asarray(keep, np.int64))))
        sess.run_with_iobinding(io)
        return Env(dict(zip(names, io.get_outputs())), len(keep), env.after)

    def concat(self, envs: Sequence[Env]) -> Env:
        if len(envs) == 1:
            return envs[0]
        starts = np.cumsum([0] + [len_rows(e) for e in envs[:-1]])
        real = np.concatenate([s + np.arange(e.rows) for s, e in zip(starts, envs)])
        idx = self.upload(self.padded(real.astype(np.int64)))
        out = {}
        for name in envs[0].values:
            parts = [e.values[name] for e in envs]
            sess = self._session("concat", (_elem(parts[0]), len(parts)))
            io = sess.io_binding()
            for i, v in enumerate(parts):
                io.bind_ortvalue_input(f"x{i}", v)
            io.bind_ortvalue_input("idx", idx)
            io.bind_output("y", self.device, self.device_id)
            sess.run_with_iobinding(io)
            out[name] = io.get_outputs()[0]
        return Env(out, len(real), envs[0].after)

    def _session(self, kind: str, key: tuple) -> ort.InferenceSession:
        """The helper session of ``kind`` for ``key``, made once (thread-safe)."""
        sess = self._sessions.get((kind, key))
        if sess is None:
            with self._lock:
                sess = self._sessions.get((kind, key))
                if sess is None:
                    model = proto.gather_rows_model(list(key)) if kind == "gather" else proto.concat_rows_model(*key)
                    sess = self._sessions[(kind, key)] = ort.InferenceSession(model, self._options,
                                                                              providers=self._providers)
        return sess


def len_rows(env: Env) -> int:
    """Rows an env's values hold, padding included."""
    return int(next(iter(env.values.values())).shape()[0])


def _elem(value: ort.OrtValue) -> int:
    return proto.ORT_TYPES[value.data_type()]
