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

import numpy as np

from .._ort import ort  # onnxruntime, through the build check
from ..graphs import GraphInfo, walk
from ..inputs import NamedBatch
from .base import Env, Executor
from .buckets import Buckets

#: Pre-bound plans kept per thread (one per batch size seen last).
PLANS_PER_THREAD = 4


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
        if scratch and self._plannable and isinstance(x, np.ndarray):  # named inputs: no plan (shapes vary)
            return Env({self.input_name: x}, n, -1, self._plan(x))
        return Env(self.input_values(x), n)

    def run(self, g: int, env: Env) -> tuple[list[np.ndarray], Env]:
        plan = env.scratch
        if plan is not None:  # the plan's buffers hold every output (logits: views of them)
            return plan.run_graph(g, env.values[self.input_name]), Env(env.values, env.rows, g, plan)
        graph = self.graphs[g]
        logits, cache = graph.step({name: env.values[name] for name in graph.inputs})
        if len(logits[0]) != env.rows:
            logits = [z[:env.rows] for z in logits]
        return logits, Env(self.kept(g, env, cache), env.rows, g)

    def run_every(self, env: Env) -> list[np.ndarray]:
        if env.scratch is None:
            return super().run_every(env)
        return env.scratch.run_all(env.values[self.input_name])  # one tight loop over the bound graphs

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

    def _plan(self, x: np.ndarray) -> BoundPlan:
        """This thread's pre-bound plan for x's batch size."""
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        plan = plans.get(x.shape[0])
        if plan is None:
            if len(plans) >= PLANS_PER_THREAD:
                plans.pop(next(iter(plans)))
            plan = plans[x.shape[0]] = BoundPlan(self.graphs, self.input_name, x)
        return plan

    @property
    def plan_sizes(self) -> set[int]:
        """The batch sizes this thread holds pre-bound plans for."""
        return set(getattr(self._local, "plans", {}))


class BoundPlan:
    """Bindings for running every graph at one batch size, outputs in reused buffers.

    Inputs are bound to the producing graph's buffers. The hot path calls ONNX Runtime's
    compiled ``run_with_iobinding`` directly with one reused ``RunOptions``: the Python wrapper
    re-checks WebGPU graph capture and builds default run options on every call, which at
    batch 1 cost several percent of a small graph's time. Builds whose wrapper lacks the
    compiled objects use the public API. A plan belongs to one thread and one batch size.
    """

    def __init__(self, graphs: list[GraphInfo], input_name: str, x: np.ndarray):
        self.input_name = input_name
        self.buffers: dict[str, np.ndarray] = {}
        values: dict[str, ort.OrtValue] = {}
        for _, _, outs in walk([g.inputs for g in graphs], {input_name: x}, lambda g, f: graphs[g].run(f)):
            for name, arr in outs.items():
                self.buffers[name] = np.empty_like(arr)
                values[name] = ort.OrtValue.ortvalue_from_numpy(self.buffers[name])
        self._run_options = ort.RunOptions()
        self._steps = []  # per graph: (run, binding, bind_image or None); run(binding, run_options) runs it
        for g in graphs:
            io = g.session.io_binding()
            for name in g.inputs:
                if name != input_name:
                    io.bind_ortvalue_input(name, values[name])
            for name in g.output_names:
                io.bind_ortvalue_output(name, values[name])
            self._steps.append(_fast_calls(g.session, io, input_name in g.inputs))
        self._logit_buffers = [[self.buffers[name] for name in g.logit_names] for g in graphs]
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
