"""The executor seam: what runs one graph of a bundle on a set of rows.

The routing loop (:meth:`ExitChain.predict_stages <ranet_edge.runtime.chain.ExitChain.predict_stages>`)
and the serving engine (``ranet_edge/serve/stage_engine.py``) drive graphs the same way:

1. ``env = executor.feed(x)``: the input rows, where the executor keeps tensors;
2. ``logits, env = executor.run(g, env)``: graph ``g`` on those rows; host logits of the real
   rows, in exit order, and what graph ``g + 1`` and later ones read;
3. the caller decides exits with :func:`ranet_edge.runtime.decision.decide` on those logits;
4. ``env = executor.take(env, keep)``: only the rows that go on (skipped when all do).

What differs between executors is where tensors live between graphs: host arrays
(:mod:`.host`, any provider), device memory bound with IOBinding (:mod:`.device`), or buffers
allocated once per batch bucket, captured as CUDA graphs (:mod:`.captured`). The loop never
sees which: no device word is on its path.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from ..graphs import GraphInfo
from ..inputs import NamedBatch
from .buckets import Buckets


class Env:
    """Rows on their way through the graphs, as one executor holds them (never changed once
    made: an executor's ``run`` and ``take`` make new ones).

    ``values`` maps each tensor that the next graph or a later one reads to the executor's
    value for it (a numpy array, an OrtValue on a device, ...). They hold ``rows`` real rows,
    then padding rows up to a batch bucket where the executor pads. ``after`` is the last graph
    run on them (-1: none). ``scratch`` is executor state the values live in (the host
    executor's pre-bound buffers); None when the values are the env's own. A plain class with
    slots, not a dataclass: one is made per graph run, and at batch 1 that cost shows.
    """

    __slots__ = ("values", "rows", "after", "scratch")

    def __init__(self, values: dict[str, Any], rows: int, after: int = -1, scratch: Any = None):
        self.values, self.rows, self.after, self.scratch = values, rows, after, scratch


class Executor:
    """Base of the three executors (see the module doc). Subclasses implement
    :meth:`feed`, :meth:`run` and :meth:`take`; :meth:`concat` where rows of several calls
    may share a graph run (the serving engine's queues).

    Attributes:
        kind: ``"host"``, ``"device"`` or ``"captured"``.
        exclusive: True when calls must take turns (:attr:`lock`): the buffers are the
            executor's, not the call's.
        graphs: the bundle's loaded graphs, in order.
        buckets: the batch sizes the graphs run at (None: every sub-batch as it is).
    """

    kind = "base"
    exclusive = False

    def __init__(self, graphs: Sequence[GraphInfo], input_name: str, buckets: Buckets | None):
        self.graphs = list(graphs)
        self.input_name = input_name
        self.buckets = buckets

    # ------------------------------------------------------------------ the seam
    def feed(self, x: np.ndarray | NamedBatch, scratch: bool = False) -> Env:
        """The rows of ``x`` (a checked float32 image batch, or a checked
        :class:`~ranet_edge.runtime.inputs.NamedBatch`, of at most the largest bucket) as graph 0
        reads them. ``scratch``: the caller runs this env to its end before it feeds again on
        this thread, so the executor may keep it in reused per-thread buffers."""
        raise NotImplementedError

    def run(self, g: int, env: Env) -> tuple[list[np.ndarray], Env]:
        """Run graph ``g`` on ``env``'s rows: (host float32 logits of the real rows, in the
        graph's exit order; the env graph ``g + 1`` reads). The logits may be views of the
        executor's buffers, valid until its next run on this thread: copy them to keep them."""
        raise NotImplementedError

    def run_every(self, env: Env) -> list[np.ndarray]:
        """Every graph on all of ``env``'s rows (anytime prediction, ``run_all``): every exit's
        logits, in exit order, copies the caller keeps. Executors with a cheaper way override it."""
        logits: list[np.ndarray] = []
        for g in range(len(self.graphs)):
            z, env = self.run(g, env)
            logits += [a.copy() for a in z]
        return logits

    def take(self, env: Env, keep: np.ndarray) -> Env:
        """Only the rows ``keep`` (sorted int positions among ``env``'s real rows) go on."""
        raise NotImplementedError

    def concat(self, envs: Sequence[Env]) -> Env:
        """The rows of several envs (all after the same graph) as one env.

        Raises:
            InputError: this executor's buffers are fixed (captured plans cannot merge calls).
        """
        raise InputError(f"the {self.kind} executor cannot merge rows of several calls; "
                         "load the chain without capture=True to serve it")

    def reset(self) -> None:
        """Forget cached bindings (after a graph's session was replaced)."""

    # ------------------------------------------------------------------ shared pieces
    def input_values(self, x: np.ndarray | NamedBatch) -> dict[str, np.ndarray]:
        """The network inputs of ``x`` by name: an image bundle's one array, or every named input."""
        return x.arrays if isinstance(x, NamedBatch) else {self.input_name: x}

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """Row indices ``rows`` extended to their bucket by repeating the last one."""
        return rows if self.buckets is None else self.buckets.pad(rows)

    def kept(self, g: int, env: Env, cache: dict[str, Any]) -> dict[str, Any]:
        """What graph ``g + 1`` and later ones read once graph ``g`` ran: the env's tensors
        they still need, and graph ``g``'s outputs ``cache``."""
        later = self.graphs[g].keep_after
        values = {name: v for name, v in env.values.items() if name in later}
        values.update(cache)
        return values
