"""The captured executor: every graph and gather runs on buffers allocated once per bucket.

``ExitChain.load(..., capture=True)`` builds one. Its buffers (:mod:`._layout`) are OrtValues
on the provider's device (``"cuda"``; ``"cpu"`` on the CPU provider, where the same executor
runs uncaptured, which is how the tests exercise it), bound once per (session, graph id) with
IOBinding. On CUDA every session gets ``enable_cuda_graph`` and the one shared compute stream,
each run the ``gpu_graph_id`` of its bucket, so each (graph, bucket) and each (gather, bucket
pair) replays as a CUDA graph.

Per graph the host reads the logits buffers (a few KB), the routing loop decides exits with
the one rule on the host, and the host writes the kept rows' indices into the next bucket's
``index`` buffer (at most the largest bucket of int64): the gather graph then moves those
rows of every handed-on tensor straight into the next graph's input buffers. The host waits
once per graph, where it reads logits. Calls take turns (:attr:`lock`): the buffers are the
executor's.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from .._ort import ort  # onnxruntime, through the build check
from ..graphs import GraphInfo
from . import _onnx_proto as proto
from ._layout import FixedLayout, from_graphs
from .base import Env, Executor
from .buckets import Buckets
from .capture_check import (
    CaptureReport,
    GraphCapture,
    capture_providers,
    capture_session,
    op_blockers,
    profile_run,
    shape_blockers,
)

CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"


class CapturedExecutor(Executor):
    """Graphs on fixed-address buffers (see the module doc). Envs carry no values: their
    ``scratch`` is ``(bucket, placed)``, the rows sitting at that bucket in the buffers of graph
    ``after`` (not yet placed) or of graph ``after + 1`` (placed: fed, or gathered there)."""

    kind = "captured"
    exclusive = True

    def __init__(self, layout: FixedLayout, graphs: Sequence[GraphInfo], gather: list, device: str,
                 captured: bool, device_id: int = 0):
        super().__init__(graphs, layout.image.name, Buckets(sizes=layout.buckets))
        self.layout, self.device, self.device_id, self.captured = layout, device, device_id, captured
        self.lock = threading.Lock()
        self.buf: dict[tuple, ort.OrtValue] = {}
        for spec in layout.buffers():
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(spec.shape), np.dtype(spec.dtype), device, device_id)
            value.update_inplace(np.zeros(spec.shape, spec.dtype))
            self.buf[spec.key] = value
        self._run: dict[tuple, tuple] = {}  # (kind, stage, bucket[, next bucket]) -> (session, binding, options)
        for s, (st, g) in enumerate(zip(layout.stages, graphs)):
            for b in layout.buckets:
                io = g.session.io_binding()
                for name in st.inputs:
                    io.bind_ortvalue_input(name, self.buf[("env", s, b, name)])
                for t in st.outputs:
                    io.bind_ortvalue_output(t.name, self.buf[("out", s, b, t.name)])
                self._run[("graph", s, b)] = (g.session, io, self._options(layout.graph_id(b), sync=True))
            if s + 1 < len(layout.stages):
                for b, c in layout.gather_pairs():
                    ins, outs = layout.gather_io(s, b, c)
                    io = gather[s].io_binding()
                    for name, key in zip([f"x{i}" for i in range(len(ins) - 1)] + ["idx"], ins):
                        io.bind_ortvalue_input(name, self.buf[key])
                    for i, key in enumerate(outs):
                        io.bind_ortvalue_output(f"y{i}", self.buf[key])
                    self._run[("gather", s, b, c)] = (gather[s], io, self._options(layout.gather_id(b, c), sync=False))
        self.gather_sessions = gather

    def _options(self, graph_id: int, sync: bool) -> ort.RunOptions:
        ro = ort.RunOptions()
        if self.captured:
            ro.add_run_config_entry("gpu_graph_id", str(graph_id))
        if not sync and self.device != "cpu":
            ro.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return ro

    def _go(self, key: tuple) -> None:
        sess, io, ro = self._run[key]
        sess.run_with_iobinding(io, ro)

    # ------------------------------------------------------------------ the seam
    def feed(self, x: np.ndarray, scratch: bool = False) -> Env:
        m = len(x)
        b = self.buckets.size(m)
        if m < b:  # padding rows repeat the last real row (ordinary numbers, dropped from the logits)
            x = np.concatenate([x, np.repeat(x[-1:], b - m, axis=0)])
        self.buf[("env", 0, b, self.input_name)].update_inplace(np.ascontiguousarray(x, np.float32))
        return Env({}, m, -1, (b, True))

    def run(self, g: int, env: Env) -> tuple[list[np.ndarray], Env]:
        if env.after != g - 1:
            raise RuntimeError(f"graph {g} run on rows that left graph {env.after}")
        if not env.scratch[1]:  # every row goes on: move them as they are
            env = self.take(env, np.arange(env.rows))
        b = env.scratch[0]
        self._go(("graph", g, b))
        logits = [self._read(("out", g, b, name))[:env.rows] for name in self.layout.stages[g].logits]
        return logits, Env({}, env.rows, g, (b, False))

    def take(self, env: Env, keep: np.ndarray) -> Env:
        s, b = env.after, env.scratch[0]
        c = self.buckets.size(len(keep))
        self.buf[("index", c)].update_inplace(self.padded(np.asarray(keep, np.int64)))
        self._go(("gather", s, b, c))
        return Env({}, len(keep), s, (c, True))

    def _read(self, key: tuple) -> np.ndarray:
        """A host copy of a buffer (on the CPU, ``numpy()`` is a view the next run overwrites)."""
        value = self.buf[key].numpy()
        return value.copy() if self.device == "cpu" else value

    def warm_up(self, repeats: int | None = None) -> float:
        """Run every (session, graph id) ``repeats`` times (3 when capturing: a regular run,
        the capture, a replay); seconds taken."""
        t0 = time.perf_counter()
        reps = repeats or (3 if self.captured else 1)
        for s in range(len(self.layout.stages)):
            for b in self.layout.buckets:
                for _ in range(reps):
                    self._go(("graph", s, b))
                if s + 1 < len(self.layout.stages):
                    for c in self.layout.buckets:
                        if c <= b:
                            for _ in range(reps):
                                self._go(("gather", s, b, c))
        return time.perf_counter() - t0


def build(manifest, graphs: list[GraphInfo], buckets: list[int], provider_full: str, providers: list,
          options: ort.SessionOptions, capture: bool, stream: tuple[int | None, str] | None = None,
          profile: bool = True) -> tuple[CapturedExecutor, CaptureReport]:
    """The executor's gather sessions and buffers, and the capture report.

    ``graphs`` are the bundle's sessions, already opened with CUDA graphs enabled when
    ``capture`` (:func:`~.capture_check.open_capture_graphs`)."""
    layout = from_graphs(manifest, graphs, buckets)
    device = "cuda" if provider_full in (CUDA, TENSORRT) else "cpu"
    stream_addr, stream_note = stream if stream is not None else (None, "no stream (not capturing)")
    cap = capture_providers(providers, stream_addr) if capture else providers
    report = []
    blockers = getattr(graphs, "capture_blockers", {})
    for s, (st, g) in enumerate(zip(layout.stages, graphs)):
        path = manifest.root / st.path
        # fatal: onnxruntime refused CUDA graphs, data-dependent shapes, unfixed axes
        fatal = list(blockers.get(st.path, ())) + op_blockers(proto.scan_ops(path))
        fatal += shape_blockers({name: tuple(t.shape) for name, t in manifest.graphs[s].tensors})
        seen = []  # what a profile of one plain run shows (CPU nodes, memcpy): the cause when refused
        if profile and capture:
            feeds = {i.name: np.zeros([1, *[int(d) for d in i.shape[1:]]], _NP_TYPES.get(i.type, np.float32))
                     for i in g.session.get_inputs()}
            seen = profile_run(str(path), options, providers, feeds, provider_full)
        report.append(GraphCapture(st.path, capture and not fatal, tuple(fatal + seen),
                                   tuple(layout.graph_id(b) for b in layout.buckets)))
    gather = []
    for s in range(len(layout.stages) - 1):
        types = [proto.ELEM_TYPES[t] for t in layout.handed_on_types(s)]
        sess, why = capture_session(proto.gather_rows_model(types), options, cap, providers)
        gather.append(sess)
        report.append(GraphCapture(f"gather after {layout.stages[s].path}", capture and why is None,
                                   (why,) if why else (), tuple(layout.gather_id(b, c) for b, c in layout.gather_pairs())))
    executor = CapturedExecutor(layout, graphs, gather, device, captured=capture)
    notes = () if capture else ((f"CUDA graphs not requested on {provider_full}: the same fixed-address "
                                 "executor runs uncaptured"),)
    rep = CaptureReport(provider_full, capture, tuple(report), stream_note if capture else None,
                        layout.total_bytes(), notes)
    return executor, rep


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
