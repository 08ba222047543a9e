"""Which provider runs each node of a graph: recorded by ONNX Runtime, reported per graph.

A provider that takes only part of a graph leaves the rest to the CPU provider; one that
takes nothing leaves all of it. Neither may pass unnoticed: :func:`node_placement` reads
what ONNX Runtime assigned (``session.record_ep_graph_assignment_info``, recorded when it
partitions the graph), :func:`placement_row` gives each graph's share per provider for the
chain's report, and :func:`require_placement` refuses a chain in which the requested
provider took no node of a graph, naming the reason the provider gave.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ranet_edge.errors import ProviderError

__all__ = [
    "CPU", "describe_row", "log_reasons", "node_placement", "placement_row", "require_placement",
]

CPU = "CPUExecutionProvider"


def node_placement(session) -> dict[str, list[str]] | None:
    """Which provider took each node of ``session``'s graph: provider -> the op types of its
    nodes, as ONNX Runtime assigned them when it partitioned the graph (before fusions), in
    the providers' priority order. None where the session did not record it (its options
    lack ``session.record_ep_graph_assignment_info``, or onnxruntime < 1.23)."""
    try:
        info = session.get_provider_graph_assignment_info()
    except Exception:  # not recorded, or not in this onnxruntime
        return None
    if not info:
        return None
    out: dict[str, list[str]] = {p: [] for p in session.get_providers()}
    for sub in info:
        out.setdefault(sub.ep_name, []).extend(n.op_type for n in sub.get_nodes())
    return {p: ops for p, ops in out.items() if ops}


def placement_row(path: str, placed: dict[str, list[str]] | None, first: str) -> dict[str, Any]:
    """One graph's placement for reports: its node count, count and share per provider, and
    the op types of the nodes left to the CPU provider when ``first`` (the provider asked
    for) is another one."""
    placed = placed or {}
    total = sum(len(ops) for ops in placed.values())
    cpu = placed.get(CPU, []) if first != CPU else []
    return {"graph": path, "nodes": total, "providers": {p: len(ops) for p, ops in placed.items()},
            "share": {p: round(len(ops) / total, 4) for p, ops in placed.items()} if total else {},
            "on_cpu": {op: cpu.count(op) for op in sorted(set(cpu))}}


def describe_row(row: dict[str, Any], provider: str) -> str:
    """``stage0.onnx: 75/75 nodes on QNNExecutionProvider (100%)``, plus what the CPU kept."""
    took = row["providers"].get(provider, 0)
    text = f"{row['graph']}: {took}/{row['nodes']} nodes on {provider} ({row['share'].get(provider, 0):.0%})"
    if row["on_cpu"]:
        text += "; on the CPU: " + ", ".join(f"{n} {op}" for op, n in row["on_cpu"].items())
    return text


def require_placement(rows: list[dict[str, Any]], provider: str, full: str, why: Callable[[str], str]) -> None:
    """A one-line ProviderError when ``full`` (asked for as ``provider``) took no node of a
    graph: that graph would run on the CPU provider alone. ``why(path)`` says why, as the
    provider said it. Rows without a record (an onnxruntime that does not record the
    placement) are not judged.

    Raises:
        ProviderError: when a graph has nodes and ``full`` (or any provider but the CPU's)
            took none of them; the first such graph is named.
    """
    if full == CPU:
        return
    for row in rows:
        if row["nodes"] and not any(n for p, n in row["providers"].items() if p != CPU):
            raise ProviderError(f"--provider {provider}: {full} took none of the {row['nodes']} nodes of "
                                f"{row['graph']}, which would run on the CPU alone ({why(row['graph'])})")


_NOISE = re.compile(r"^\S+ \S+ \[[A-Z]:?[^\]]*\]\s*|\x1b\[[0-9;]*m|^\[[^\]]*\]\s*")


def log_reasons(text: str, limit: int = 3) -> str | None:
    """The distinct reasons a provider gave in an ONNX Runtime log (verbose) for the nodes
    it refused, one line: QNN logs ``Operator type: Conv ...`` then ``REASON : Cannot get
    shape`` for each, which reads ``Conv: Cannot get shape``."""
    reasons: dict[str, list[str]] = {}
    other: dict[str, None] = {}
    op = None
    for line in text.splitlines():
        line = _NOISE.sub("", line.strip()).strip()
        kind = re.search(r"operator type\s*:\s*(\S+)", line, re.I)
        if kind:
            op = kind.group(1)
        m = re.search(r"reason\s*:\s*(.+)$", line, re.I)
        if m:
            ops = reasons.setdefault(m.group(1).strip().rstrip("."), [])
            if op and op not in ops:
                ops.append(op)
        elif re.search(r"not supported|unsupported", line, re.I):
            other.setdefault(line[:200], None)
    picked = [f"{'/'.join(ops)}: {why}" if ops else why for why, ops in reasons.items()] or list(other)
    if not picked:
        return None
    return "; ".join(picked[:limit]) + (f" (and {len(picked) - limit} more)" if len(picked) > limit else "")
