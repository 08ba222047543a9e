"""The GPU check's sections for fixed-address plans and CUDA graphs (issue 23).

- ``capture``: per CIFAR bundle with a monolithic graph: captured against plain for the
  monolithic graph and the chain (``run_all``) at batch 1 and ``ctx.batch``; captured chain
  against captured monolithic; adaptive speed-up (``predict`` at the default operating point)
  measured against FLOP-predicted at batch 1, ``ctx.batch`` and ``ctx.max_batch``; routed
  throughput (steady batches and a workload of random batch sizes), captured against plain;
  what ``load_report.capture`` says was captured and why not.
- ``imagenet``: the same for the seeded ImageNet RANet (official flags) and the official
  ImageNet MSDNet, random weights and fixed-share thresholds, buckets up to ``ctx.batch``.

On the CPU provider (the dry run) "captured" means the same fixed-address plans run
uncaptured: the figures then say nothing about CUDA graphs, only that the code runs.
"""
from __future__ import annotations

import time
from functools import partial

import numpy as np
import onnxruntime as ort
import seeded
from sections import TOLERANCE, Ctx, compare_predictions, precision
from timing import _workload, monolithic, side_by_side

from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors.capture_check import capture_providers
from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.providers import provider_list, session_options


class CapturedModel:
    """One session (the monolithic graph) on fixed buffers per batch size, one gpu_graph_id
    each; ``run(x)`` uploads the image into its buffer, replays, and copies every output home."""

    def __init__(self, path: str, ctx: Ctx, batches: list[int], input_shape: tuple[int, ...]):
        self.device = "cuda" if ctx.on_cuda else "cpu"
        providers = provider_list(ctx.provider, ctx.options())
        self.captured = ctx.on_cuda
        self.session = ort.InferenceSession(path, session_options(None),
                                            providers=capture_providers(providers, None) if ctx.on_cuda else providers)
        self.input = self.session.get_inputs()[0].name
        self.plans = {}
        for i, b in enumerate(sorted(set(batches))):
            x = ort.OrtValue.ortvalue_from_shape_and_type([b, *input_shape], np.float32, self.device, 0)
            x.update_inplace(np.zeros((b, *input_shape), np.float32))
            io = self.session.io_binding()
            io.bind_ortvalue_input(self.input, x)
            outs = []
            for o in self.session.get_outputs():
                v = ort.OrtValue.ortvalue_from_shape_and_type([b, *o.shape[1:]], np.float32, self.device, 0)
                io.bind_ortvalue_output(o.name, v)
                outs.append(v)
            ro = ort.RunOptions()
            if self.captured:
                ro.add_run_config_entry("gpu_graph_id", str(i))
            self.plans[b] = (x, io, ro, outs)
        for b in self.plans:  # a regular run, the capture, a replay
            for _ in range(3 if self.captured else 1):
                self.run(np.zeros((b, *input_shape), np.float32))

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        buf, io, ro, outs = self.plans[len(x)]
        buf.update_inplace(x)
        self.session.run_with_iobinding(io, ro)
        return [o.numpy() for o in outs]


def _load_captured(ctx: Ctx, name: str, top: int) -> tuple[ExitChain, float]:
    t0 = time.perf_counter()
    chain = ExitChain.load(ctx.bundles[name], provider=ctx.provider, capture=True, buckets=top,
                           provider_options=ctx.options())
    return chain, time.perf_counter() - t0


def _report(chain: ExitChain) -> dict:
    r = chain.load_report
    return {"executor": chain.executor.kind, "load_s": r.load_s, "warmup_s": r.warmup_s, **r.capture.to_dict(),
            "blockers": r.capture.blockers[:40]}


def _predicted(chain: ExitChain, exits: np.ndarray) -> float:
    flops = np.asarray(chain.manifest.exit_costs("run_flops"), np.float64)
    counts = np.bincount(exits, minlength=chain.num_exits)
    return float(chain.manifest.exits[-1].flops) / float(counts @ flops / counts.sum())


def _adaptive(ctx: Ctx, chain: ExitChain, mono: CapturedModel, x_all: np.ndarray, batches: list[int],
              reps: int) -> dict:
    rows = {"operating_point": chain.default_operating_point}
    for b in batches:
        xb = x_all[np.resize(np.arange(len(x_all)), b)]
        res = chain.predict(xb)
        med = side_by_side({"adaptive": partial(chain.predict, xb), "monolithic": partial(mono.run, xb)},
                           reps, block=5, settle=1)
        pred = _predicted(chain, res.exits)
        meas = med["monolithic"] / med["adaptive"]
        rows[f"batch{b}"] = {"adaptive_ms": med["adaptive"], "monolithic_ms": med["monolithic"],
                             "measured_speedup": meas, "predicted_speedup": pred, "measured_over_predicted": meas / pred,
                             "exit_counts": np.bincount(res.exits, minlength=chain.num_exits).tolist()}
    return rows


def _logits_agreement(plain: ExitChain, cap: ExitChain, x: np.ndarray, on_cuda: bool, name: str) -> dict:
    """Every exit's logits of the captured chain against the plain device chain on ``x``: the
    same kernels on the CPU (exactly equal), within the logits tolerance on a GPU."""
    rel = max(float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))
              for a, b in zip(plain.run_all(x), cap.run_all(x)))
    return {"batch": len(x), "max_relative": rel, "tolerance": TOLERANCE[precision(name)] if on_cuda else 0.0}


