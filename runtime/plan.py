"""Pre-bound runs for the CPU path: every graph output written into a buffer reused across
calls (IOBinding), inputs bound to the producing graph's buffers.

Allocating and copying every cached tensor on each call costs more than the graphs
themselves for small models at batch 1; binding them once removes that. A plan belongs to
one thread and one batch size (``ExitChain`` keeps plans in thread-local storage).

The hot path calls ONNX Runtime's compiled ``run_with_iobinding`` directly with one reused
``RunOptions``: the Python wrapper re-checks WebGPU graph capture and builds default run
options on every call, which at batch 1 cost several percent of a small graph's time
(benchmarks/chain_overhead.py). Builds whose wrapper lacks the compiled objects use the
public API.
"""
from __future__ import annotations

import numpy as np

from ._ort import ort  # onnxruntime, through the build check
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
        self._run_options = ort.RunOptions()
        # per graph: (run, binding, bind_image or None); run(binding, run_options) runs it
        self._steps = [_fast_calls(g.session, io, input_name in g.inputs) for g, io in zip(graphs, self.bindings)]
        self._logit_buffers = [[self.buffers[name] for name in names] for names in self.logits]
        self._all_logits = [b for bufs in self._logit_buffers for b in bufs]
        self._image: np.ndarray | None = None  # the bound image stays alive while bound

    def run_graph(self, g: int, x: np.ndarray) -> list[np.ndarray]:
        """Run graph ``g`` (the image ``x`` is bound where the graph reads it); return views of
        its logits buffers, valid until the next call of this plan."""
        run, io, bind_image = self._steps[g]
        if bind_image is not None:
            self._image = x
            bind_image(self.input_name, x)
        run(io, self._run_options)
        return self._logit_buffers[g]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every graph in order; copies of every exit's logits."""
        name, options = self.input_name, self._run_options
        self._image = x
        for run, io, bind_image in self._steps:
            if bind_image is not None:
                bind_image(name, x)
            run(io, options)
        return [b.copy() for b in self._all_logits]


def _fast_calls(session: ort.InferenceSession, io: ort.IOBinding, reads_image: bool) -> tuple:
    """(run, binding, bind_image): the compiled calls behind ``session.run_with_iobinding(io)``
    and ``io.bind_cpu_input`` where this onnxruntime exposes them, else the public ones."""
    compiled, raw = getattr(session, "_sess", None), getattr(io, "_iobinding", None)
    if hasattr(compiled, "run_with_iobinding") and hasattr(raw, "bind_input"):
        return compiled.run_with_iobinding, raw, raw.bind_input if reads_image else None
    return session.run_with_iobinding, io, io.bind_cpu_input if reads_image else None
