"""Fixed-address plans run: every graph, decision and gather on buffers allocated once.

``ExitChain.load(..., capture=True)`` builds a :class:`DevicePlan`. Its buffers are
OrtValues on the provider's device (``"cuda"``; ``"cpu"`` on the CPU provider, where the
same plan runs uncaptured, which is how the tests exercise it), bound once per (session,
graph id) with IOBinding. On CUDA every session gets ``enable_cuda_graph`` and the one
shared compute stream (``user_compute_stream``), each run the ``gpu_graph_id`` of its bucket,
and graph and gather runs ``disable_synchronize_execution_providers``: the host waits only
where it reads, once per exit.

Per exit the host reads the decision's ``summary`` (``3 + bucket`` int64: the counts and the
row order) and, when rows leave, their softmax rows; it picks the next bucket from the count,
and the gather graph moves the rows that go on straight into that bucket's input buffers. A
batch whose decision counted rows near the threshold is re-decided on the host from its logits
with ``runtime.decision`` (see ``decision_graph.py``), and the corrected order written back.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

from ranet_edge.errors import BundleError

from . import decision_graph as dg
from ._ort import ort  # onnxruntime, through the build check
from .capture import CaptureReport, GraphCapture, op_blockers, profile_blockers, scan_ops, shape_blockers
from .device import ELEM_TYPES, gather_plan_model
from .fixed_plan import HEAD, FixedPlan, from_graphs
from .graphs import GraphInfo, read_later
from .routing import Prediction, Results, StageRows

CUDA = "CUDAExecutionProvider"


def cuda_stream() -> tuple[int | None, str]:
    """(a new CUDA stream's address, what happened): made with the CUDA runtime through ctypes
    (``cudaStreamCreate``: a blocking stream, so host copies on the legacy stream order with it)."""
    names = ["libcudart.so", *(f"libcudart.so.{v}" for v in (13, 12, 11))]
    found = ctypes.util.find_library("cudart")
    for name in ([found] if found else []) + names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        stream = ctypes.c_void_p()
        rc = lib.cudaStreamCreate(ctypes.byref(stream))
        if rc != 0:
            return None, f"cudaStreamCreate failed ({rc}) in {name}"
        return int(stream.value or 0), f"one shared stream from {name}"
    return None, "no libcudart found: each session uses its own stream"


def capture_providers(providers: list, stream: int | None) -> list:
    """``providers`` with ``enable_cuda_graph`` (and the shared stream) on the CUDA provider."""
    out = []
    for p in providers:
        name, opts = (p[0], dict(p[1])) if isinstance(p, tuple) else (p, {})
        if name == CUDA:
            opts.setdefault("enable_cuda_graph", "1")
            if stream is not None:
                opts.setdefault("user_compute_stream", str(stream))
            p = (name, opts)
        out.append(p)
    return out


def _session(model, options, providers, fallback) -> tuple[ort.InferenceSession, str | None]:
    """A session with capture providers; if onnxruntime refuses CUDA graphs for it (nodes off
    the CUDA provider), one without, and the reason."""
    try:
        return ort.InferenceSession(model, options, providers=providers), None
    except Exception as exc:  # onnxruntime raises its own types; the message names the cause
        if providers == fallback:
            raise
        return ort.InferenceSession(model, options, providers=fallback), f"onnxruntime refused CUDA graphs: {str(exc)[:200]}"


def profile_run(model, options, providers, feeds: dict, provider: str) -> list[str]:
    """Blockers seen in an ONNX Runtime profile of one plain run (nodes off ``provider``, memcpy)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_num_threads
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "capture")
        sess = ort.InferenceSession(model, so, providers=providers)
        sess.run(None, feeds)
        path = sess.end_profiling()
        events = json.loads(open(path).read())
    return profile_blockers(events, provider)


