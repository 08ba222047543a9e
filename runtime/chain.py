"""ExitChain: run a bundle's graphs in order and let every sample leave at its own exit."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from .accel import check_options, gather_providers, graph_providers
from .buckets import Buckets, LoadReport, make_buckets, warm_up
from .decision import ONE, exp_and_total, reaches, softmax  # noqa: F401  (softmax: re-exported)
from .graphs import GraphInfo, open_graphs, walk
from .manifest import Manifest, load_manifest
from .operating_points import OperatingPoint, load_points, resolve
from .placement import CPU, describe_row, placement_row, require_placement
from .plan import BoundPlan
from .preprocess import check_batch, preprocess
from .providers import DEVICE_PROVIDERS, is_plugin, provider_list, session_options
from .routing import Prediction, Results, StageRows, decide_exit  # noqa: F401  (decide_exit: re-exported)

#: Samples per graph run: predict and run_all cut larger arrays into chunks of this many,
#: so memory (ONNX Runtime's arena, cached tensors, bound buffers) does not grow with the
#: array. 128 keeps run_all on 4,096 CIFAR images under 300 MB with the default model at
#: the throughput of 256 (benchmarks/predict_memory.py).
DEFAULT_MAX_BATCH = 128


class ExitChain:
    """A loaded bundle: one ONNX Runtime session per graph, chained by tensor names.

    Thread-safe: calls keep their state on the stack and ONNX Runtime sessions may be run
    from several threads at once (with ``capture=True`` calls take turns: the buffers are fixed).
    """

    def __init__(self, manifest: Manifest, graphs: list[GraphInfo], provider: str,
                 points: dict[str, OperatingPoint], default_point: str | None):
        self.manifest = manifest
        self._graphs = graphs
        self.provider = provider
        self.operating_points = points
        self.default_operating_point = default_point
        self.preprocess_spec = manifest.preprocessing.spec
        self.input_name = manifest.input_name
        self.input_shape = manifest.preprocessing.sample_shape
        self.num_exits = manifest.num_exits
        self.class_names = None if manifest.class_names is None else list(manifest.class_names)
        self._resolved: dict = {}
        self._local = threading.local()  # per-thread BoundPlans, by batch size
        self._plannable = all(g.static_batch is None for g in graphs)
        self._router = None  # DeviceRouter when cached tensors stay on an accelerator
        self._buckets: Buckets | None = None  # batch sizes the graphs run at (None: as they come)
        self._fixed = None  # DevicePlan: fixed-address buffers per bucket (load(capture=True))
        self.load_report: LoadReport | None = None
        #: Per graph: nodes, count and share per provider, op types left on the CPU
        #: (see runtime/placement.py); empty counts where onnxruntime records nothing.
        self.placement: list[dict[str, Any]] = []
        self.max_batch = DEFAULT_MAX_BATCH  # samples per run; larger arrays go in chunks

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, bundle: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
             warmup: bool = True, provider_options: dict[str, Any] | None = None,
             spinning: bool = False, device_io: bool | None = None, buckets: Any = None,
             max_batch: int = DEFAULT_MAX_BATCH, capture: bool = False) -> ExitChain:
        """Validate the manifest, check every sha256, then create one session per graph.

        ``device_io`` (default: on for GPU providers) keeps cached feature maps in device
        memory between graphs (IOBinding) and gathers the rows that go on there; forcing it
        on with the CPU provider runs the same code path on host memory. ``max_batch``: the
        most samples one run of a graph sees; ``predict`` and ``run_all`` process larger
        arrays in chunks of this size, so peak memory does not grow with the array.

        ``buckets`` pads sub-batches to a few batch sizes (see ``runtime/buckets.py``):
        default on for GPU providers, off on the CPU; True, False, a largest batch or a list
        of sizes. ``warmup`` runs every graph at every bucket (cuDNN search and TensorRT
        engines happen at load time); ``chain.load_report`` says how long loading took.

        Plugin providers (``qnn``, ``openvino``, ``webgpu`` from their packages, see
        ``runtime/plugins.py``) are registered and selected per device. ``chain.placement``
        says which share of each graph's nodes each provider took; a graph of which the
        requested provider took no node is a ProviderError naming the reason, never a
        silent CPU run. A graph the bundle holds compiled for the provider (QNN's EPContext
        models) loads in that form.

        ``capture`` runs every graph through fixed-address plans (``runtime/device_plan.py``):
        buffers allocated once per bucket, the exit decided on the device, survivors gathered
        into the next bucket's buffers; on the CUDA provider each (graph, bucket) is captured
        as a CUDA graph at warm-up, and ``load_report.capture`` says what was captured and what
        kept a graph off CUDA graphs. On the CPU the same plans run uncaptured.
        """
        t_load = time.perf_counter()
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise InputError(f"max_batch={max_batch!r}: give a whole number >= 1 (samples per graph run)")
        manifest = load_manifest(bundle, verify=True)
        providers = provider_list(provider, provider_options)
        check_options(providers)
        full = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        policy = make_buckets(True if capture and buckets is None else buckets, full in DEVICE_PROVIDERS)
        if capture and policy is None:
            raise InputError("capture=True needs batch buckets (fixed shapes): drop buckets=False")
        plugin = is_plugin(full)

        def options(severity: int = 3):
            so = session_options(threads, spinning)
            so.log_severity_level = severity
            if plugin:
                from .plugins import select

                select(so, full, provider_options)
            return so

        def session_providers(entry):
            return None if plugin else graph_providers(providers, manifest, entry,
                                                       policy.warm_sizes() if policy else None)

        so = options()
        on_cuda = capture and full == "CUDAExecutionProvider"  # TensorRT: the same plans on device buffers, uncaptured
        stream = None
        if on_cuda:
            from . import device_plan

            stream = device_plan.cuda_stream()
            graphs = device_plan.open_capture_graphs(
                manifest, lambda e: device_plan.capture_providers(session_providers(e), stream[0]), session_providers, so)
        else:
            graphs = open_graphs(manifest, session_providers, so, compiled_for=full)
        placement = [placement_row(g.path, g.placement, full) for g in graphs]
        require_placement([r for g, r in zip(graphs, placement) if g.placement is not None], provider, full,
                          lambda path: _refusal(manifest, path, full, options, session_providers))
        points, default = load_points(manifest.root)
        chain = cls(manifest, graphs, provider, points, default)
        chain.placement = placement
        chain.max_batch = int(max_batch)
        if device_io is None:
            device_io = full in DEVICE_PROVIDERS and not capture
        if device_io and not capture:
            from .device import DeviceRouter

            gather = [CPU] if plugin else gather_providers(providers)
            chain._router = DeviceRouter(DEVICE_PROVIDERS.get(full, "cpu"), gather, session_options(threads, spinning))
        if policy is not None and graphs[0].static_batch is not None:
            if buckets:
                raise InputError(f"this bundle's graphs have a static batch of {graphs[0].static_batch}; "
                                 "buckets apply to dynamic-batch bundles: drop buckets=")
            policy = None
        chain._buckets = policy
        if capture:
            if graphs[0].static_batch is not None:
                raise InputError("capture=True needs a dynamic-batch bundle (this one has a static batch); "
                                 "export without --batch-size")
            from . import device_plan

            chain._fixed, report = device_plan.build(manifest, graphs, policy.warm_sizes(), full, providers, so,
                                                     capture=on_cuda, stream=stream)
            load_s = time.perf_counter() - t_load
            warm_s = chain._fixed.warm_up() if warmup else 0.0
            chain.load_report = LoadReport(load_s, warm_s, tuple(policy.warm_sizes()) if warmup else (), report)
            return chain
        load_s = time.perf_counter() - t_load
        sizes = (policy.warm_sizes() if policy else [graphs[0].static_batch or 1]) if warmup else []
        chain.load_report = LoadReport(load_s, warm_up(chain, sizes), tuple(sizes))
        return chain

    def placement_lines(self) -> list[str]:
        """One line per graph: the share of its nodes the chain's provider took, and what
        stays on the CPU (``stage0.onnx: 75/75 nodes on QNNExecutionProvider (100%)``)."""
        first = self._graphs[0].session.get_providers()[0]
        return [describe_row(r, first) if r["nodes"] else f"{r['graph']}: placement not recorded"
                for r in self.placement]

    @property
    def session_providers(self) -> list[list[str]]:
        """The providers each session actually got, in priority order."""
        return [g.session.get_providers() for g in self._graphs]

    @property
    def buckets(self) -> Buckets | None:
        """The batch-size policy the graphs run under (None: every sub-batch as it is)."""
        return self._buckets

    @property
    def graphs(self) -> list[GraphInfo]:
        """The loaded graphs, in order (see :class:`ranet_edge.runtime.graphs.GraphInfo`)."""
        return list(self._graphs)

    # ------------------------------------------------------------------ inputs
    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HxWx3 RGB images -> float32 NCHW batch, as the manifest says."""
        return preprocess(images, self.preprocess_spec)

    def check_input(self, x: Any) -> np.ndarray:
        """``x`` if it is a finite float32 (N, *input_shape) array with N >= 1, else InputError."""
        return check_batch(x, self.input_shape, self.max_batch)

    def resolve_thresholds(self, thresholds: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds, temperatures), each one value per exit; the last threshold is -inf.

        Values lie in [0, 1]; ``inf`` is also accepted and means "nobody leaves here" (what
        calibration stores for an exit the paper's procedure gives no share). See
        :func:`ranet_edge.runtime.operating_points.resolve`.
        """
        return resolve(thresholds, self.num_exits, self.operating_points, self.default_operating_point)

    # ------------------------------------------------------------------ running
    def _step(self, g: GraphInfo, env: dict) -> tuple[list[np.ndarray], dict]:
        """Run one graph on the tensors it names: (host logits in exit order, cached outputs)."""
        feeds = {name: env[name] for name in g.inputs}
        if self._router:
            return self._router.run(g, feeds)
        return g.step(feeds)

    def _plan(self, x: np.ndarray) -> BoundPlan | None:
        """This thread's pre-bound plan for x's batch size (CPU path, dynamic-batch graphs)."""
        if self._router is not None or not self._plannable:
            return None
        plans = getattr(self._local, "plans", None)
        if plans is None:
            plans = self._local.plans = {}
        plan = plans.get(x.shape[0])
        if plan is None:
            if len(plans) >= 4:  # keep a few batch sizes per thread
                plans.pop(next(iter(plans)))
            plan = plans[x.shape[0]] = BoundPlan(self._graphs, self.input_name, x)
        return plan

    def _chunks(self, n: int) -> list[slice]:
        return [slice(start, start + self.max_batch) for start in range(0, n, self.max_batch)]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits for every sample (anytime prediction), stage by stage, in chunks
        of at most ``max_batch`` samples."""
        x = self.check_input(x)
        if self._fixed is not None:
            return self._fixed.run_all(x)
        if x.shape[0] <= self.max_batch:
            return self._run_all(x)
        parts = [self._run_all(x[c]) for c in self._chunks(x.shape[0])]
        return [np.concatenate(col) for col in zip(*parts)]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        n = x.shape[0]
        if self._buckets is not None:  # padded rows repeat the last sample, dropped below
            x = x[self._buckets.pad(np.arange(n))]
        plan = self._plan(x)
        if plan is not None:
            out = plan.run_all(x)  # fresh copies
            return out if x.shape[0] == n else [z[:n] for z in out]
        router = self._router
        logits: list[np.ndarray] = []

        def run(g: int, feeds: dict) -> dict:
            host, cache = self._step(self._graphs[g], feeds)
            logits.extend(z[:n] for z in host)
            return cache

        for _ in walk([g.inputs for g in self._graphs], {self.input_name: router.upload(x) if router else x}, run):
            pass
        return logits

    def _thresholds_cached(self, thresholds: Any) -> tuple[np.ndarray, np.ndarray]:
        """resolve_thresholds, memoised for the hashable forms (a name, a value, a tuple/list)."""
        key = tuple(thresholds) if isinstance(thresholds, list) else thresholds
        try:
            hit = self._resolved.get(key)
        except TypeError:  # unhashable (an array): resolve every time
            return self.resolve_thresholds(thresholds)
        if hit is None:
            hit = self.resolve_thresholds(thresholds)
            if len(self._resolved) < 256:
                self._resolved[key] = hit
        return hit

    def predict(self, x: np.ndarray, thresholds: Any = None) -> Prediction:
        """Route each sample through the graphs until an exit is confident enough (in chunks
        of at most ``max_batch`` samples)."""
        x = self.check_input(x)
        thr, temps = self._thresholds_cached(thresholds)
        if self._fixed is not None:
            return self._fixed.predict(x, thr, temps)
        n = x.shape[0]
        bk = self._buckets  # with buckets, graphs run padded batches: row m onwards is padding
        if n == 1 and self._router is None and (bk is None or bk.size(1) == 1):
            return self._predict_one(x, thr, temps)
        if n <= self.max_batch:
            return self._predict_batch(x, thr, temps)
        parts = [self._predict_batch(x[c], thr, temps) for c in self._chunks(n)]
        return Prediction(np.concatenate([p.labels for p in parts]), np.concatenate([p.exits for p in parts]),
                          np.concatenate([p.confidences for p in parts]),
                          np.concatenate([p.probabilities for p in parts]))

    def _predict_batch(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray) -> Prediction:
        n = x.shape[0]
        out = Results(n)
        for decided in self._stages(x, thr, temps):
            out.fill(decided)
        return Prediction(out.labels, out.exits, out.conf, out.probs)

    def predict_stages(self, x: np.ndarray, thresholds: Any = None) -> Iterator[StageRows]:
        """predict() one graph at a time: after each graph, yield the samples it decided.

        Yields one :class:`StageRows` per graph run, in graph order (possibly with no rows),
        and stops after the graph that decides the last sample, so a caller can answer the
        samples that left early while later graphs still run. Rows are positions in ``x``;
        over the whole run every position appears exactly once, with the values
        ``predict(x, thresholds)`` gives it. Input and thresholds are checked at the call.
        """
        x = self.check_input(x)
        thr, temps = self._thresholds_cached(thresholds)
        return self._stages(x, thr, temps)

    def _stages(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray) -> Iterator[StageRows]:
        """The routing loop behind predict and predict_stages."""
        if self._fixed is not None:  # in chunks of the largest bucket; one call at a time on the
            top = self._fixed.plan.largest  # plan's buffers, so the stages are collected first
            with self._fixed.lock:
                parts = [StageRows(part.rows + start, part.labels, part.exits, part.confidences, part.probabilities)
                         for start in range(0, x.shape[0], top)
                         for part in self._fixed.stages(x[start:start + top], thr, temps)]
            yield from parts
            return
        rows = np.arange(x.shape[0])  # original positions of the samples still running
        num_classes = self.manifest.num_classes
        bk = self._buckets  # with buckets, graphs run padded batches: row m onwards is padding
        if bk is not None:
            x = x[bk.pad(rows)]
        router = self._router
        env = {self.input_name: router.upload(x) if router else x}
        for g in self._graphs:
            logits, cache = self._step(g, env)
            alive = None  # rows of this graph's batch that have not exited yet (None: all)
            m = len(rows)
            parts = []
            for k, z in zip(g.exits, logits):
                alive, part = decide_exit(z[:m], k, float(thr[k]), float(temps[k]), rows, alive)
                if part is not None:
                    parts.append(part)
            yield StageRows.concat(parts, num_classes)
            if alive is not None and not alive.any():
                return
            env = {nm: v for nm, v in env.items() if nm in g.keep_after}
            env.update(cache)
            if alive is not None:  # hand on only the rows of the samples that go on
                rows = rows[alive]
                keep = np.flatnonzero(alive)
                if bk is not None:
                    keep = bk.pad(keep)
                if router:
                    keep = router.upload(keep.astype(np.int64))
                    env = {nm: router.gather(v, keep) for nm, v in env.items()}
                else:
                    env = {nm: v[keep] for nm, v in env.items()}

    def _predict_one(self, x: np.ndarray, thr: np.ndarray, temps: np.ndarray) -> Prediction:
        """predict() for one sample: pre-bound buffers, no row bookkeeping, scalars."""
        plan = self._plan(x)
        env = {self.input_name: x}
        for i, g in enumerate(self._graphs):
            if plan is not None:
                logits, cache = plan.run_graph(i, x), {}
            else:
                logits, cache = self._step(g, env)
            for k, z in zip(g.exits, logits):
                e, total = exp_and_total(z[0], temps[k])
                if reaches(ONE / total, thr[k]):
                    p = e / total
                    label = int(p.argmax())
                    return Prediction(np.array([label]), np.array([k]), np.array([p[label]], np.float32), p[None])
            env = {nm: v for nm, v in env.items() if nm in g.keep_after}
            env.update(cache)
        raise AssertionError("the last exit accepts every sample")  # pragma: no cover


def _refusal(manifest: Manifest, path: str, full: str, options, providers) -> str:
    """Why ``full`` took no node of graph ``path``: the reasons it logs when the session is
    made again with a verbose log, and what to do about the usual cause."""
    from ranet_edge.doctor import captured_output

    from ._ort import ort

    entry = next(e for e in manifest.graphs if path in (e.path, e.compiled_path(full)))
    with captured_output() as log:
        try:
            ort.InferenceSession(str(manifest.root / path), options(0), providers=providers(entry))
        except Exception as exc:  # the refusal itself may be the reason
            print(f"REASON : {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}")
    from .placement import log_reasons

    said = log_reasons("".join(log)) or "it gave no reason in its log"
    convert = f"convert the bundle: ranet-edge convert {manifest.root} -o OUT --to qnn --data IMAGES"
    if manifest.batch_size is None and full == "QNNExecutionProvider":
        fix = f"the graphs have a dynamic batch; {convert}"
    elif full == "QNNExecutionProvider" and manifest.precision == "fp32":
        fix = f"the HTP runs quantized graphs; {convert}"
    else:
        fix = "run `ranet-edge doctor BUNDLE --provider ...`, or use --provider cpu"
    return f"{full} said: {said}; {fix}"
