"""Latency benchmarks of a bundle: stages, chain against the monolithic graph, adaptive mode."""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import BundleError

from ._ort import ort  # onnxruntime, through the build check
from .chain import ExitChain
from .latency import measure_stages
from .providers import provider_list, session_options


@dataclass(frozen=True)
class BenchOptions:
    batch_size: int = 1
    warmup: int = 10
    iters: int = 100
    thresholds: object = None  # anything ExitChain.predict takes
    adaptive_images: int = 500  # images timed one by one in adaptive mode
    throughput_batch: int = 64


def machine_info(chain: ExitChain, threads: int | None) -> dict:
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
            "threads": threads or 1, "python": platform.python_version()}


def _monolithic(chain: ExitChain, threads: int | None) -> ort.InferenceSession | None:
    mono = chain.manifest.monolithic
    if mono is None:
        return None
    path = chain.manifest.root / mono.path  # load_manifest checked its path and sha256
    try:
        return ort.InferenceSession(str(path), session_options(threads),
                                    providers=provider_list(chain.provider))
    except Exception as exc:
        raise BundleError(f"cannot load {mono['path']} ({str(exc)[:120]}); re-export with --monolithic") from None


def _pct(samples: np.ndarray) -> dict:
    ms = np.asarray(samples) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean())}


def run_bench(chain: ExitChain, images: np.ndarray, opts: BenchOptions, threads: int | None = None,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Every figure of `ranet-edge bench`; ``images`` are uint8 NHWC real images."""
    x_all = chain.preprocess(images)
    n_b = opts.batch_size
    reps = np.resize(np.arange(len(x_all)), max(n_b, opts.throughput_batch))
    xb = x_all[reps[:n_b]]
    progress("stages")
    stages = measure_stages(chain, xb, opts.warmup, opts.iters)
    stage_pct = [_pct(s) for s in stages.samples]
    exit_ms = stages.exit_ms(chain)
    mono = _monolithic(chain, threads)
    progress("chain vs monolithic")
    chain_t, mono_t = np.empty(opts.iters), np.empty(opts.iters)
    mono_feed = {chain.input_name: xb}
    for _ in range(opts.warmup):
        chain.run_all(xb)
        if mono is not None:
            mono.run(None, mono_feed)
    block = 25  # side by side in blocks (after 5 untimed calls), so noise hits both alike
    for start in range(0, opts.iters, block):  # without one evicting the other's caches
        stop = min(start + block, opts.iters)
        for _ in range(5):
            chain.run_all(xb)
            if mono is not None:
                mono.run(None, mono_feed)
        for i in range(start, stop):
            t0 = time.perf_counter()
            chain.run_all(xb)
            chain_t[i] = time.perf_counter() - t0
        for i in range(start, stop):
            t0 = time.perf_counter()
            if mono is not None:
                mono.run(None, mono_feed)
            mono_t[i] = time.perf_counter() - t0
    result: dict = {
        "env": machine_info(chain, threads), "batch_size": n_b,
        "stage_ms": [p["p50"] for p in stage_pct], "stage_percentiles": stage_pct,
        "exit_ms": exit_ms, "chain_ms": _pct(chain_t)["p50"],
        "monolithic_ms": _pct(mono_t)["p50"] if mono is not None else None,
        "overhead_ratio": float(np.median(chain_t) / np.median(mono_t)) if mono is not None else None,
    }
    # adaptive mode: real images, one at a time, monolithic interleaved
    progress("adaptive")
    n_img = min(opts.adaptive_images, len(x_all))
    ad_t, mono1_t = np.empty(n_img), np.empty(n_img)
    exits = np.empty(n_img, np.int64)
    for i in range(min(opts.warmup, n_img)):
        chain.predict(x_all[i:i + 1], opts.thresholds)
    for i in range(n_img):
        xi = x_all[i:i + 1]
        t0 = time.perf_counter()
        exits[i] = chain.predict(xi, opts.thresholds).exits[0]
        t1 = time.perf_counter()
        if mono is not None:
            mono.run(None, {chain.input_name: xi})
        t2 = time.perf_counter()
        ad_t[i], mono1_t[i] = t1 - t0, t2 - t1
    flops = np.asarray(chain.manifest.exit_costs("run_flops"), np.float64)
    counts = np.bincount(exits, minlength=chain.num_exits)
    expected = float(counts @ flops / n_img)
    full = float(chain.manifest.exits[-1].flops)
    per_exit_cut = float(counts @ np.asarray(chain.manifest.exit_costs("flops"), np.float64) / n_img)
    result["adaptive"] = {
        "images": n_img, "mean_ms": float(ad_t.mean() * 1e3), "p99_ms": float(np.percentile(ad_t, 99) * 1e3),
        "exit_counts": counts.tolist(), "expected_flops": expected,
        "granularity": chain.manifest.granularity, "expected_flops_per_exit_cut": per_exit_cut,
        "predicted_speedup": full / expected,
        "monolithic_mean_ms": float(mono1_t.mean() * 1e3) if mono is not None else None,
        "measured_speedup": float(mono1_t.mean() / ad_t.mean()) if mono is not None else None,
    }
    # throughput at batch N with per-sample routing
    progress("throughput")
    nb = opts.throughput_batch
    xt = x_all[reps[:nb]]
    reps_t = max(3, opts.iters // 10)
    ct, mt = np.empty(reps_t), np.empty(reps_t)
    tc = np.empty(0, np.int64)
    for i in range(reps_t + 1):
        t0 = time.perf_counter()
        res = chain.predict(xt, opts.thresholds)
        t1 = time.perf_counter()
        if mono is not None:
            mono.run(None, {chain.input_name: xt})
        t2 = time.perf_counter()
        if i:
            ct[i - 1], mt[i - 1] = t1 - t0, t2 - t1
            tc = res.exits
    tcounts = np.bincount(tc, minlength=chain.num_exits)
    result["throughput"] = {
        "batch_size": nb, "chain_ips": float(nb / np.median(ct)),
        "monolithic_ips": float(nb / np.median(mt)) if mono is not None else None,
        "exit_counts": tcounts.tolist(),
        "predicted_speedup": full / float(tcounts @ flops / nb),
        "measured_speedup": float(np.median(mt) / np.median(ct)) if mono is not None else None,
    }
    return result
