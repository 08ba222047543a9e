"""What keeps a graph off CUDA graphs, found without the ``onnx`` package.

A CUDA graph replays a fixed sequence of kernels on fixed addresses. Three things break that,
and ``ExitChain.load(..., capture=True)`` reports each of them in ``load_report.capture``:

- an operator whose output shape depends on the data (NonZero, Compress, Unique, ...) or
  control flow (If, Loop, Scan): the provider copies a count to the host and waits;
- a node that runs on another provider than the device one (a CPU fallback), or a memcpy
  node between providers: found in an ONNX Runtime profile of one run on the provider;
- a tensor shape the batch bucket does not fix (a dynamic axis besides the batch).

:func:`scan_ops` reads operator types straight from the model's protobuf bytes (subgraphs
included), so the runtime stays numpy + onnxruntime only.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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


def _varint(buf: bytes, i: int) -> tuple[int, int]:
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
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield num, wire, value, value
        elif wire == 1:
            yield num, wire, i, i + 8
            i += 8
        elif wire == 2:
            n, i = _varint(buf, i)
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
    """Every node's operator type in an ONNX model (bytes or a path), subgraphs included."""
    buf = model if isinstance(model, bytes) else open(model, "rb").read()
    out: list[str] = []
    try:
        for num, wire, a, b in _fields(buf):
            if num == 7 and wire == 2:  # ModelProto.graph
                _graph_ops(buf, a, b, out)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a readable ONNX model ({exc})") from None
    return out


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

    name: str  # a bundle graph's path, or "decide" / "gather k"
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
        return [f"{g.name}: {b}" for g in self.graphs for b in g.blockers]

    @property
    def all_captured(self) -> bool:
        return bool(self.graphs) and all(g.captured for g in self.graphs)

    def to_dict(self) -> dict:
        return {"provider": self.provider, "requested": self.requested, "stream": self.stream,
                "buffers_bytes": self.buffers_bytes, "all_captured": self.all_captured,
                "graphs": [{"name": g.name, "captured": g.captured, "blockers": list(g.blockers),
                            "ids": len(g.ids)} for g in self.graphs],
                "notes": list(self.notes)}
