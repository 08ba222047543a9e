"""The int8 stages of a bundle: what the ``int8`` and ``qnn`` conversion targets share.

:func:`write_int8` quantizes the chain as one graph calibrated on real images, cuts it at
the exits again (export/quantize.py) and writes the stages with their manifest entries. The
``int8`` target (export/convert.py) uses the CPU recipe; the ``qnn`` target (export/qnn.py)
its own recipe, on stage graphs given a fixed batch first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ranet_edge.runtime.chain import ExitChain

from .graph_costs import intermediate_values
from .quantize import Int8Recipe, quantize_chain

__all__ = ["write_int8"]


def write_int8(src: Path, tmp: Path, work: Path, data: dict, images: np.ndarray, recipe: Int8Recipe | None = None,
               stages: Path | None = None) -> None:
    """Write the int8 stages of bundle ``src`` (and the int8 whole graph as the monolithic
    baseline) into ``tmp``, calibrated on uint8 HxWx3 ``images``, and update the graph and exit
    entries of the manifest ``data`` (see export/quantize.py). ``work``: a scratch directory;
    ``recipe``: the :class:`~.quantize.Int8Recipe` (default: the CPU's); ``stages``: where the
    float stage graphs are read from (default: the bundle ``src``; the qnn target gives graphs
    with a fixed batch).

    Raises:
        RanetEdgeError: ``src`` cannot be loaded on the CPU (see ``ExitChain.load``).
    """
    chain = ExitChain.load(src, warmup=False)
    x = chain.preprocess(images)
    graphs = data["graphs"]
    q = quantize_chain([(stages or src) / g["path"] for g in graphs], [list(g["logits"]) for g in graphs], chain.input_name,
                       x, work, data.get("batch_size"), recipe)
    batch = data.get("batch_size") or 1
    values = intermediate_values(q.model, {chain.input_name: x[:batch]})
    values[chain.input_name] = x[:batch]
    by_graph = {}
    for g, st in zip(graphs, q.stages, strict=True):
        (tmp / g["path"]).write_bytes(st.model.SerializeToString(deterministic=True))
        g.update(inputs=st.inputs, cache_outputs=st.cache_outputs, tensors={
            n: {"shape": [None if data.get("batch_size") is None else batch, *values[n].shape[1:]],
                "dtype": str(values[n].dtype)} for n in st.inputs + st.cache_outputs})
        by_graph[g["path"]] = st
    for e in data["exits"]:
        st = by_graph[e["graph"]]
        e.update(inputs=st.inputs, cache_outputs=st.cache_outputs, cache_bytes_per_sample=int(sum(
            values[n][0].nbytes for n in st.cache_outputs)))
    if data.get("monolithic"):  # the baseline is the very graph the stages were cut from
        (tmp / data["monolithic"]["path"]).write_bytes(q.model.SerializeToString(deterministic=True))
        data["monolithic"]["note"] = "the int8 whole graph the stages were cut from"
    data["int8"] = {"recipe": q.recipe.describe(), "uint8_resizes": q.uint8_resizes}
