"""What ``ranet-edge info`` and ``ranet-edge inspect`` report about a bundle's costs, read from
its manifest alone (torch-free, no session opened)."""
from __future__ import annotations

import os


def bundle_info(bundle: str | os.PathLike) -> dict:
    """What ``ranet-edge info`` reports: per-exit costs, graph sizes, cache hand-over and tensor
    names, read from the manifest alone (no session is opened). ``dead_flops`` is the part of
    the official count that no exit's logits depend on (0 for bundles that do not record it).

    Raises:
        BundleError: ``bundle`` has no readable ranet-edge manifest.
    """
    from .runtime.manifest import load_manifest

    m = load_manifest(bundle, verify=False)
    rows = []
    for e in m.exits:
        g = m.graph_of(e.index)
        rows.append({
            "exit": e.index, "graph": e.graph, "flops": e.flops, "stage_flops": e.stage_flops,
            "run_flops": e.run_flops, "dead_flops": e.dead_flops, "params": e.params, "graph_bytes": g.bytes,
            "cache_bytes_per_sample": e.cache_bytes_per_sample, "inputs": list(g.inputs),
            "outputs": [e.logits, *g.cache_outputs],
        })
    return {"bundle": str(bundle), "granularity": m.granularity, "precision": m.precision,
            "graph_format": m.graph_format, "batch_size": m.batch_size,
            "opset": m.opset, "model": m.model, "exits": rows,
            "total_cache_bytes_per_sample": sum(_cache_bytes_per_graph(m)),
            "monolithic": m.monolithic is not None, "mobile_report": m.mobile_report,
            "compiled": {g.path: {c.provider: c.path for c in g.compiled} for g in m.graphs if g.compiled},
            "qnn_placement": (m.data.get("qnn") or {}).get("placement")}


def dead_work_note(flops: list[int], dead: list[int]) -> str | None:
    """The one line ``info`` and ``inspect`` print when the official count (cumulative
    ``flops`` per exit) includes dead work (``dead``, cumulative): None when it does not."""
    if not dead or not flops or not dead[-1]:
        return None
    total, d = flops[-1], dead[-1]
    return (f"dead work: {d / 1e6:.2f} of the {total / 1e6:.2f} official MFLOPs ({100 * d / total:.1f}%) are layers "
            "no exit's logits depend on (finer scales the last MSDNet blocks compute and no classifier reads); "
            f"the official count includes them, the exported graphs skip them: the chain pays at most "
            f"{(total - d) / 1e6:.2f} MFLOPs")


def _cache_bytes_per_graph(m) -> list[int]:
    """Cache bytes per sample handed on by each graph (exits sharing a graph count once)."""
    seen, out = set(), []
    for e in m.exits:
        if e.graph not in seen:
            seen.add(e.graph)
            out.append(e.cache_bytes_per_sample)
    return out
