"""The host executor: numpy arrays between graphs, on any provider.

Each graph runs on the rows it is handed (``GraphInfo.step``); the tensors later graphs read
stay host arrays and the rows that go on are picked with numpy. Its one fast path is a
property of the executor, not a second loop: when the caller runs its rows to the end before
feeding again on the thread (``feed(x, scratch=True)``: ``predict`` of one sample, ``run_all``),
a :class:`BoundPlan` keeps every output in a buffer reused across calls (IOBinding), so
nothing is allocated or copied between graphs. Allocating and copying every cached tensor on
each call costs more than the graphs themselves for small models at batch 1
(benchmarks/chain_overhead.py). The plan's outputs are read back through :meth:`take` when
rows leave, so both forms give the same values bit for bit (a test runs both).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._ort import ort  # onnxruntime, through the build check
from ..graphs import GraphInfo, walk
from ..inputs import NamedBatch
from .base import Env, Executor
from .buckets import Buckets

#: Pre-bound plans kept per thread (one per batch size, or set of input shapes, seen last).
PLANS_PER_THREAD = 4
#: The most bytes one named-input plan keeps bound (hidden states of long, wide batches are not
#: kept between calls: their graphs cost so much more than allocating them that nothing is won).
MAX_NAMED_PLAN_BYTES = 64 << 20


class HostExecutor(Executor):
    """Graphs on host arrays (see the module doc)."""

    kind = "host"

    def __init__(self, graphs: Sequence[GraphInfo], input_name: str, buckets: Buckets | None):
        super().__init__(graphs, input_name, buckets)
        self._plannable = all(g.static_batch is None for g in self.graphs)
        self._local = threading.local()  # per-thread BoundPlans, by batch size
        produced = {n for g in self.graphs for n in g.output_names}
        known = {n for g in self.graphs for n in g.inputs if n not in produced} | {input_name}  # the network inputs
        self._handed_on = []  # per graph: what later graphs read of what exists then
        for g in self.graphs:
            known |= set(g.output_names)
            self._handed_on.append(sorted(g.keep_after & known))

    def feed(self, x: np.ndarray | NamedBatch, scratch: bool = False) -> Env:
        n = len(x)
        if self.buckets is not None and self.buckets.size(n) != n:
            return Env(self.input_values(x[self.padded(np.arange(n))]), n)
        if scratch and self._plannable:  # named inputs: one plan per set of input shapes
            if isinstance(x, np.ndarray):
                return Env({self.input_name: x}, n, -1, self._plan(x, n))
            arrays = {k: np.ascontiguousarray(a) for k, a in x.arrays.items()}
            plan = self._plan(arrays, x.shapes)
            if plan is not None:
                return Env(arrays, n, -1, plan)
        return Env(self.input_values(x), n)

    def run(self, g: int, env: Env) -> tuple[list[np.ndarray], Env]:
        plan = env.scratch
        if plan is not None:  # the plan's buffers hold every output (logits: views of them)
            return plan.run_graph(g, env.values), Env(env.values, env.rows, g, plan)
        graph = self.graphs[g]
        logits, cache = graph.step({name: env.values[name] for name in graph.inputs})
        if len(logits[0]) != env.rows:
            logits = [z[:env.rows] for z in logits]
        return logits, Env(self.kept(g, env, cache), env.rows, g)

    def run_every(self, env: Env) -> list[np.ndarray]:
        if env.scratch is None:
            return super().run_every(env)
        return env.scratch.run_all(env.values)  # one tight loop over the bound graphs

    def take(self, env: Env, keep: np.ndarray) -> Env:
        values = env.values
        if env.scratch is not None:  # read what later graphs need out of the plan's buffers
            buffers = env.scratch.buffers
            values = {name: buffers[name] if name in buffers else values[name]
                      for name in self._handed_on[env.after]}
        idx = self.padded(keep)
        return Env({name: v[idx] for name, v in values.items()}, len(keep), env.after)

    def concat(self, envs: Sequence[Env]) -> Env:
        if len(envs) == 1:
            return envs[0]
        envs = [self.take(e, np.arange(e.rows)) if e.scratch is not None else e for e in envs]
        rows = sum(e.rows for e in envs)
        idx = self.padded(np.arange(rows))
        values = {name: np.concatenate([e.values[name][:e.rows] for e in envs]) for name in envs[0].values}
        if len(idx) != rows:
            values = {name: v[idx] for name, v in values.items()}
        return Env(values, rows, envs[0].after)

    def reset(self) -> None:
        self._local = threading.local()

    def _plan(self, x: np.ndarray | dict[str, np.ndarray], key: Any) -> BoundPlan | None:
        """This thread's pre-bound plan for ``key`` (an image batch's size, or the shapes of
        every named input). None for named inputs whose outputs the graphs do not declare in
        sizes the inputs give (a plan would cost a run to size) or whose buffers would hold
        more than ``MAX_NAMED_PLAN_BYTES``: those run on the plain path, nothing kept."""
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        if key in plans:
            return plans[key]
        if len(plans) >= PLANS_PER_THREAD:
            plans.pop(next(iter(plans)))
        if isinstance(x, dict):
            buffers = declared_outputs(self.graphs, x)
            fits = 0 < sum(b.nbytes for b in buffers.values()) <= MAX_NAMED_PLAN_BYTES
            plan = BoundPlan(self.graphs, self.input_name, x, buffers) if fits else None
        else:
            plan = BoundPlan(self.graphs, self.input_name, x)
        plans[key] = plan
        return plan

    @property
    def plan_sizes(self) -> set:
        """What this thread holds pre-bound plans for: batch sizes (image bundles), tuples of
        input shapes (named inputs)."""
        return {k for k, plan in getattr(self._local, "plans", {}).items() if plan is not None}


class BoundPlan:
    """Bindings for running every graph at one input shape, outputs in reused buffers.

    Inputs are bound to the producing graph's buffers. The hot path calls ONNX Runtime's
    compiled ``run_with_iobinding`` directly with one reused ``RunOptions``: the Python wrapper
    re-checks WebGPU graph capture and builds default run options on every call, which at
    batch 1 cost several percent of a small graph's time. Builds whose wrapper lacks the
    compiled objects use the public API. A plan belongs to one thread and one input shape.

    ``x`` is an image batch, or every named input by name (a text encoder's ids and mask).
    Named inputs size the buffers from the graphs' declared output shapes, whose symbolic
    axes (``batch``, ``sequence``) the inputs' shapes give (:func:`declared_outputs`, or
    ``buffers`` computed by it), so a new sequence length costs no extra run; an axis they do
    not give (and any image bundle) sizes them by running every graph once. Keeping the cached tensors bound between graphs is what brings a text
    encoder's chain to its monolithic graph's time at batch 1 (benchmarks/text_chain_overhead.py).
    """

    def __init__(self, graphs: list[GraphInfo], input_name: str, x: np.ndarray | dict[str, np.ndarray],
                 buffers: dict[str, np.ndarray] | None = None):
        first = x if isinstance(x, dict) else {input_name: x}
        self.input_names = list(first)
        if buffers is None:
            buffers = declared_outputs(graphs, first) if isinstance(x, dict) else {}
        self.buffers: dict[str, np.ndarray] = buffers
        if not self.buffers:
            for _, _, outs in walk([g.inputs for g in graphs], first, lambda g, f: graphs[g].run(f)):
                self.buffers.update((name, np.empty_like(arr)) for name, arr in outs.items())
        values = {name: ort.OrtValue.ortvalue_from_numpy(b) for name, b in self.buffers.items()}
        self._run_options = ort.RunOptions()
        self._steps = []  # per graph: (run, binding, bind_input or None, input names it binds per call)
        for g in graphs:
            io = g.session.io_binding()
            for name in g.inputs:
                if name not in first:
                    io.bind_ortvalue_input(name, values[name])
            for name in g.output_names:
                io.bind_ortvalue_output(name, values[name])
            reads = [name for name in g.inputs if name in first]
            self._steps.append((*_fast_calls(g.session, io, bool(reads)), reads))
        self._logit_buffers = [[self.buffers[name] for name in g.logit_names] for g in graphs]
        self._all_logits = [b for bufs in self._logit_buffers for b in bufs]
        self._bound: object = None  # the bound inputs stay alive while bound

    def _inputs(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return x if isinstance(x, dict) else {self.input_names[0]: x}

    def run_graph(self, g: int, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run graph ``g`` (the image ``x``, or the named inputs ``x``, bound where the graph
        reads them); return views of its logits buffers, valid until the next call of this plan."""
        run, io, bind, reads = self._steps[g]
        if bind is not None:
            x = self._bound = self._inputs(x)
            for name in reads:
                bind(name, x[name])
        run(io, self._run_options)
        return self._logit_buffers[g]

    def run_all(self, x: np.ndarray | dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every graph in order; copies of every exit's logits."""
        options = self._run_options
        x = self._bound = self._inputs(x)
        for run, io, bind, reads in self._steps:
            if bind is not None:
                for name in reads:
                    bind(name, x[name])
            run(io, options)
        return [b.copy() for b in self._all_logits]


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def declared_outputs(graphs: Sequence[GraphInfo], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An empty buffer for every graph output, shaped as the sessions declare it with each
    symbolic axis set from the network inputs' shapes; {} where an axis or a dtype is not
    known that way (or two inputs disagree on an axis), and the caller runs the graphs instead."""
    sizes: dict[str, int] = {}
    for g in graphs:
        for arg in g.session.get_inputs():
            if arg.name in inputs:
                for dim, size in zip(arg.shape, inputs[arg.name].shape):
                    if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                        return {}
    out: dict[str, np.ndarray] = {}
    for g in graphs:
        for arg in g.session.get_outputs():
            shape = [d if isinstance(d, int) else sizes.get(d) if isinstance(d, str) else None for d in arg.shape]
            if None in shape or arg.type not in _DTYPES:
                return {}
            out[arg.name] = np.empty(shape, _DTYPES[arg.type])
    return out


def _fast_calls(session: ort.InferenceSession, io: ort.IOBinding, reads_input: bool) -> tuple:
    """(run, binding, bind_input): the compiled calls behind ``session.run_with_iobinding(io)``
    and ``io.bind_cpu_input`` where this onnxruntime exposes them, else the public ones."""
    compiled, raw = getattr(session, "_sess", None), getattr(io, "_iobinding", None)
    if hasattr(compiled, "run_with_iobinding") and hasattr(raw, "bind_input"):
        return compiled.run_with_iobinding, raw, raw.bind_input if reads_input else None
    return session.run_with_iobinding, io, io.bind_cpu_input if reads_input else None
