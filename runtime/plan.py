"""Pre-bound runs for the CPU path: every graph output written into a buffer reused across
calls (IOBinding), inputs bound to the producing graph's buffers.

Allocating and copying every cached tensor on each call costs more than the graphs
themselves for small models at batch 1; binding them once removes that. A plan belongs to
one thread and one batch size (``ExitChain`` keeps plans in thread-local storage).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .graphs import GraphInfo, walk


class BoundPlan:
    """Bindings for running every graph at one batch size, outputs in reused buffers."""

    def __init__(self, graphs: list[GraphInfo], input_name: str, x: np.ndarray):
        self.graphs = graphs
        self.input_name = input_name
        self.buffers: dict[str, np.ndarray] = {}
        values: dict[str, ort.OrtValue] = {}
        self.bindings = []
        for _, _, outs in walk([g.inputs for g in graphs], {input_name: x}, lambda g, f: graphs[g].run(f)):
            for name, arr in outs.items():
                self.buffers[name] = np.empty_like(arr)
                values[name] = ort.OrtValue.ortvalue_from_numpy(self.buffers[name])
        for g in graphs:
            io = g.session.io_binding()
            for name in g.inputs:
                if name != input_name:
                    io.bind_ortvalue_input(name, values[name])
            for name in g.output_names:
                io.bind_ortvalue_output(name, values[name])
            self.bindings.append(io)
        self.logits = [g.logit_names for g in graphs]

    def run_graph(self, g: int, x: np.ndarray) -> list[np.ndarray]:
        """Run graph ``g`` (the image ``x`` is bound where the graph reads it); return views of
        its logits buffers, valid until the next call of this plan."""
        graph, io = self.graphs[g], self.bindings[g]
        if self.input_name in graph.inputs:
            io.bind_cpu_input(self.input_name, x)
        graph.session.run_with_iobinding(io)
        return [self.buffers[name] for name in self.logits[g]]