class DevicePlan:
    """Runs a bundle through a :class:`FixedPlan` on ``device`` (``"cuda"`` or ``"cpu"``)."""

    def __init__(self, plan: FixedPlan, graphs: list[GraphInfo], decide: list, gather: list,
                 device: str, device_id: int = 0, captured: bool = False):
        self.plan, self.graphs, self.device, self.device_id = plan, graphs, device, device_id
        self.captured = captured
        self.buf: dict[tuple, ort.OrtValue] = {}
        for spec in plan.buffers():
            self.buf[spec.key] = ort.OrtValue.ortvalue_from_shape_and_type(list(spec.shape), np.dtype(spec.dtype),
                                                                          device, device_id)
            self.buf[spec.key].update_inplace(np.zeros(spec.shape, spec.dtype))
        for b in plan.buckets:
            self.buf[("offsets", b)].update_inplace(np.arange(HEAD, HEAD + b, dtype=np.int64))
        self.buf[("band",)].update_inplace(np.array([dg.band(plan.num_classes)], np.float32))
        self._set: dict[tuple, float] = {}  # threshold/temperature values now in the buffers
        self._run = {}  # (kind, index, ...) -> (run, binding, options)
        for s, (st, g) in enumerate(zip(plan.stages, graphs)):
            for b in plan.buckets:
                io = g.session.io_binding()
                for name in st.inputs:
                    io.bind_ortvalue_input(name, self.buf[("env", s, b, name)])
                for t in st.outputs:
                    io.bind_ortvalue_output(t.name, self.buf[("out", s, b, t.name)])
                self._run[("graph", s, b)] = (g.session, io, self._options(plan.graph_id(b), sync=False))
                for j, k in enumerate(st.exits):
                    io = decide[k].io_binding()
                    feeds = {"logits": ("out", s, b, st.logits[j]), "threshold": ("threshold", k),
                             "temperature": ("temperature", k), "band": ("band",), "alive": plan.alive_key(k, b)}
                    for name, key in feeds.items():
                        io.bind_ortvalue_input(name, self.buf[key])
                    for name in dg.OUTPUTS:
                        io.bind_ortvalue_output(name, self.buf[(name, k, b)])
                    self._run[("decide", k, b)] = (decide[k], io, self._options(plan.graph_id(b), sync=True))
            if s + 1 < len(plan.stages):
                for b, c in plan.gather_pairs():
                    ins, outs = plan.gather_io(s, b, c)
                    io = gather[s].io_binding()
                    names = [f"x{i}" for i in range(len(ins) - 2)] + ["summary", "offsets"]
                    for name, key in zip(names, ins):
                        io.bind_ortvalue_input(name, self.buf[key])
                    for name, key in zip([f"y{i}" for i in range(len(outs) - 1)] + ["alive"], outs):
                        io.bind_ortvalue_output(name, self.buf[key])
                    self._run[("gather", s, b, c)] = (gather[s], io, self._options(plan.gather_id(b, c), sync=False))
        self.decide_sessions, self.gather_sessions = decide, gather
        self.host_redecisions = 0  # batches re-decided on the host (rows near a threshold)
        self.lock = threading.Lock()  # one call at a time: the buffers are the plan's, not the call's

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

    def _read(self, key: tuple) -> np.ndarray:
        """A host copy of a buffer (on the CPU, ``numpy()`` is a view the next run overwrites)."""
        value = self.buf[key].numpy()
        return value.copy() if self.device == "cpu" else value

    def _put(self, key: tuple, value: float) -> None:
        if self._set.get(key) != value:  # thresholds change per call; the buffers keep their address
            self.buf[key].update_inplace(np.array([value], np.float32))
            self._set[key] = value

    def _load(self, x: np.ndarray, b: int) -> None:
        m = len(x)
        if m < b:  # padding rows repeat the last real row (ordinary numbers; never alive)
            x = np.concatenate([x, np.repeat(x[-1:], b - m, axis=0)])
        self.buf[("env", 0, b, self.plan.image.name)].update_inplace(np.ascontiguousarray(x, np.float32))
        self.buf[("alive", 0, b)].update_inplace(np.arange(b) < m)

    # ------------------------------------------------------------------ warm-up
    def warm_up(self, repeats: int | None = None) -> float:
        """Run every (session, graph id) of the plan ``repeats`` times (3 when capturing: a
        regular run, then capture, then a replay); seconds taken."""
        t0 = time.perf_counter()
        reps = repeats or (3 if self.captured else 1)
        plan = self.plan
        for k in plan.exit_stage:
            self._put(("threshold", k), float("inf"))
            self._put(("temperature", k), 1.0)
        for s, st in enumerate(plan.stages):
            for b in plan.buckets:
                for _ in range(reps):
                    self._go(("graph", s, b))
                    for k in st.exits:
                        self._go(("decide", k, b))
                if s + 1 < len(plan.stages):
                    for c in plan.buckets:
                        if c <= b:
                            for _ in range(reps):
                                self._go(("gather", s, b, c))
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ running
    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits for every row (decisions with threshold inf: nobody leaves)."""
        with self.lock:
            parts = [self._run_all(x[i:i + self.plan.largest]) for i in range(0, len(x), self.plan.largest)]
        return [np.concatenate(col) for col in zip(*parts)] if len(parts) > 1 else parts[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        plan, m = self.plan, len(x)
        b = plan.bucket_for(m)
        self._load(x, b)
        out = []
        for s, st in enumerate(plan.stages):
            self._go(("graph", s, b))
            out += [self._read(("out", s, b, name))[:m] for name in st.logits]
            if s + 1 < len(plan.stages):
                for k in st.exits:
                    self._put(("threshold", k), float("inf"))
                    self._go(("decide", k, b))
                self._go(("gather", s, b, b))
        return out

    def predict(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray) -> Prediction:
        n = len(x)
        res = Results(n)
        with self.lock:
            for start in range(0, n, self.plan.largest):
                for part in self.stages(x[start:start + self.plan.largest], thr, temps):
                    res.fill(StageRows(part.rows + start, part.labels, part.exits, part.confidences,
                                       part.probabilities))
        return Prediction(res.labels, res.exits, res.conf, res.probs)

    def stages(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray):
        """predict() one graph at a time (at most the largest bucket of rows): StageRows per
        graph. The caller holds :attr:`lock` while it iterates."""
        plan, m = self.plan, len(x)
        b = plan.bucket_for(m)
        self._load(x, b)
        rows = np.full(b, -1, np.int64)  # bucket position -> row of x (-1: padding)
        rows[:m] = np.arange(m)
        alive = np.arange(b) < m
        for s, st in enumerate(plan.stages):
            self._go(("graph", s, b))
            parts = []
            go = 0
            for j, k in enumerate(st.exits):
                t, temp = float(thr[k]), float(temps[k])
                self._put(("threshold", k), t)
                self._put(("temperature", k), temp)
                self._go(("decide", k, b))
                summary = self._read(("summary", k, b))
                go, left, near, order = dg.split(summary)
                probs = None
                if near:  # rows within the band: the rule itself decides this batch
                    self.host_redecisions += 1
                    z = self._read(("out", s, b, st.logits[j]))
                    summary, probs, go_on = dg.decide_on_host(z, alive, t, temp)
                    self.buf[("summary", k, b)].update_inplace(summary)
                    self.buf[("go_on", k, b)].update_inplace(go_on)
                    go, left, _, order = dg.split(summary)
                if left:
                    if probs is None:
                        probs = self._read(("probs", k, b))
                    pos, labels, conf, p = dg.left_rows(summary, probs)
                    parts.append(StageRows(rows[pos], labels.astype(np.int64), np.full(left, k, np.int64),
                                           conf.astype(np.float32), p))
                alive = np.zeros(b, bool)
                alive[order[:go]] = True
            yield StageRows.concat(parts, plan.num_classes)
            if go == 0 or s + 1 == len(plan.stages):
                return
            c = plan.bucket_for(go)
            self._go(("gather", s, b, c))
            rows = rows[order[:c]]
            rows[go:] = -1
            alive = np.arange(c) < go
            b = c


def build(manifest, graphs: list[GraphInfo], buckets: list[int], provider_full: str, providers: list,
          options: ort.SessionOptions, capture: bool, stream: tuple[int | None, str] | None = None,
          profile: bool = True) -> tuple[DevicePlan, CaptureReport]:
    """The plan's decision and gather sessions, its buffers, and the capture report.

    ``graphs`` are the bundle's sessions, already opened with :func:`capture_providers` when
    ``capture`` (see :func:`open_capture_graphs`)."""
    plan = from_graphs(manifest, graphs, buckets)
    device = "cuda" if provider_full in (CUDA, "TensorrtExecutionProvider") else "cpu"
    stream_addr, stream_note = stream if stream is not None else (None, "no stream (not capturing)")
    cap = capture_providers(providers, stream_addr) if capture else providers
    report = []
    blockers = getattr(graphs, "capture_blockers", {})
    for s, (st, g) in enumerate(zip(plan.stages, graphs)):
        path = manifest.root / st.path
        # fatal: onnxruntime refused CUDA graphs, data-dependent shapes, unfixed axes
        fatal = list(blockers.get(st.path, ())) + op_blockers(scan_ops(path))
        fatal += shape_blockers(_entry_shapes(manifest.graphs[s]))
        seen = []  # what a profile of one plain run shows (CPU nodes, memcpy): the cause when refused
        if profile and capture:
            feeds = {i.name: np.zeros([1, *[int(d) for d in i.shape[1:]]], _np_type(i.type))
                     for i in g.session.get_inputs()}
            seen = profile_run(str(path), options, providers, feeds, provider_full)
        report.append(GraphCapture(st.path, capture and not fatal, tuple(fatal + seen),
                                   tuple(plan.graph_id(b) for b in plan.buckets)))
    decide, gather = [], []
    model = dg.graph_bytes()
    for k in sorted(plan.exit_stage):
        sess, why = _session(model, options, cap, providers)
        decide.append(sess)
        if k == 0:
            report.append(GraphCapture("decide (every exit)", capture and why is None, (why,) if why else (),
                                       tuple(plan.graph_id(b) for b in plan.buckets)))
    for s in range(len(plan.stages) - 1):
        types = [ELEM_TYPES[t] for t in plan.handed_on_types(s)]
        sess, why = _session(gather_plan_model(types, HEAD), options, cap, providers)
        gather.append(sess)
        report.append(GraphCapture(f"gather after {plan.stages[s].path}", capture and why is None,
                                   (why,) if why else (), tuple(plan.gather_id(b, c) for b, c in plan.gather_pairs())))
    dp = DevicePlan(plan, graphs, decide, gather, device, captured=capture)
    notes = () if capture else ((f"CUDA graphs not requested on {provider_full}: the same fixed-address plan "
                                 "runs uncaptured"),)
    rep = CaptureReport(provider_full, capture, tuple(report), stream_note if capture else None,
                        plan.total_bytes(), notes)
    return dp, rep


def _entry_shapes(entry) -> dict[str, tuple]:
    return {name: tuple(t.shape) for name, t in entry.tensors}


def _np_type(ort_type: str):
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}.get(ort_type, np.float32)


class CaptureGraphs(list):
    """The bundle's GraphInfo list, with ``capture_blockers``: graph path -> why onnxruntime
    refused CUDA graphs for it (it then runs in a plain session)."""

    capture_blockers: dict[str, tuple[str, ...]]


def open_capture_graphs(manifest, providers: Callable, fallback: Callable, options: ort.SessionOptions) -> CaptureGraphs:
    """One session per graph with CUDA graphs enabled (``providers(entry)``), or, where
    onnxruntime refuses them, a plain one (``fallback(entry)``) and the reason."""
    out = CaptureGraphs()
    out.capture_blockers = {}
    for entry, later in zip(manifest.graphs, read_later([e.inputs for e in manifest.graphs])):
        try:
            sess, why = _session(str(manifest.root / entry.path), options, providers(entry), fallback(entry))
        except Exception as exc:
            raise BundleError(f"ONNX Runtime cannot load graph {entry.path} ({str(exc)[:160]}); "
                              "re-export the bundle") from None
        if why:
            out.capture_blockers[entry.path] = (why,)
        out.append(GraphInfo(sess, entry, later))
    return out
