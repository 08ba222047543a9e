"""What keeps a graph off CUDA graphs, found without the ``onnx`` package.

A CUDA graph replays a fixed sequence of kernels on fixed addresses. Three things break that,
and ``ExitChain.load(..., capture=True)`` reports each of them in ``load_report.capture``:

- an operator whose output shape depends on the data (NonZero, Compress, Unique, ...) or
  control flow (If, Loop, Scan): the provider copies a count to the host and waits;
- a node that runs on another provider than the device one (a CPU fallback), or a memcpy
  node between providers: found in an ONNX Runtime profile of one run on the provider;
- a tensor shape the batch bucket does not fix (a dynamic axis besides the batch).

:func:`~._onnx_proto.scan_ops` reads operator types straight from the model's protobuf bytes
(subgraphs included), so the runtime stays numpy + onnxruntime only. This module also opens
the sessions with CUDA graphs enabled (:func:`open_capture_graphs`), falling back to plain
sessions, with the reason, where ONNX Runtime refuses.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._ort import ort  # onnxruntime, through the build check
from ..graphs import GraphInfo, read_later
from ..session_errors import load_error

CUDA = "CUDAExecutionProvider"

#: Operators that keep a graph off CUDA graphs, with the reason.
BLOCKING_OPS = {
    "NonZero": "output shape depends on the data (a count copied to the host)",
    "Compress": "output shape depends on the data (a count copied to the host)",
    "Unique": "output shape depends on the data",
    "NonMaxSuppression": "output shape depends on the data",
    "If": "control flow (a condition read on the host)",
    "Loop": "control flow (a trip count read on the host)",
    "Scan": "control flow",
}
MEMCPY_OPS = ("MemcpyToHost", "MemcpyFromHost")


def op_blockers(ops: Sequence[str]) -> list[str]:
    """One line per blocking operator type present, with its count and reason."""
    return [f"{op} node x{ops.count(op)}: {why}" for op, why in BLOCKING_OPS.items() if op in ops]


def profile_blockers(profile: str | os.PathLike | list, provider: str) -> list[str]:
    """Nodes of an ONNX Runtime profile (``enable_profiling``) that ran on another provider
    than ``provider``, and memcpy nodes; one line per (operator, provider)."""
    events = profile if isinstance(profile, list) else json.loads(open(profile).read())
    seen: dict[tuple[str, str], int] = {}
    for ev in events:
        args = ev.get("args") or {}
        if ev.get("cat") != "Node" or "op_name" not in args or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        op, where = args["op_name"], args.get("provider", "?")
        if where != provider or op in MEMCPY_OPS:
            seen[(op, where)] = seen.get((op, where), 0) + 1
    out = []
    for (op, where), count in sorted(seen.items()):
        kind = "memcpy node" if op in MEMCPY_OPS else "node off the device"
        out.append(f"{kind}: {op} on {where} (x{count} per run)")
    return out


def shape_blockers(shapes: dict[str, tuple]) -> list[str]:
    """Tensors with a dynamic axis besides the batch (the bucket cannot fix their shape)."""
    return [f"shape that changes: {name} {list(shape)} (dynamic axis besides the batch)"
            for name, shape in shapes.items() if any(d is None or isinstance(d, str) for d in shape[1:])]


@dataclass(frozen=True)
class GraphCapture:
    """One session of a fixed-address plan: whether its runs are captured, and why not."""

    name: str  # a bundle graph's path, or "gather after ..."
    captured: bool
    blockers: tuple[str, ...] = ()
    ids: tuple[int, ...] = ()  # the gpu_graph_id values it runs under (one per bucket or bucket pair)


@dataclass(frozen=True)
class CaptureReport:
    """``load_report.capture``: every session of the plan and what it got."""

    provider: str
    requested: bool  # CUDA graphs asked for (True on CUDA; the CPU runs the same plans uncaptured)
    graphs: tuple[GraphCapture, ...] = ()
    stream: str | None = None  # the shared compute stream, or why there is none
    buffers_bytes: int = 0  # device memory of the fixed buffers, every bucket
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def blockers(self) -> list[str]:
        """Every reason a session was kept off CUDA graphs, as ``"session: reason"``."""
        return [f"{g.name}: {b}" for g in self.graphs for b in g.blockers]

    @property
    def all_captured(self) -> bool:
        """Whether every session of the executor runs as CUDA graphs."""
        return bool(self.graphs) and all(g.captured for g in self.graphs)

    def to_dict(self) -> dict:
        """The report as JSON-ready data (what benchmarks and ``bench --json`` record)."""
        return {"provider": self.provider, "requested": self.requested, "stream": self.stream,
                "buffers_bytes": self.buffers_bytes, "all_captured": self.all_captured,
                "graphs": [{"name": g.name, "captured": g.captured, "blockers": list(g.blockers),
                            "ids": len(g.ids)} for g in self.graphs],
                "notes": list(self.notes)}


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


def capture_session(model, options, providers, fallback) -> tuple[ort.InferenceSession, str | None]:
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
        with open(path) as f:
            events = json.load(f)
    return profile_blockers(events, provider)


class CaptureGraphs(list):
    """The bundle's GraphInfo list, with ``capture_blockers``: graph path -> why onnxruntime
    refused CUDA graphs for it (it then runs in a plain session)."""

    capture_blockers: dict[str, tuple[str, ...]]


def open_capture_graphs(manifest, providers: Callable, fallback: Callable, options: ort.SessionOptions,
                        provider: str) -> CaptureGraphs:
    """One session per graph with CUDA graphs enabled (``providers(entry)``), or, where
    onnxruntime refuses them, a plain one (``fallback(entry)``) and the reason.

    Raises:
        BundleError, ProviderError: a graph ONNX Runtime cannot load at all (see ``session_errors``).
    """
    out = CaptureGraphs()
    out.capture_blockers = {}
    for entry, later in zip(manifest.graphs, read_later([e.inputs for e in manifest.graphs])):
        try:
            sess, why = capture_session(str(manifest.root / entry.path), options, providers(entry), fallback(entry))
        except Exception as exc:
            raise load_error(entry.path, exc, provider, str(manifest.root)) from exc
        if why:
            out.capture_blockers[entry.path] = (why,)
        out.append(GraphInfo(sess, entry, later))
    return out
