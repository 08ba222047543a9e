"""A bundle's graphs as the runtime sees them, and a walk that chains whole batches.

:class:`GraphInfo` is what every part of the runtime (the chain's executors, latency
measurement) and the int8 calibration read about a loaded graph. :func:`walk` runs graphs in
order on every row, feeding each the tensors it names: used to size the host executor's bound
buffers, by :func:`ranet_edge.runtime.evaluation.latency.cached_inputs` and by the exporter's validation.
Per-sample routing, which drops rows between graphs, is the chain's routing loop
(``chain.py``) over an executor (``executors/``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ._ort import ort  # onnxruntime, through the build check
from .manifest import GraphEntry, Manifest
from .placement import node_placement
from .session_errors import load_error

T = TypeVar("T")


class GraphInfo:
    """One loaded graph of a bundle: its session and what chaining it needs, computed once.

    Attributes: ``session`` (the ONNX Runtime session), ``inputs`` (tensor names it reads, in
    the manifest's order), ``exits`` (the exit indices it produces logits for),
    ``output_names`` (the session's outputs in order), ``logit_names`` (the logits, in exit
    order) and their positions ``logit_pos``, ``cache_names`` (the outputs a later graph
    reads) and their ``cache_pos`` (position, name), ``keep_after`` (every tensor a later
    graph reads), ``static_batch`` (the batch size of a static-shape graph, None when
    dynamic), ``path`` (the file the session was made from: the graph, or a provider's
    compiled form of it) and ``placement`` (:func:`node_placement`).
    """

    def __init__(self, session: ort.InferenceSession, entry: GraphEntry, keep_after: frozenset[str],
                 path: str | None = None):
        self.session = session
        self.path = path or entry.path
        self.placement = node_placement(session)
        self.inputs: list[str] = list(entry.inputs)
        self.exits: list[int] = list(entry.exits)
        self.output_names = [o.name for o in session.get_outputs()]
        self.logit_names: list[str] = list(entry.logits)
        self.logit_pos = [self.output_names.index(n) for n in self.logit_names]
        self.cache_pos = [(i, n) for i, n in enumerate(self.output_names) if n in keep_after]
        self.cache_names = [n for _, n in self.cache_pos]
        self.keep_after = keep_after  # tensors any later graph reads
        shape = session.get_inputs()[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Every output, by name (a plain session run)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds)), strict=True))

    def run_outputs(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output in ``output_names`` order, for any number of rows: a static-shape
        graph (mobile exports) runs in chunks of its batch size, the last one padded."""
        b = self.static_batch
        n = next(iter(feeds.values())).shape[0]
        if b is None or n == b:
            return self.session.run(self.output_names, feeds)
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, b):
            chunk = {k: v[start:start + b] for k, v in feeds.items()}
            m = next(iter(chunk.values())).shape[0]
            if m < b:
                chunk = {k: np.concatenate([v, np.zeros((b - m, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
            parts.append([o[:m] for o in self.session.run(self.output_names, chunk)])
        return [np.concatenate(col) for col in zip(*parts)]

    def step(self, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """One run on host arrays: (logits in exit order, the outputs a later graph reads)."""
        outs = self.run_outputs(feeds)
        return [outs[p] for p in self.logit_pos], {name: outs[i] for i, name in self.cache_pos}


def open_graphs(manifest: Manifest, providers: Callable[[GraphEntry], list | None],
                options: ort.SessionOptions, compiled_for: str | None = None) -> list[GraphInfo]:
    """One session per graph of ``manifest``, in order; ``providers(entry)`` gives each
    session's providers argument (None: the providers ``options`` selected). With
    ``compiled_for`` (a provider name), a graph the bundle holds compiled for that provider
    (an EPContext model, see :attr:`GraphEntry.compiled`) loads in that form."""
    graphs = []
    for entry, later in zip(manifest.graphs, read_later([e.inputs for e in manifest.graphs])):
        path = entry.compiled_path(compiled_for) or entry.path
        try:
            sess = ort.InferenceSession(str(manifest.root / path), options, providers=providers(entry))
        except Exception as exc:  # what ONNX Runtime said, and the fix for its cause
            raise load_error(path, exc, compiled_for or "CPUExecutionProvider", str(manifest.root)) from exc
        graphs.append(GraphInfo(sess, entry, later, path))
    return graphs


def read_later(inputs: Sequence[Sequence[str]]) -> list[frozenset[str]]:
    """For each graph, the tensors any later graph reads (what must be kept after it)."""
    return [frozenset(n for names in inputs[g + 1:] for n in names) for g in range(len(inputs))]


def walk(inputs: Sequence[Sequence[str]], first: Mapping[str, T],
         run: Callable[[int, dict[str, T]], Mapping[str, T]]) -> Iterator[tuple[int, dict[str, T], Mapping[str, T]]]:
    """Run graphs ``0..len(inputs)-1`` in order: yield ``(g, feeds, outputs)`` for each.

    Graph ``g`` reads the tensors named ``inputs[g]`` from ``first`` (the image) or from an
    earlier graph's outputs, as ``run(g, feeds)`` returns them; a tensor is dropped as soon as
    no later graph reads it.
    """
    later = read_later(inputs)
    env = dict(first)
    for g, names in enumerate(inputs):
        feeds = {name: env[name] for name in names}
        outs = run(g, feeds)
        yield g, feeds, outs
        keep = later[g]
        env = {name: v for name, v in env.items() if name in keep}
        env.update((name, v) for name, v in outs.items() if name in keep)
