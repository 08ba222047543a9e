"""Loading a bundle: check it, open one session per graph, pick the executor, warm up.

:func:`load` is the body of :meth:`ExitChain.load <ranet_edge.runtime.chain.ExitChain.load>`.
Which executor (``runtime/executors/``) runs the graphs is decided here, once:

- ``capture=True``: the captured executor (fixed-address buffers per bucket; CUDA graphs on
  the CUDA provider, the same buffers uncaptured elsewhere);
- ``device_io`` (default: on for GPU providers): the device executor (IOBinding, tensors stay
  in device memory, rows gathered there);
- otherwise the host executor (numpy arrays between graphs).

``max_batch`` means one thing everywhere: the most rows one graph run sees. With batch buckets
it is the largest bucket, so warm-up prepares every shape a call can meet and no call changes
the buckets.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from .accel import check_options, gather_providers, graph_providers
from .executors.buckets import Buckets, make_buckets
from .graphs import open_graphs
from .inputs import zeros_like_inputs
from .manifest import Manifest, load_manifest
from .operating_points import load_points
from .placement import CPU, placement_row, require_placement
from .providers import DEVICE_PROVIDERS, is_plugin, provider_list, session_options

#: Samples per graph run when neither ``max_batch`` nor buckets say otherwise: predict and
#: run_all cut larger arrays into chunks of this many, so memory (ONNX Runtime's arena, cached
#: tensors, bound buffers) does not grow with the array. 128 keeps run_all on 4,096 CIFAR
#: images under 300 MB with the default model at the throughput of 256
#: (benchmarks/predict_memory.py).
DEFAULT_MAX_BATCH = 128


@dataclass(frozen=True)
class LoadReport:
    """What loading a chain cost, in seconds."""

    load_s: float  # manifest and sha256 checks, one session per graph
    warmup_s: float  # every warm-up run (cuDNN search / engine builds happen here)
    warm_sizes: tuple[int, ...] = ()  # batch sizes every graph was run at during warm-up
    capture: Any = None  # CaptureReport of the captured executor (load(capture=True)), else None

    @property
    def total_s(self) -> float:
        """Loading and warm-up together."""
        return self.load_s + self.warmup_s


def batch_limit(max_batch: Any, policy: Buckets | None) -> int:
    """The chain's ``max_batch``: the largest bucket when buckets are on, else ``max_batch``
    (default :data:`DEFAULT_MAX_BATCH`).

    Raises:
        InputError: ``max_batch`` disagrees with the buckets.
    """
    if policy is None:
        return int(max_batch or DEFAULT_MAX_BATCH)
    if max_batch is not None and int(max_batch) != policy.largest:
        raise InputError(f"max_batch={max_batch} but the largest batch bucket is {policy.largest}; give one of "
                         "them (with buckets, max_batch is the largest bucket)")
    return policy.largest


def load(cls, bundle: str | os.PathLike, provider: str, threads: int | None, warmup: bool,
         provider_options: dict[str, Any] | None, spinning: bool, device_io: bool | None, buckets: Any,
         max_batch: int | None, capture: bool):
    """See :meth:`ExitChain.load <ranet_edge.runtime.chain.ExitChain.load>` (``cls``: the chain class).

    Raises:
        BundleError: a manifest, file or sha256 that does not check, or a graph ONNX Runtime cannot load.
        ProviderError: a provider that is not available or took no node of a graph.
        InputError: contradicting or malformed options.
    """
    t_load = time.perf_counter()
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer))
                                  or max_batch < 1):
        raise InputError(f"max_batch={max_batch!r}: give a whole number >= 1 (samples per graph run)")
    manifest = load_manifest(bundle, verify=True)
    providers = provider_list(provider, provider_options)
    check_options(providers)
    full = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    accelerator = full in DEVICE_PROVIDERS
    policy = make_buckets(True if capture and buckets is None else buckets, accelerator,
                          max_batch=int(max_batch or DEFAULT_MAX_BATCH))
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
        return None if plugin else graph_providers(providers, manifest, entry, policy.warm_sizes() if policy else None)

    so = options()
    on_cuda = capture and full == "CUDAExecutionProvider"  # TensorRT: the same buffers, uncaptured
    stream = None
    if on_cuda:
        from .executors import capture_check

        stream = capture_check.cuda_stream()
        graphs = capture_check.open_capture_graphs(
            manifest, lambda e: capture_check.capture_providers(session_providers(e), stream[0]), session_providers,
            so, full)
    else:
        graphs = open_graphs(manifest, session_providers, so, compiled_for=full)
    placement = [placement_row(g.path, g.placement, full) for g in graphs]
    require_placement([r for g, r in zip(graphs, placement) if g.placement is not None], provider, full,
                      lambda path: _refusal(manifest, path, full, options, session_providers))
    static = graphs[0].static_batch
    if policy is not None and static is not None:
        if capture:
            raise InputError("capture=True needs a dynamic-batch bundle (this one has a static batch); "
                             "export without --batch-size")
        if buckets:
            raise InputError(f"this bundle's graphs have a static batch of {static}; "
                             "buckets apply to dynamic-batch bundles: drop buckets=")
        policy = None
    limit = batch_limit(max_batch, policy)
    if device_io is None:
        device_io = accelerator and not capture
    report = None
    if capture:
        from .executors.captured import build

        if manifest.preprocessing is None:
            raise InputError("capture=True runs fixed buffers of one image input; this bundle takes named inputs "
                             "with dynamic axes: load it without capture")

        executor, report = build(manifest, graphs, policy.warm_sizes(), full, providers, so, capture=on_cuda,
                                 stream=stream)
    elif device_io:
        from .executors.device import DeviceExecutor

        gather = [CPU] if plugin else gather_providers(providers)
        executor = DeviceExecutor(graphs, manifest.input_name, policy, DEVICE_PROVIDERS.get(full, "cpu"), gather,
                                  session_options(threads, spinning))
    else:
        from .executors.host import HostExecutor

        executor = HostExecutor(graphs, manifest.input_name, policy)
    points, default = load_points(manifest.root)
    chain = cls(manifest, executor, provider, points, default, limit)
    chain.placement = placement
    load_s = time.perf_counter() - t_load
    if not warmup:
        chain.load_report = LoadReport(load_s, 0.0, (), report)
        return chain
    t0 = time.perf_counter()
    if capture:
        executor.warm_up()
        sizes = tuple(policy.warm_sizes())
    else:
        sizes = tuple(policy.warm_sizes() if policy else [static or 1])
        for b in sizes:
            chain.run_all(np.zeros((b, *chain.input_shape), np.float32) if manifest.preprocessing is not None
                          else zeros_like_inputs(manifest.inputs, b).arrays)
    if manifest.preprocessing is not None:  # named inputs (text): sizes vary, the times are not measured at load
        # deadlines' expected graph times, on this machine (runtime/deadline.py)
        chain.stage_times.measure(executor, chain.input_shape, tuple(dict.fromkeys((sizes[0], sizes[-1]))))
    chain.load_report = LoadReport(load_s, time.perf_counter() - t0, sizes, report)
    return chain


def _refusal(manifest: Manifest, path: str, full: str, options, providers) -> str:
    """Why ``full`` took no node of graph ``path``: the reasons it logs when the session is
    made again with a verbose log, and what to do about the usual cause."""
    from ._capture_output import captured_output
    from ._ort import ort
    from .placement import log_reasons

    entry = next(e for e in manifest.graphs if path in (e.path, e.compiled_path(full)))
    with captured_output() as log:
        try:
            ort.InferenceSession(str(manifest.root / path), options(0), providers=providers(entry))
        except Exception as exc:  # the refusal itself may be the reason
            print(f"REASON : {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}")
    said = log_reasons("".join(log)) or "it gave no reason in its log"
    convert = f"convert the bundle: ranet-edge convert {manifest.root} -o OUT --to qnn --data IMAGES"
    if manifest.batch_size is None and full == "QNNExecutionProvider":
        fix = f"the graphs have a dynamic batch; {convert}"
    elif full == "QNNExecutionProvider" and manifest.precision == "fp32":
        fix = f"the HTP runs quantized graphs; {convert}"
    else:
        fix = "run `ranet-edge doctor BUNDLE --provider ...`, or use --provider cpu"
    return f"{full} said: {said}; {fix}"
