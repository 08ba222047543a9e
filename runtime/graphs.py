"""A bundle's graphs as the runtime sees them, and the one walk that chains them.

:class:`GraphInfo` is what every part of the runtime (the chain, bound plans, the device
router, latency measurement) and the int8 calibration read about a loaded graph.
:func:`walk` runs graphs in order, feeding each the tensors it names: used by ``run_all``,
the bound plans, :func:`ranet_edge.runtime.latency.cached_inputs` and the exporter's
validation. (``ExitChain``'s per-sample routing keeps its own loop: it drops rows between
graphs.)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import onnxruntime as ort

T = TypeVar("T")


class GraphInfo:
    """One loaded graph of a bundle: its session and what chaining it needs, computed once.

    Attributes: ``session`` (the ONNX Runtime session), ``inputs`` (tensor names it reads, in
    the manifest's order), ``exits`` (the exit indices it produces logits for),
    ``output_names`` (the session's outputs in order), ``logit_names`` (the logits, in exit
    order) and their positions ``logit_pos``, ``cache_pos`` (position, name) of the outputs a
    later graph reads, ``keep_after`` (every tensor a later graph reads) and
    ``static_batch`` (the batch size of a static-shape graph, None when dynamic).
    """

    def __init__(self, session: ort.InferenceSession, entry: Any, keep_after: frozenset[str]):
        self.session = session
        self.inputs: list[str] = list(entry.inputs)
        self.exits: list[int] = list(entry.exits)
        self.output_names = [o.name for o in session.get_outputs()]
        self.logit_names: list[str] = list(entry.logits)
        self.logit_pos = [self.output_names.index(n) for n in self.logit_names]
        self.cache_pos = [(i, n) for i, n in enumerate(self.output_names) if n in keep_after]
        self.keep_after = keep_after  # tensors any later graph reads
        shape = session.get_inputs()[0].shape
        self.static_batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Every output, by name (a plain session run)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, dict(feeds)), strict=True))


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
