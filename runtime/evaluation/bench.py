"""Latency benchmarks of a bundle: stages, chain against the monolithic graph, adaptive mode.

Every figure of ``ranet-edge bench`` (:func:`run_bench`); :func:`ranet_edge.tasks.bench` loads
the bundle and the images and checks the options first.
"""
from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import BundleError

from .._ort import ort  # onnxruntime, through the build check
from ..chain import ExitChain
from ..providers import open_session, session_options
from .latency import measure_latency, timed_passes
from .timing import CaseStats, interleaved

__all__ = [
    "BenchOptions", "machine_info", "run_bench",
]


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` measures and how long (``ranet-edge bench``'s options)."""

    batch_size: int = 1  # batch of the stage and chain timings (--batch-size)
    warmup: int = 10  # untimed rounds before the stage timings and adaptive mode (--warmup)
    iters: int = 100  # timed calls of each stage case (--iters); throughput gets a tenth, at least 3
    thresholds: object = None  # anything ExitChain.predict takes (--thresholds, --operating-point)
    adaptive_images: int = 500  # images timed one by one in adaptive mode (--images)
    throughput_batch: int = 64  # batch of the throughput figure, chain against monolithic


def machine_info(chain: ExitChain, threads: int | None) -> dict:
    """Where the figures were measured: the CPU model (from /proc/cpuinfo on Linux), cores,
    onnxruntime version, the chain's provider, its sessions' providers and node placement,
    the intra-op threads and the Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "provider": chain.provider, "session_providers": chain.session_providers,
            "placement": chain.placement,
            "threads": threads or 1, "python": platform.python_version()}


def _monolithic(chain: ExitChain, threads: int | None) -> ort.InferenceSession | None:
    mono = chain.manifest.monolithic
    if mono is None:
        return None
    path = chain.manifest.root / mono.path  # load_manifest checked its path and sha256
    try:
        return open_session(str(path), session_options(threads), chain.provider)
    except Exception as exc:
        raise BundleError(f"cannot load {mono.path} ({str(exc)[:120]}); re-export with --monolithic") from exc


def run_bench(chain: ExitChain, images: np.ndarray, opts: BenchOptions, threads: int | None = None,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Every figure of `ranet-edge bench`; ``images`` are uint8 NHWC real images.

    Every time comes from :func:`ranet_edge.runtime.evaluation.timing.interleaved`: the stages, the
    runs up to each exit, the full chain and the monolithic graph in one measurement
    (:func:`~.latency.measure_latency`, ``opts.iters`` calls each in settled blocks),
    adaptive mode as a timed pass of ``predict`` over the images beside one of the
    monolithic graph, and throughput at batch ``opts.throughput_batch`` side by side.
    Medians and percentiles leave out the calls another process preempted.

    Returns:
        The JSON that ``bench --json`` writes, with ``env`` (:func:`machine_info`),
            per-graph ``stage_ms`` and ``stage_percentiles``, ``exit_ms``, ``chain_ms``
            against ``monolithic_ms`` (None without a monolithic graph) and their
            ``overhead_ratio``, the whole ``latency`` measurement, and the ``adaptive`` and
            ``throughput`` sections.

    Raises:
        BundleError: when the bundle's monolithic graph cannot be loaded.
        InputError: when ``images`` are not uint8 RGB.
    """
    x_all = chain.preprocess(images)
    n_b = opts.batch_size
    reps = np.resize(np.arange(len(x_all)), max(n_b, opts.throughput_batch))
    xb = x_all[reps[:n_b]]
    mono = _monolithic(chain, threads)
    progress("stages, chain vs monolithic")
    refs = {"monolithic": lambda: mono.run(None, {chain.input_name: xb})} if mono is not None else {}
    lat = measure_latency(chain, xb, repeats=opts.iters, warmup=opts.warmup, block=25, settle=5, stages=True,
                          references=refs)
    chain_ms = lat.references["chain"].median_ms
    mono_ms = lat.references["monolithic"].median_ms if mono is not None else None
    result: dict = {
        "env": machine_info(chain, threads), "batch_size": n_b,
        "stage_ms": lat.stage_ms(), "stage_percentiles": [_pct(s) for s in lat.stages],
        "exit_ms": lat.exit_ms(), "chain_ms": chain_ms, "monolithic_ms": mono_ms,
        "overhead_ratio": chain_ms / mono_ms if mono is not None else None,
        "latency": lat.to_dict(),
    }
    # adaptive mode: real images, one at a time, a pass of the monolithic graph beside it
    progress("adaptive")
    n_img = min(opts.adaptive_images, len(x_all))
    for i in range(min(opts.warmup, n_img)):
        chain.predict(x_all[i:i + 1], opts.thresholds)
    run = timed_passes(chain, x_all[:n_img], {"adaptive": opts.thresholds})["adaptive"]
    mono1 = None
    if mono is not None:
        feeds = [{chain.input_name: x_all[i:i + 1]} for i in range(n_img)]
        it = iter(feeds * 2)
        t = interleaved({"monolithic": lambda: mono.run(None, next(it))}, n_img, warmup=min(opts.warmup, n_img),
                        block=n_img, settle=0)
        mono1 = t.median_ms("monolithic")
    exits = run.exits
    flops = np.asarray(chain.manifest.exit_costs("run_flops"), np.float64)
    counts = np.bincount(exits, minlength=chain.num_exits)
    expected = float(counts @ flops / n_img)
    full = float(chain.manifest.exits[-1].flops)
    per_exit_cut = float(counts @ np.asarray(chain.manifest.exit_costs("flops"), np.float64) / n_img)
    result["adaptive"] = {
        "images": n_img, "mean_ms": run.ms_per_image, "wall_mean_ms": run.wall_ms_per_image,
        "p99_ms": run.p99_ms, "preempted": run.preempted,
        "exit_counts": counts.tolist(), "expected_flops": expected, "expected_ms": lat.expected_ms(counts) if n_b == 1 else None,
        "granularity": chain.manifest.data["granularity"], "expected_flops_per_exit_cut": per_exit_cut,
        "predicted_speedup": full / expected,
        "monolithic_mean_ms": mono1,
        "measured_speedup": mono1 / run.ms_per_image if mono1 is not None else None,
    }
    # throughput at batch N with per-sample routing
    progress("throughput")
    nb = opts.throughput_batch
    xt = x_all[reps[:nb]]
    tcounts = np.bincount(chain.predict(xt, opts.thresholds).exits, minlength=chain.num_exits)
    cases = {"chain": lambda: chain.predict(xt, opts.thresholds)}
    if mono is not None:
        cases["monolithic"] = lambda: mono.run(None, {chain.input_name: xt})
    reps_t = max(3, opts.iters // 10)
    t = interleaved(cases, reps_t, warmup=1, block=reps_t, settle=0)
    result["throughput"] = {
        "batch_size": nb, "chain_ips": 1e3 * nb / t.median_ms("chain"),
        "monolithic_ips": 1e3 * nb / t.median_ms("monolithic") if mono is not None else None,
        "exit_counts": tcounts.tolist(),
        "predicted_speedup": full / float(tcounts @ flops / nb),
        "measured_speedup": t.median_ms("monolithic") / t.median_ms("chain") if mono is not None else None,
    }
    return result


def _pct(s: CaseStats) -> dict:
    return {"p50": s.median_ms, "p90": s.p90_ms, "p99": s.p99_ms, "spread": s.spread_ms, "preempted": s.preempted}
