"""The timed sections of the GPU check. Every comparison is measured side by side in one
process (blocks of calls per side in turn), never against a number from another run."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import onnxruntime as ort
from sections import Ctx, compare_predictions

from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors.buckets import Buckets
from ranet_edge.runtime.manifest import load_manifest
from ranet_edge.runtime.providers import provider_list, session_options

CUDNN_MODES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def side_by_side(fns: dict[str, Callable], repeats: int, block: int = 10, settle: int = 2) -> dict[str, float]:
    """Median ms of each function, timed in blocks of ``block`` calls per function in turn."""
    for fn in fns.values():
        fn()
    out = {k: np.empty(repeats) for k in fns}
    for start in range(0, repeats, block):
        for k, fn in fns.items():
            for _ in range(settle):
                fn()
            for i in range(start, min(start + block, repeats)):
                t0 = time.perf_counter()
                fn()
                out[k][i] = time.perf_counter() - t0
    return {k: 1e3 * float(np.median(v)) for k, v in out.items()}


def monolithic(ctx: Ctx, name: str) -> ort.InferenceSession | None:
    manifest = load_manifest(ctx.bundles[name], verify=True)
    mono = manifest.monolithic
    if mono is None:
        return None
    return ort.InferenceSession(str(manifest.root / mono.path), session_options(None),
                                providers=provider_list(ctx.provider, ctx.options()))


def stages(ctx: Ctx) -> dict:
    """p50 ms of each graph on the chain's executor (the device executor: cached inputs already
    on the device, cached outputs left there, logits to the host), graphs interleaved, batch 1
    and ``ctx.batch`` (64). Each graph is timed on the env the one before it handed on."""
    out = {}
    for name in ctx.cifar:
        chain = ctx.chain(name, warmup=False)
        ex = chain.executor  # the seam every predict goes through (benchmark code may drive it)
        out[name] = {}
        for batch in (1, ctx.batch):
            env = ex.feed(ctx.x(batch))
            envs = []
            for g in range(len(ex.graphs)):
                envs.append(env)
                env = ex.run(g, env)[1]
            reps = ctx.n(200 if batch == 1 else 50, 10)
            samples = np.empty((reps, len(envs)))
            for i in range(reps + 3):
                for g, e in enumerate(envs):
                    t0 = time.perf_counter()
                    ex.run(g, e)
                    if i >= 3:
                        samples[i - 3, g] = time.perf_counter() - t0
            out[name][f"batch{batch}_p50_ms"] = [1e3 * float(v) for v in np.median(samples, axis=0)]
    return out


def chain_vs_monolithic(ctx: Ctx) -> dict:
    """run_all (every exit, stage by stage, device path) against the monolithic graph."""
    out = {}
    for name in ctx.cifar:
        mono = monolithic(ctx, name)
        if mono is None:
            out[name] = {"skipped": "bundle has no monolithic graph (export with --monolithic)"}
            continue
        chain = ctx.chain(name, warmup=False)
        out[name] = {}
        for batch in (1, ctx.batch):
            x = ctx.x(batch)
            feed = {chain.input_name: x}
            med = side_by_side({"chain": partial(chain.run_all, x), "monolithic": partial(mono.run, None, feed)},
                               ctx.n(300 if batch == 1 else 60, 20))
            out[name][f"batch{batch}"] = {"chain_ms": med["chain"], "monolithic_ms": med["monolithic"],
                                          "ratio": med["chain"] / med["monolithic"]}
    return out


def device_vs_host(ctx: Ctx) -> dict:
    """Same provider, same buckets: cached maps kept on the device (IOBinding, on-device
    Gather) against every map copied to the host and back between graphs."""
    out = {}
    for name in ctx.cifar:
        dev, host = ctx.chain(name, warmup=False), ctx.chain(name, device_io=False, warmup=False)
        row = {}
        for batch in (1, ctx.batch):
            x = ctx.x(batch)
            med = side_by_side({"device": partial(dev.run_all, x), "host": partial(host.run_all, x)},
                               ctx.n(200 if batch == 1 else 40, 10))
            row[f"run_all_batch{batch}"] = {**{f"{k}_ms": v for k, v in med.items()},
                                            "host_over_device": med["host"] / med["device"]}
        if dev.default_operating_point:
            x = ctx.x(ctx.batch)
            med = side_by_side({"device": partial(dev.predict, x), "host": partial(host.predict, x)}, ctx.n(40, 10))
            row[f"predict_batch{ctx.batch}"] = {**{f"{k}_ms": v for k, v in med.items()},
                                      "host_over_device": med["host"] / med["device"]}
        out[name] = row
    return out


def adaptive(ctx: Ctx) -> dict:
    """Early exit at the bundle's default operating point against the monolithic graph:
    measured speed-up over the FLOP-predicted one at batch 1, ``ctx.batch`` and ``ctx.max_batch`` (64 and 256)."""
    out = {}
    for name in ("default", "default-fp16"):
        if name not in ctx.bundles:
            continue
        chain, mono = ctx.chain(name), monolithic(ctx, name)
        flops = np.asarray(chain.manifest.exit_costs("run_flops"), np.float64)
        full = float(chain.manifest.exits[-1].flops)
        x_all = ctx.x()
        rows = {"operating_point": chain.default_operating_point}
        for batch in (1, ctx.batch, ctx.max_batch):
            if batch == 1:
                n = ctx.n(300, 30)
                t_a, t_m, exits = np.empty(n), np.empty(n), np.empty(n, np.int64)
                for i in range(n):
                    xi = x_all[i:i + 1]
                    t0 = time.perf_counter()
                    exits[i] = chain.predict(xi).exits[0]
                    t1 = time.perf_counter()
                    mono.run(None, {chain.input_name: xi})
                    t_m[i], t_a[i] = time.perf_counter() - t1, t1 - t0
                ms_a, ms_m = 1e3 * float(np.median(t_a)), 1e3 * float(np.median(t_m))
                counts = np.bincount(exits, minlength=chain.num_exits)
            else:
                xb = x_all[np.resize(np.arange(len(x_all)), batch)]
                res = chain.predict(xb)
                counts = np.bincount(res.exits, minlength=chain.num_exits)
                med = side_by_side({"adaptive": partial(chain.predict, xb),
                                    "monolithic": partial(mono.run, None, {chain.input_name: xb})},
                                   ctx.n(40, 5), block=5, settle=1)
                ms_a, ms_m = med["adaptive"] / batch, med["monolithic"] / batch
            predicted = full / float(counts @ flops / counts.sum())
            rows[f"batch{batch}"] = {"adaptive_ms_per_image": ms_a, "monolithic_ms_per_image": ms_m,
                                     "measured_speedup": ms_m / ms_a, "predicted_speedup": predicted,
                                     "measured_over_predicted": ms_m / ms_a / predicted,
                                     "exit_counts": counts.tolist()}
        out[name] = rows
    return out


def padding_cost(chain: ExitChain, exits: np.ndarray) -> dict:
    """FLOPs the graphs run for one routed batch whose samples left at ``exits``, bucketed
    against unbucketed (a property of the routing, not of the machine)."""
    run = np.asarray(chain.manifest.exit_costs("run_flops"), np.float64)
    last = [g.exits[-1] for g in chain.graphs]
    stage = np.diff(np.r_[0.0, run[last]])  # FLOPs per sample of each graph
    rows = [int((exits >= g.exits[0]).sum()) for g in chain.graphs]  # samples reaching each graph
    policy = chain.buckets or Buckets(max_batch=len(exits))
    padded = [policy.size(r) if r else 0 for r in rows]
    return {"rows_per_graph": rows, "padded_rows_per_graph": padded,
            "flops_ratio": float(np.dot(padded, stage) / np.dot(rows, stage))}


def _workload(ctx: Ctx, seed: int = 0) -> list[np.ndarray]:
    """Random routed batches: sizes 1..max_batch, random shipped images."""
    rng = np.random.default_rng(seed)
    x_all = ctx.x()
    sizes = rng.integers(1, ctx.max_batch + 1, ctx.n(24, 12))
    return [x_all[rng.integers(0, len(x_all), s)] for s in sizes]


def routed(ctx: Ctx) -> tuple[dict, dict]:
    """(routed throughput, shapes seen): steady images/s bucketed, unbucketed and monolithic;
    then a fresh chain of each kind runs a workload of random batch sizes twice (the first pass
    meets every new shape), counting the input shapes each graph receives at its session."""
    name = "default"
    mono = monolithic(ctx, name)
    bucketed, plain = ctx.chain(name), ctx.chain(name, buckets=False)
    steady = {}
    for batch in (ctx.batch, ctx.max_batch):
        xb = ctx.x(batch)
        med = side_by_side({"bucketed": partial(bucketed.predict, xb), "unbucketed": partial(plain.predict, xb),
                            "monolithic": partial(mono.run, None, {bucketed.input_name: xb})},
                           ctx.n(30, 5), block=5, settle=1)
        steady[f"batch{batch}_images_per_s"] = {k: 1e3 * batch / v for k, v in med.items()}
        steady[f"batch{batch}_padding"] = padding_cost(bucketed, bucketed.predict(xb).exits)
    work = _workload(ctx)
    shape_log = _shape_log()
    fresh, logs, preds, chains = {}, {}, {}, {}
    for kind, spec in (("bucketed", None), ("unbucketed", False)):
        t0 = time.perf_counter()
        chain = chains[kind] = ctx.chain(name, buckets=spec, fresh=True)
        t_load = time.perf_counter() - t0
        logs[kind] = shape_log.attach(chain)
        passes = []
        for _ in range(2):
            t0 = time.perf_counter()
            preds[kind] = [chain.predict(x) for x in work]
            passes.append(time.perf_counter() - t0)
        fresh[kind] = {"load_and_warmup_s": t_load, "first_pass_s": passes[0], "second_pass_s": passes[1],
                       "images": int(sum(len(x) for x in work)), "batches": len(work)}
    agree = [compare_predictions(p, q) for p, q in zip(preds["unbucketed"], preds["bucketed"])]
    routed_out = {"steady": steady, "fresh_workload": fresh, "bucketed_vs_unbucketed": {
        "identical": all(a["identical"] for a in agree), "exits_equal": min(a["exits_equal"] for a in agree),
        "labels_equal": min(a["labels_equal"] for a in agree),
        "max_probability_diff": max(a["max_probability_diff"] for a in agree)}}
    bound = chains["bucketed"].buckets.bound()  # its largest batch: max_batch (the workload stays below)
    shapes = {kind: {"distinct_per_graph": log.distinct(), "batch_sizes_per_graph": log.batch_sizes()}
              for kind, log in logs.items()}
    shapes["bound_per_graph"] = bound
    shapes["batch_sizes_in_workload"] = sorted(len(x) for x in work)
    shapes["bounded"] = max(shapes["bucketed"]["distinct_per_graph"]) <= bound
    return routed_out, shapes


def _shape_log():
    """tests/shape_log.py's ShapeLog: it patches a chain's sessions, so it lives with the tests."""
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[2] / "tests"
    if str(tests) not in sys.path:
        sys.path.append(str(tests))
    from shape_log import ShapeLog

    return ShapeLog


def load_warmup(ctx: Ctx) -> tuple[dict, dict]:
    """(load + warm-up with and without buckets, cuDNN search modes compared)."""
    def report(chain: ExitChain) -> dict:
        r = chain.load_report
        return {"load_s": r.load_s, "warmup_s": r.warmup_s, "total_s": r.total_s, "warm_sizes": list(r.warm_sizes)}

    out = {}
    for name in ("default", "c1"):
        if name in ctx.bundles:
            out[name] = {"buckets": report(ctx.chain(name, fresh=True)),
                         "no_buckets": report(ctx.chain(name, buckets=False, fresh=True))}
    if ctx.provider != "cuda":
        return out, {"skipped": f"cuDNN search modes apply to the CUDA provider, not {ctx.provider}"}
    modes = {}
    xb, xmax = ctx.x(ctx.batch), ctx.x(ctx.max_batch)
    for mode in CUDNN_MODES:
        chain = ctx.chain("default", cudnn=mode, fresh=True)
        med = side_by_side({"batch": partial(chain.predict, xb), "bmax": partial(chain.predict, xmax),
                            "run_all_b1": partial(chain.run_all, xb[:1])}, ctx.n(30, 5), block=5, settle=1)
        modes[mode] = {**report(chain), **{f"{k}_ms": v for k, v in med.items()}}
    # steady-state time decides (a server loads once); warm-up time breaks near-ties (3%)
    best = min(modes, key=lambda m: modes[m]["batch_ms"] + modes[m]["bmax_ms"] + modes[m]["run_all_b1_ms"])
    cost = {m: v["batch_ms"] + v["bmax_ms"] + v["run_all_b1_ms"] for m, v in modes.items()}
    near = [m for m in modes if cost[m] <= 1.03 * cost[best]]
    chosen = min(near, key=lambda m: modes[m]["warmup_s"])
    return out, {"modes": modes, "chosen": chosen,
                 "rule": "lowest steady predict(batch)+predict(max batch)+run_all(1) time; within 3% of it, fastest warm-up"}


def tensorrt(ctx: Ctx, reason: str | None) -> dict:
    """TensorRT with profile shapes from the buckets and an engine cache: the first load builds
    the engines, the second must reuse them."""
    if reason:
        return {"usable": False, "reason": reason}
    if ctx.left() < 150:
        return {"usable": None, "skipped": f"time budget ({ctx.left():.0f} s left; engine builds take minutes)"}
    from ranet_edge.runtime.accel import TENSORRT

    with tempfile.TemporaryDirectory() as cache:
        loads = []
        for _ in range(2):
            chain = ExitChain.load(ctx.bundles["default"], provider="tensorrt", buckets=ctx.max_batch,
                                   provider_options={"trt_engine_cache_path": cache})
            r = chain.load_report
            loads.append({"load_s": r.load_s, "warmup_s": r.warmup_s, "total_s": r.total_s})
        got = chain.session_providers[0]
        ref = ExitChain.load(ctx.bundles["default"], provider="cpu", buckets=False, warmup=False)
        x = ctx.x(ctx.batch)
        rel = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ref.run_all(x), chain.run_all(x)))
        med = side_by_side({"batch": partial(chain.predict, x)}, ctx.n(30, 5))
    return {"usable": got[0] == TENSORRT, "session_providers": got,
            "reason": None if got[0] == TENSORRT else f"onnxruntime fell back to {got[0]} (see its log above)", "first_load": loads[0], "second_load": loads[1],
            "engine_cache_reused": loads[1]["total_s"] < 0.5 * loads[0]["total_s"],
            "max_relative_logit_diff_vs_cpu": rel, "predict_batch_ms": med["batch"], "batch": ctx.batch}
