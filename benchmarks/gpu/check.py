"""The prepared GPU check: one JSON report and a printed table (run it through check.sh).

    python benchmarks/gpu/check.py [--provider cuda|cpu] [--bundles DIR] [--out JSON] [--quick]

Needs numpy and onnxruntime(-gpu) only; the repository need not be installed (it is imported
from the source tree). ``--provider cpu`` is the dry run: the same report on the CPU provider,
with the device executor (``device_io=True``) and buckets forced on, and the captured executor
running its fixed buffers uncaptured. Each check passes, fails, or is skipped with the reason
(one that needs a GPU, a section not run); the exit status is 1 when any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SECTIONS = ("env", "providers", "bundles", "logits_vs_cpu", "fp16_accuracy", "stages", "chain_vs_monolithic",
            "device_vs_host", "adaptive", "routed_throughput", "shapes", "load_warmup", "cudnn_search",
            "tensorrt", "capture", "imagenet", "checks")
RUNNABLE = ("logits_vs_cpu", "fp16_accuracy", "stages", "chain_vs_monolithic", "device_vs_host", "adaptive",
            "routed_throughput", "load_warmup", "tensorrt", "capture", "imagenet")  # routed_throughput also fills "shapes",
# load_warmup also "cudnn_search"


def _import_ranet_edge() -> None:
    """Use the installed ranet_edge if there is one, else the source tree (whose runtime/ and
    export/ map into the package the way setup.cfg's package_dir does)."""
    sys.path[:0] = [str(HERE), str(REPO)]
    import ranet_edge

    try:
        import ranet_edge.runtime  # noqa: F401
    except ModuleNotFoundError:
        ranet_edge.__path__.append(str(REPO))


def _section(report: dict, name: str, fn, ctx, need_s: float = 5.0, chosen: set[str] | None = None):
    if chosen is not None and name not in chosen:
        report[name] = {"skipped": "not selected (--sections)"}
        return None
    if ctx.left() < need_s:
        report[name] = {"skipped": f"time budget: {max(ctx.left(), 0):.0f} s left, needs ~{need_s:.0f} s"}
        return None
    t0 = time.perf_counter()
    print(f"[{time.perf_counter() - ctx.started:6.1f} s] {name} ...", flush=True)
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - the report says which section broke, and how
        report[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}",
                        "traceback": traceback.format_exc(limit=6)[-1500:]}
        return None
    report.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 2)
    report[name] = result
    return result


def _checks(report: dict, provider_full: str) -> list[dict]:
    """Every check the report allows: ``ok`` True or False, or None with ``skipped`` (why it
    cannot apply here, on the CPU say, or the section did not run). Skipped is never passed."""
    out = []
    on_cpu = provider_full == "CPUExecutionProvider"

    def add(name: str, ok, detail: str) -> None:
        out.append({"name": name, "ok": bool(ok), "detail": detail})

    def skip(name: str, why: str) -> None:
        out.append({"name": name, "ok": None, "skipped": why, "detail": why})

    logits = report.get("logits_vs_cpu", {})
    for name, row in logits.items() if "error" not in logits and "skipped" not in logits else ():
        add(f"logits {name}", row["ok"], f"max relative {row['max_relative']:.2e} <= {row['tolerance']:.0e}")
        if name == "default":
            add("provider in use", row["session_providers"][0] == provider_full,
                f"sessions run on {row['session_providers'][0]}")
            add("device executor in use", row["executor"] == "device",
                f"the check's chains run on the {row['executor']} executor ({row['device']} memory)")
    fp16 = report.get("fp16_accuracy", {}).get("default")
    if fp16:
        add("fp16 top-1", fp16["max_top1_drop"] <= 0.01, f"largest drop against fp32 {100 * fp16['max_top1_drop']:.2f} points")
    agree = report.get("routed_throughput", {}).get("bucketed_vs_unbucketed")
    if agree:
        ok = agree["identical"] if on_cpu else agree["exits_equal"] >= 0.99 and agree["labels_equal"] >= 0.99
        add("buckets keep results", ok, ("identical" if agree["identical"] else
                                         f"exits equal {agree['exits_equal']:.3f}, max prob diff {agree['max_probability_diff']:.1e}"))
    shapes = report.get("shapes", {})
    if "bounded" in shapes:
        add("shapes bounded", shapes["bounded"], f"bucketed max {max(shapes['bucketed']['distinct_per_graph'])} per graph "
            f"(bound {shapes['bound_per_graph']}), unbucketed max {max(shapes['unbucketed']['distinct_per_graph'])}")
    for section in ("capture", "imagenet"):
        cap = report.get(section, {})
        for name, row in cap.items() if isinstance(cap, dict) else ():
            if isinstance(row, dict) and "skipped" in row:
                skip(f"{section} {name}", row["skipped"])
            elif isinstance(row, dict) and "capture_report" in row:
                _capture_checks(row, name, on_cpu, add, skip)
    trt = report.get("tensorrt", {})
    if trt.get("usable"):
        add("TensorRT engine cache reused", trt["engine_cache_reused"],
            f"load+warm-up {trt['first_load']['total_s']:.1f} s, then {trt['second_load']['total_s']:.1f} s")
    elif trt.get("reason"):  # a section skipped as a whole is listed below
        skip("TensorRT engine cache reused", trt["reason"])
    for key in SECTIONS:
        if isinstance(report.get(key), dict) and "skipped" in report[key]:
            skip(f"section {key}", report[key]["skipped"])
    broken = [k for k in SECTIONS if isinstance(report.get(k), dict) and "error" in report[k]]
    add("no section failed", not broken, ", ".join(broken) or "all ran")
    return out


