"""ExitChain: run a bundle's graphs in order and let every sample leave at its own exit.

The routing loop (:meth:`ExitChain._route`) is the only one: every batch size (1 included),
every executor (host arrays, device memory, captured buffers) and the serving engine go
through the same pieces: the executor runs a graph (``runtime/executors/``), the exit rule
decides (:func:`ranet_edge.runtime.decision.decide`), and the rows that go on are handed to
the next graph. From ``predict`` to its result a reader passes through this module,
``preprocess.py`` (input checks), ``operating_points.py`` (thresholds), ``decision.py`` (the
rule), the executor, and ``results.py``.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from .anytime import Snapshot, snapshots
from .deadline import Budget, StageTimes, check_deadline, predict_within
from .decision import decide, softmax  # noqa: F401  (softmax: re-exported)
from .executors.base import Executor
from .executors.buckets import Buckets
from .exit_rules import cached, resolve, resolve_rule
from .graphs import GraphInfo
from .inputs import NamedBatch, check_inputs
from .loading import DEFAULT_MAX_BATCH, LoadReport, load  # noqa: F401  (DEFAULT_MAX_BATCH: re-exported)
from .manifest import Manifest
from .operating_points import OperatingPoint
from .placement import describe_row
from .preprocess import check_batch, preprocess
from .results import Prediction, Results, StageRows, exit_column, in_order, widen


class ExitChain:
    """A loaded bundle: one ONNX Runtime session per graph, chained by tensor names.

    Thread-safe: calls keep their state on the stack and ONNX Runtime sessions may be run
    from several threads at once (with ``capture=True`` calls take turns: the buffers are fixed).
    """

    def __init__(self, manifest: Manifest, executor: Executor, provider: str,
                 points: dict[str, OperatingPoint], default_point: str | None, max_batch: int = DEFAULT_MAX_BATCH):
        self.manifest = manifest
        self.executor = executor
        self.provider = provider
        self.operating_points = points
        self.default_operating_point = default_point
        pre = manifest.preprocessing  # None: a bundle of named, non-image inputs (see runtime/inputs.py)
        self.preprocess_spec = pre.spec if pre is not None else None
        self.input_name = manifest.input_name
        #: What the bundle takes: name, dtype, shape and dynamic axes of each input.
        self.inputs = manifest.inputs
        self.input_shape = pre.sample_shape if pre is not None else manifest.inputs[0].sample_shape
        self.num_exits = manifest.num_exits
        self.class_names = None if manifest.class_names is None else list(manifest.class_names)
        self.exit_classes = tuple(e.num_classes for e in manifest.exits)  # probabilities: the widest's columns
        self._width = max(self.exit_classes)
        #: The most samples one graph run sees; larger arrays go in chunks. Fixed at load.
        self.max_batch = int(max_batch)
        self._resolved: dict = {}
        self.load_report: LoadReport | None = None
        #: Per graph: nodes, count and share per provider, op types left on the CPU
        #: (see runtime/placement.py); empty counts where onnxruntime records nothing.
        self.placement: list[dict[str, Any]] = []
        #: What a deadline is kept by: a callable returning seconds (tests script it).
        self.clock = time.perf_counter
        #: Expected seconds per graph run, measured at load and refreshed by deadline calls
        #: (see runtime/deadline.py).
        self.stage_times = StageTimes(len(executor.graphs))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, bundle: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
             warmup: bool = True, provider_options: dict[str, Any] | None = None,
             spinning: bool = False, device_io: bool | None = None, buckets: Any = None,
             max_batch: int | None = None, capture: bool = False) -> ExitChain:
        """Validate the manifest, check every sha256, then create one session per graph.

        ``device_io`` (default: on for GPU providers) keeps cached feature maps in device
        memory between graphs (IOBinding) and gathers the rows that go on there; forcing it
        on with the CPU provider runs the same code path on host memory. ``max_batch``: the
        most samples one run of a graph sees (default 128, or the largest bucket);
        ``predict`` and ``run_all`` process larger arrays in chunks of this size, so peak
        memory does not grow with the array.

        ``buckets`` pads sub-batches to a few batch sizes (see ``runtime/executors/buckets.py``):
        default on for GPU providers, off on the CPU; True, False, a largest batch or a list
        of sizes. The largest bucket is ``max_batch``. ``warmup`` runs every graph at every
        bucket (cuDNN search and TensorRT engines happen at load time); ``chain.load_report``
        says how long loading took.

        Plugin providers (``qnn``, ``openvino``, ``webgpu`` from their packages, see
        ``runtime/plugins.py``) are registered and selected per device. ``chain.placement``
        says which share of each graph's nodes each provider took; a graph of which the
        requested provider took no node is a ProviderError naming the reason, never a
        silent CPU run. A graph the bundle holds compiled for the provider (QNN's EPContext
        models) loads in that form.

        ``capture`` runs every graph on buffers allocated once per bucket
        (``runtime/executors/captured.py``); on the CUDA provider each (graph, bucket) is
        captured as a CUDA graph at warm-up, and ``load_report.capture`` says what was captured
        and what kept a graph off CUDA graphs. On the CPU the same buffers run uncaptured.

        Raises:
            BundleError: a manifest, file or sha256 that does not check, or a graph ONNX Runtime
                cannot load (the message says what ONNX Runtime said).
            ProviderError: a provider that is not available here, or that took no node of a graph.
            InputError: malformed or contradicting options (``max_batch``, ``buckets``, ``capture``).
        """
        return load(cls, bundle, provider, threads, warmup, provider_options, spinning, device_io, buckets,
                    max_batch, capture)

    def placement_lines(self) -> list[str]:
        """One line per graph: the share of its nodes the chain's provider took, and what
        stays on the CPU (``stage0.onnx: 75/75 nodes on QNNExecutionProvider (100%)``)."""
        first = self.executor.graphs[0].session.get_providers()[0]
        return [describe_row(r, first) if r["nodes"] else f"{r['graph']}: placement not recorded"
                for r in self.placement]

    @property
    def session_providers(self) -> list[list[str]]:
        """The providers each session actually got, in priority order."""
        return [g.session.get_providers() for g in self.executor.graphs]

    @property
    def buckets(self) -> Buckets | None:
        """The batch sizes the graphs run at (None: every sub-batch as it is)."""
        return self.executor.buckets

    @property
    def graphs(self) -> list[GraphInfo]:
        """The loaded graphs, in order (see :class:`ranet_edge.runtime.graphs.GraphInfo`)."""
        return list(self.executor.graphs)

    # ------------------------------------------------------------------ inputs
    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HxWx3 RGB images -> float32 NCHW batch, as the manifest says.

        Raises:
            InputError: an image that is not uint8 HxWx3, or a bundle that takes no images.
        """
        if self.preprocess_spec is None:
            raise InputError("this bundle takes named inputs, not images ("
                             + ", ".join(f"{i.name}: {i.describe()}" for i in self.inputs) + "); pass them to predict")
        return preprocess(images, self.preprocess_spec)

    def check_input(self, x: Any) -> np.ndarray | NamedBatch:
        """An image bundle: ``x`` if it is a finite float32 (N, *input_shape) array with N >= 1.
        A bundle of named inputs: ``x`` (a mapping name -> array, or one array for a single
        input) checked against the manifest, as a :class:`~ranet_edge.runtime.inputs.NamedBatch`.

        Raises:
            InputError: another type, dtype or shape, NaN / infinite values, or (named inputs) a
                missing or unknown name; the message names the input and what was expected.
        """
        if self.preprocess_spec is None:
            return check_inputs(x, self.inputs, self.max_batch)
        return check_batch(x, self.input_shape, self.max_batch)

    def resolve_thresholds(self, thresholds: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds, temperatures) of the ``max_prob`` rule, one per exit (the last -inf; ``inf``:
        nobody leaves there), as :func:`~.exit_rules.resolve`; :meth:`resolve_rule` for every rule.

        Raises:
            CalibrationError: an unknown name, a point of another rule, or a value out of range.
        """
        return resolve(thresholds, self.num_exits, self.operating_points, self.default_operating_point)

    def resolve_rule(self, thresholds: Any = None, rule: str | None = None,
                     patience: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """(thresholds, temperatures, rule) of predict's arguments (:func:`~.exit_rules.resolve_rule`).

        Raises:
            CalibrationError: an unknown rule or name, a point of another rule, a bad ``patience``.
        """
        return resolve_rule(thresholds, self.num_exits, self.operating_points, self.default_operating_point,
                            rule, patience)

    def _thresholds_cached(self, thresholds: Any, rule: str | None = None, patience: Any = None) -> tuple:
        """:meth:`resolve_rule`, memoised (``exit_rules.cached``)."""
        return cached(self._resolved, thresholds, rule, patience, self.num_exits, self.operating_points,
                      self.default_operating_point)

    # ------------------------------------------------------------------ running
    def _chunks(self, n: int) -> list[int]:
        return list(range(0, n, self.max_batch))

    def run_all(self, x: Any) -> list[np.ndarray]:
        """Every exit's logits for every sample (anytime prediction), graph by graph, in chunks
        of at most ``max_batch`` samples.

        Raises:
            InputError: ``x`` is not what the bundle takes (see :meth:`check_input`).
        """
        x = self.check_input(x)
        ex = self.executor
        if len(x) <= self.max_batch and not ex.exclusive:  # one chunk
            return ex.run_every(ex.feed(x, scratch=True))
        parts = []
        with ex.lock if ex.exclusive else nullcontext():
            for start in self._chunks(len(x)):
                parts.append(ex.run_every(ex.feed(x[start:start + self.max_batch], scratch=True)))
        return parts[0] if len(parts) == 1 else [np.concatenate(col) for col in zip(*parts)]

    def predict(self, x: Any, thresholds: Any = None, deadline_ms: float | None = None, *,
                rule: str | None = None, patience: int | None = None) -> Prediction:
        """Route each sample through the graphs until its exit rule takes it (in chunks of at
        most ``max_batch`` samples).

        ``thresholds``: None (the bundle's default operating point), a stored point's name (its
        rule comes with it), one value for every exit, or one value per exit but the last.
        ``rule``: ``"max_prob"`` (default), ``"entropy"`` (max entropies) or ``"patience"``
        (``patience=t``: PABEE's rule), as :mod:`ranet_edge.runtime.decision` says.

        ``deadline_ms``: time for the whole call, from now, on :attr:`clock`. A graph whose
        expected time (:attr:`stage_times`) would overrun it is not started; the samples still
        running then leave at the deepest exit computed for them, and
        ``Prediction.deadline_cut`` marks them. Exit 0 is always computed, so a call may end
        after its deadline by graph 0's time. See ``runtime/deadline.py``.

        Raises:
            InputError: ``x`` is not what the bundle takes (see :meth:`check_input`), or a
                ``deadline_ms`` that is not a finite number > 0.
            CalibrationError: thresholds that do not resolve (an unknown name or rule, a point
                of another rule, a value out of range, a bad ``patience``).
        """
        if deadline_ms is not None:
            return predict_within(self, x, thresholds, deadline_ms, rule, patience)
        x = self.check_input(x)
        thr, temps, rule = self._thresholds_cached(thresholds, rule, patience)
        n = len(x)
        parts = self._route(x, 0, thr, temps, rule=rule) if n <= self.max_batch and not self.executor.exclusive \
            else self._stages(x, thr, temps, rule=rule)
        out = None
        for part in parts:
            if part is None:
                continue
            if out is None:
                if len(part.rows) == n and in_order(part.rows):  # every row at once (batch 1 mostly)
                    return Prediction(part.labels, part.exits, part.confidences, part.probabilities)
                out = Results(n)
            out.fill(part)
        return out.prediction()

    def anytime(self, x: Any, thresholds: Any = None, deadline_ms: float | None = None, *,
                rule: str | None = None, patience: int | None = None) -> Iterator[Snapshot]:
        """predict() as answers that refine: after each graph run, yield a
        :class:`~ranet_edge.runtime.anytime.Snapshot` of every sample's answer so far (the
        running samples' label and confidence at this graph's exit) and the mask of answers
        that are final. The last snapshot's answers are ``predict(x, thresholds, deadline_ms)``'s.
        With ``deadline_ms``, a deadline cut adds one snapshot (no graph run) marking the
        samples it stopped. Input, thresholds and deadline are checked at the call; the
        deadline counts from the call.

        Raises:
            InputError: ``x`` is not what the bundle takes (see :meth:`check_input`), or a bad ``deadline_ms``.
            CalibrationError: thresholds that do not resolve.
        """
        budget = None if deadline_ms is None else Budget(check_deadline(deadline_ms), self.clock, self.stage_times)
        thr, temps, rule = self._thresholds_cached(thresholds, rule, patience)
        return snapshots(self, self.check_input(x), thr, temps, budget, rule)

    def predict_stages(self, x: Any, thresholds: Any = None, *, rule: str | None = None,
                       patience: int | None = None) -> Iterator[StageRows]:
        """predict() one graph at a time: after each graph, yield the samples it decided.

        Yields one :class:`StageRows` per graph run, in graph order (possibly with no rows),
        per chunk of ``max_batch`` samples, and stops after the graph that decides the last
        sample, so a caller can answer the samples that left early while later graphs still
        run. Rows are positions in ``x``; over the whole run every position appears exactly
        once, with the values ``predict(x, thresholds, rule=, patience=)`` gives it. Input and
        thresholds are checked at the call.

        Raises:
            InputError: ``x`` is not what the bundle takes (see :meth:`check_input`).
            CalibrationError: thresholds that do not resolve.
        """
        empty = StageRows.concat([], self._width)
        thr, temps, rule = self._thresholds_cached(thresholds, rule, patience)
        return (empty if part is None else part for part in self._stages(self.check_input(x), thr, temps, rule=rule))

    def _stages(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray, budget: Budget | None = None,
                watch: Any = None, rule: str = "max_prob") -> Iterator[StageRows | None]:
        """The routing loop over every chunk of ``x`` (None: a graph run that decided nobody)."""
        if self.executor.exclusive:  # calls take turns on the executor's buffers: run it all now
            with self.executor.lock:
                return iter([part for start in self._chunks(len(x))
                             for part in self._route(x, start, thr, temps, budget, watch, rule)])
        return (part for start in self._chunks(len(x)) for part in self._route(x, start, thr, temps, budget, watch, rule))

    def _route(self, x: np.ndarray, start: int, thr: np.ndarray, temps: np.ndarray, budget: Budget | None = None,
               watch: Any = None, rule: str = "max_prob") -> Iterator[StageRows | None]:
        """The routing loop: rows ``start .. start + max_batch`` of ``x`` through the graphs,
        each row leaving at the first exit whose rule takes it. Yields, per graph run, the rows
        it decided (None when it decided none).

        ``budget`` (a deadline call): before graph ``g > 0`` it may stop the rows still running;
        they are yielded once more, cut at the last exit of graph ``g - 1`` (no graph run).
        ``watch(g, rows, logits)`` sees every graph run's logits before its rows are decided
        (``anytime``). ``patience`` carries each row's ``decision.Streak``, cut to the rows that go on."""
        ex = self.executor
        chunk = x[start:start + self.max_batch]
        n = len(chunk)
        env = ex.feed(chunk, scratch=n == 1)
        rows = np.arange(start, start + n)  # input positions of the rows still running
        last = None  # with a budget: the running rows' logits at the deepest exit computed
        state = None  # the patience rule's per-row streak
        for g, graph in enumerate(ex.graphs):
            if budget is not None:
                if g and not budget.allows(g, len(rows)):
                    k = ex.graphs[g - 1].exits[-1]
                    yield widen(budget.cut(rows, last, k, temps[k]), self._width)
                    return
                budget.started()
            logits, env = ex.run(g, env)
            if budget is not None:
                budget.ran(g, len(rows))
                last = logits[-1]
            if watch is not None:
                watch(g, rows, logits)
            alive = None  # rows of this graph's batch that have not exited yet (None: all)
            parts = []
            for k, z in zip(graph.exits, logits):
                d = decide(z, thr[k], temps[k], alive, rule, state)
                state = d.state
                if d.every:  # every row still running leaves here
                    yield widen(StageRows(rows, d.labels, exit_column(k, len(rows)), d.confidences, d.probabilities),
                                self._width)
                    return
                if d.any:
                    parts.append(widen(StageRows(rows[d.take], d.labels, exit_column(k, len(d.labels)),
                                                 d.confidences, d.probabilities), self._width))
                    alive = ~d.take if alive is None else alive & ~d.take
            yield StageRows.concat(parts, self._width) if parts else None
            if alive is None:
                continue
            if not alive.any():
                return
            keep = np.flatnonzero(alive)  # hand on only the rows of the samples that go on
            rows = rows[keep]
            if last is not None:
                last = last[keep]
            env = ex.take(env, keep)
            state = None if state is None else state.take(keep)