def capture(ctx: Ctx) -> dict:
    out = {"captured_means": "CUDA graphs replayed" if ctx.on_cuda else
           "fixed-address plans run uncaptured (CPU dry run: no CUDA graphs)"}
    for name in ("default", "c1"):
        if name not in ctx.bundles:
            continue
        if ctx.left() < 20:
            out[name] = {"skipped": f"time budget ({ctx.left():.0f} s left)"}
            continue
        manifest = load_manifest(ctx.bundles[name], verify=True)
        if manifest.monolithic is None:
            out[name] = {"skipped": "bundle has no monolithic graph"}
            continue
        row: dict = {}
        cap, load_s = _load_captured(ctx, name, ctx.max_batch)
        row["capture_report"] = {**_report(cap), "load_and_warmup_s": load_s}
        shape = cap.input_shape
        mono_cap = CapturedModel(str(manifest.root / manifest.monolithic.path), ctx, [1, ctx.batch, ctx.max_batch], shape)
        mono_plain = monolithic(ctx, name)
        plain = ctx.chain(name, warmup=False)  # device-resident caches, buckets to max_batch
        reps = ctx.n(200, 10)
        for b in (1, ctx.batch):
            x = ctx.x(b)
            feed = {cap.input_name: x}
            med = side_by_side({"mono_plain": partial(mono_plain.run, None, feed), "mono_captured": partial(mono_cap.run, x),
                                "chain_plain": partial(plain.run_all, x), "chain_captured": partial(cap.run_all, x)},
                               reps if b == 1 else ctx.n(60, 5))
            row[f"batch{b}"] = {**{f"{k}_ms": v for k, v in med.items()},
                                "mono_plain_over_captured": med["mono_plain"] / med["mono_captured"],
                                "chain_plain_over_captured": med["chain_plain"] / med["chain_captured"],
                                "chain_over_mono_captured": med["chain_captured"] / med["mono_captured"],
                                "chain_over_mono_plain": med["chain_plain"] / med["mono_plain"]}
        row["run_all_vs_plain"] = _logits_agreement(plain, cap, ctx.x(ctx.max_batch), ctx.on_cuda, name)
        if cap.default_operating_point:
            row["adaptive"] = _adaptive(ctx, cap, mono_cap, ctx.x(), [1, ctx.batch, ctx.max_batch], ctx.n(40, 5))
            steady = {}
            for b in (ctx.batch, ctx.max_batch):
                xb = ctx.x(b)
                med = side_by_side({"captured": partial(cap.predict, xb), "plain": partial(plain.predict, xb),
                                    "mono_captured": partial(mono_cap.run, xb)}, ctx.n(30, 5), block=5, settle=1)
                steady[f"batch{b}_images_per_s"] = {k: 1e3 * b / v for k, v in med.items()}
                steady[f"batch{b}_agreement"] = compare_predictions(plain.predict(xb), cap.predict(xb))
            work = _workload(ctx)
            t = {}
            for kind, chain in (("plain", plain), ("captured", cap)):
                chain.predict(work[0])
                t0 = time.perf_counter()
                for xb in work:
                    chain.predict(xb)
                t[kind] = sum(len(xb) for xb in work) / (time.perf_counter() - t0)
            row["routed"] = {"steady": steady, "random_batches_images_per_s": t, "batches": len(work),
                             "captured_over_plain": t["captured"] / t["plain"]}
        out[name] = row
    return out


def imagenet(ctx: Ctx) -> dict:
    out = {}
    for name in seeded.SEEDED:
        if name not in ctx.bundles:
            out[name] = {"skipped": f"bundle missing: {ctx.missing.get(name, 'run benchmarks/gpu/prepare_bundles.py')}"}
            continue
        if ctx.left() < 30:
            out[name] = {"skipped": f"time budget ({ctx.left():.0f} s left)"}
            continue
        bundle = ctx.bundles[name]
        row = {"materialise_s": seeded.materialise(bundle, log=lambda m: None)}
        cap, load_s = _load_captured(ctx, name, ctx.batch)
        row["capture_report"] = {**_report(cap), "load_and_warmup_s": load_s}
        manifest = cap.manifest
        mono_cap = CapturedModel(str(manifest.root / manifest.monolithic.path), ctx, [1, ctx.batch], cap.input_shape)
        x_all = seeded.images(seeded.N_IMAGES, cap.input_shape)
        reps = ctx.n(30, 3)
        for b in (1, ctx.batch):
            x = x_all[np.resize(np.arange(len(x_all)), b)]
            med = side_by_side({"mono_captured": partial(mono_cap.run, x), "chain_captured": partial(cap.run_all, x)},
                               reps, block=5, settle=1)
            row[f"batch{b}"] = {**{f"{k}_ms": v for k, v in med.items()},
                                "chain_over_mono_captured": med["chain_captured"] / med["mono_captured"]}
        row["adaptive"] = _adaptive(ctx, cap, mono_cap, x_all, [1, ctx.batch], reps)
        row["flops"] = {"full_mflops": manifest.exits[-1].flops / 1e6, "exits": manifest.num_exits}
        out[name] = row
        del cap, mono_cap
    return out