def _capture_checks(row: dict, name: str, on_cpu: bool, add, skip) -> None:
    """The checks of one bundle the captured executor ran (``capture`` or ``imagenet`` section)."""
    rep = row["capture_report"]
    graphs = rep["graphs"]
    stages = [g for g in graphs if not g["name"].startswith("gather after ")]
    complete = rep["executor"] == "captured" and len(stages) > 0 and len(graphs) == 2 * len(stages) - 1
    took = sum(g["captured"] for g in graphs)
    if on_cpu:  # the CPU provider has no CUDA graphs: the report must say nothing was captured
        ok = complete and took == 0 and not rep["requested"]
        detail = f"{len(stages)} graphs + {len(graphs) - len(stages)} gathers on fixed buffers, none captured (CPU)"
    else:  # every session listed; each captured, or naming what kept it off CUDA graphs
        ok = complete and all(g["captured"] or g["blockers"] for g in graphs)
        detail = f"{len(stages)} graphs + {len(graphs) - len(stages)} gathers, {took} captured"
    add(f"capture report {name}", ok, detail)
    if on_cpu:
        skip(f"CUDA graphs {name}", "the CPU provider has no CUDA graphs: the same fixed buffers run uncaptured")
    else:
        add(f"CUDA graphs {name}", took == len(graphs), f"{took}/{len(graphs)} sessions captured"
            + (f"; blockers: {'; '.join(rep['blockers'][:3])}" if rep["blockers"] else ""))
    agree = row.get("run_all_vs_plain")
    if agree:
        add(f"captured run_all = plain {name}", agree["max_relative"] <= agree["tolerance"],
            f"batch {agree['batch']}, every exit: max relative {agree['max_relative']:.1e} <= {agree['tolerance']:.0e}"
            + (" (the same kernels on the CPU: exactly equal)" if on_cpu else ""))
    for key, agree in row.get("routed", {}).get("steady", {}).items():
        if key.endswith("_agreement"):
            need = 1.0 if on_cpu else 0.99  # the CPU runs the same kernels: exactly the plain chain's
            add(f"captured predict = plain {name} {key[:-10]}",
                agree["exits_equal"] >= need and agree["labels_equal"] >= need,
                f"exits equal {agree['exits_equal']:.3f}, labels equal {agree['labels_equal']:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description="ranet-edge GPU check")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--bundles", default=str(REPO / "build" / "gpu-bundles"),
                    help="where prepare_bundles.py put (or puts) default-fp16, c1, c1-fp16")
    ap.add_argument("--no-prepare", action="store_true", help="never export or convert here, even with torch")
    ap.add_argument("--out", default=None, help="JSON report (default build/gpu-check/gpu_check_PROVIDER.json)")
    ap.add_argument("--quick", action="store_true", help="few repetitions (the CI dry run)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting sections after this long")
    ap.add_argument("--sections", default=None,
                    help="comma list of the sections to run (default all): " + ", ".join(RUNNABLE))
    ap.add_argument("--batch", type=int, default=None, help="the batched figures' batch (64; quick: 8)")
    ap.add_argument("--max-batch", type=int, default=None, help="the largest batch (256; quick: 32)")
    ap.add_argument("--cudnn-search", choices=["EXHAUSTIVE", "HEURISTIC", "DEFAULT"], default=None,
                    help="cuDNN search mode for every section but cudnn_search (default: onnxruntime's)")
    args = ap.parse_args()
    chosen = set(RUNNABLE) if args.sections is None else {s.strip() for s in args.sections.split(",") if s.strip()}
    if not chosen or chosen - set(RUNNABLE):
        ap.error(f"--sections takes a comma list of {', '.join(RUNNABLE)}; got {args.sections!r}")
    started = time.perf_counter()
    _import_ranet_edge()
    import capture_sections
    import host
    import numpy as np
    import prepare_bundles
    import report_table
    import sections
    import timing

    from ranet_edge.assets import SAMPLE_IMAGES
    from ranet_edge.runtime.providers import SHORT_NAMES

    provider_full = SHORT_NAMES[args.provider]
    report: dict = {"report": "ranet-edge GPU check", "command": " ".join(["benchmarks/gpu/check.py", *sys.argv[1:]]),
                    "quick": args.quick, "budget_s": args.budget_s}
    preload = host.preload() if args.provider == "cuda" else {"called": False, "reason": "CPU dry run"}
    report["env"] = {**host.environment(provider_full), "preload_dlls": preload}
    probes = {p: host.provider_probe(p) for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")}
    trt_reason = host.tensorrt_reason(probes["TensorrtExecutionProvider"])
    report["providers"] = {"available": report["env"]["providers_available"], "probes": probes,
                           "tensorrt_unavailable_reason": trt_reason}
    out = Path(args.out or REPO / "build" / "gpu-check" / f"gpu_check_{args.provider}.json")
    from ranet_edge.assets import DEFAULT_BUNDLE

    usable = host.session_probe(Path(DEFAULT_BUNDLE) / "stage0.onnx", provider_full)
    report["providers"]["session_probe"] = usable
    if not usable["runs"]:
        why = probes.get(provider_full, {}).get("reason") or usable["reason"]
        report["error"] = f"cannot run the check on {args.provider}: {why}"
        _write(out, report)
        fix = ("put the CUDA libraries it names on the host (the nvidia cuBLAS/cuDNN wheels of a PyTorch "
               "environment do) or pass their directories with --cuda-libs" if args.provider == "cuda" else
               "install onnxruntime")
        print(f"error: {report['error']}; {fix} (benchmarks/gpu/check.sh --help)", file=sys.stderr)
        return 2
    bdir = Path(args.bundles)
    found, missing = prepare_bundles.find(bdir)
    if not args.no_prepare:  # --quick makes the CIFAR bundles only: the ImageNet exports take ~10 minutes
        only = set(prepare_bundles.CIFAR) if args.quick else set(missing)
        tried = prepare_bundles.prepare(bdir, only=only)[1]  # why what it tried is still missing
        found, missing = prepare_bundles.find(bdir)
        missing = {k: tried.get(k, v) if k in only else f"{v} (--quick makes no ImageNet bundle)"
                   for k, v in missing.items()}
    report["bundles"] = {"found": {k: str(v) for k, v in found.items()}, "missing": missing}
    with np.load(SAMPLE_IMAGES) as z:
        images, labels = z["x"], z["y"]
    ctx = sections.Ctx(args.provider, images, labels, found, args.quick, started + args.budget_s,
                       batch=args.batch or (8 if args.quick else 64),
                       max_batch=args.max_batch or (32 if args.quick else 256),
                       cudnn_search=args.cudnn_search, started=started, missing=missing)
    report["settings"] = {"batch": ctx.batch, "max_batch": ctx.max_batch,
                          "cudnn_search": args.cudnn_search or "onnxruntime default"}
    one = [("logits_vs_cpu", sections.logits_vs_cpu, 5), ("fp16_accuracy", sections.fp16_accuracy, 5),
           ("stages", timing.stages, 5), ("chain_vs_monolithic", timing.chain_vs_monolithic, 5),
           ("device_vs_host", timing.device_vs_host, 5), ("adaptive", timing.adaptive, 5),
           ("capture", capture_sections.capture, 20), ("imagenet", capture_sections.imagenet, 30)]
    for name, fn, need in one:
        _section(report, name, lambda fn=fn: fn(ctx), ctx, need, chosen)
    for first, second, fn, need in (("routed_throughput", "shapes", timing.routed, 15),
                                    ("load_warmup", "cudnn_search", timing.load_warmup, 20)):
        if _section(report, first, lambda fn=fn: fn(ctx), ctx, need, chosen) is None:
            report[second] = report[first]  # the same error or skip
        else:
            report[first], report[second] = report[first]
    _section(report, "tensorrt", lambda: timing.tensorrt(ctx, trt_reason), ctx, 0, chosen)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["env"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["checks"] = _checks(report, provider_full)
    report["passed"] = all(c["ok"] is not False for c in report["checks"])  # skipped: not failed, not passed
    _write(out, report)
    print(report_table.render(report))
    print(f"wrote {out}")
    return 0 if report["passed"] else 1


def _write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main())
