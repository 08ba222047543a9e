"""The performance page's generated tables (``<!-- generated:performance -->`` in
docs/performance.md), from benchmarks/results/*.json; written by readme_tables.py."""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    return json.loads((R / name).read_text())


def performance() -> str:
    ev, ad, th, fp, ed = (load(n) for n in ("eval.json", "adaptive_speedup.json", "threads_sweep.json",
                                             "runtime_footprint.json", "edge_formats.json"))
    co, cos, coc = (load(n) for n in ("chain_overhead.json", "chain_overhead_subnetwork.json", "chain_overhead_c1.json"))
    keep = {0.05, 0.25, 0.45, 0.65, 0.95, 1.45, 1.95}
    b1, b64 = ad["batch1"], ad["batch64"]
    t1, t64 = th["batch1_median_ms"], th["batch64_median_ms"]
    cfgs = ("threads1_spin0", "threads1_spin1", "threads2_spin0", "threads2_spin1")
    lines = [
        f"**Anytime prediction and budgeted batch classification** (`ranet-edge eval`, thresholds fit on "
        f"{ev['val_images']:,} held-out images, accuracy and a real timed chain run at batch {ev['batch_size']} on the other "
        f"{ev['eval_images']:,}; `benchmarks/results/eval.json`, `eval.png`):",
        "",
        "| exit | top-1 | top-5 | MFLOPs | ms to exit (median) |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {r['exit']} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | {r['flops'] / 1e6:.2f} | {r['ms']:.3f} |"
          for r in ev["anytime"]],
        "",
        "| p | top-1 | expected MFLOPs | measured ms/image | expected ms/image | measured / expected | images per exit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {r['p']:.2f} | {100 * r['accuracy']:.2f} | {r['expected_flops'] / 1e6:.2f} | {r['measured_ms']:.3f} | "
          f"{r['expected_ms']:.3f} | {r['real_over_expected']:.2f} | {r['exit_counts']} |"
          for r in ev["budgeted"] if round(r["p"], 2) in keep],
        "",
        "Expected ms: each point's exit shares times the ms to each exit (the table above), from the one stage "
        "measurement `eval` makes (runs of the graphs up to each exit, interleaved in settled blocks with the "
        "full chain, a block before each point's timed pass); measured: the timed pass of `predict` itself.",
        "",
        "![accuracy against FLOPs and measured latency](images/eval.png)",  # docs/hooks.py serves benchmarks/results/eval.png there
        "",
        "**Adaptive inference at iso-accuracy** (`benchmarks/adaptive_speedup.py`: the cheapest operating point "
        "whose calibration accuracy reaches the final exit's, measured on the other half: "
        f"{100 * ad['accuracy']['adaptive']:.2f}% against {100 * ad['accuracy']['final_exit']:.2f}% for the final exit, at "
        f"{ad['mflops']['adaptive_expected']:.2f} instead of {ad['mflops']['final_exit']:.2f} MFLOPs, FLOP-predicted "
        f"speed-up x{ad['predicted_speedup']:.2f}):",
        "",
        "| batch | adaptive ms/image | monolithic ONNX | PyTorch eager | speed-up vs monolithic | measured / predicted | speed-up vs PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {n} | {b['ms_per_image']['adaptive']:.3f} | {b['ms_per_image']['monolithic']:.3f} | "
          f"{b['ms_per_image']['torch_eager']:.3f} | x{b['speedup_vs_monolithic']:.2f} | {b['measured_over_predicted']:.2f} | "
          f"x{b['speedup_vs_torch_eager']:.1f} |" for n, b in ((1, b1), (64, b64))],
        "",
        "**Chain overhead** (`benchmarks/chain_overhead.py`: every exit computed stage by stage with "
        "`ExitChain.run_all` against the monolithic graph with all exits, both with the same session options, "
        "spinning off; medians of rounds of interleaved settled blocks; in brackets the monolithic graph with "
        "pre-bound outputs, as the chain runs its graphs):",
        "",
        "| bundle | threads | batch 1 chain / monolithic | batch 64 chain / monolithic |",
        "| --- | --- | --- | --- |",
        *[f"| {label} | {t} | x{r['batch1']['overhead_ratio']:.3f} (x{r['batch1']['overhead_ratio_vs_bound']:.3f}; "
          f"{r['batch1']['median_ms']['chain']:.3f} vs {r['batch1']['median_ms']['monolithic']:.3f} ms) | "
          f"x{r['batch64']['overhead_ratio']:.3f} (x{r['batch64']['overhead_ratio_vs_bound']:.3f}) |"
          for label, c in (("default, one graph per exit", co), ("default, one graph per sub-network", cos),
                           ("RANet C-1 (58.9 MFLOPs), one graph per exit", coc))
          for t, r in sorted(c["threads"].items())],
        "",
        "What the cut costs when every exit is computed: one ONNX Runtime call per graph, and each tensor handed "
        "on is written out of ONNX Runtime's blocked (NCHWc) layout by its producer and read back in by each "
        "consumer graph, which a single graph does once or not at all (`benchmarks/op_profile.py` counts the "
        "nodes). The exporter gives every fusion `Resize` constant sizes on its spatial axes (`export/rewrite.py`), "
        "so no `Shape`/`Slice`/`Concat` runs per call in any graph, the monolithic baseline included, and the "
        "runtime calls ONNX Runtime's compiled `run_with_iobinding` on pre-bound buffers with no Python between "
        "graphs beyond the loop (about 1 us per call). Early exit more than pays for the rest (table above).",
        "",
        "**Threads** (`benchmarks/threads_sweep.py`, all exits, median ms):",
        "",
        "| | 1 thread | 1 thread, spinning | 2 threads | 2 threads, spinning |",
        "| --- | --- | --- | --- | --- |",
        "| batch 1 | " + " | ".join(f"{t1[c]:.3f}" for c in cfgs) + " |",
        "| batch 64 | " + " | ".join(f"{t64[c]:.2f}" for c in cfgs) + " |",
        "",
        "Hence the defaults: one intra-op thread, spinning off. At batch 1 a second thread only adds "
        f"synchronisation (x{t1['threads2_spin0'] / t1['threads1_spin0']:.2f}); at batch 64 two threads without "
        f"spinning take x{t64['threads2_spin0'] / t64['threads1_spin0']:.2f} of the time (`--threads 2`), while two "
        f"*spinning* threads on two shared vCPUs take x{t64['threads2_spin1'] / t64['threads1_spin0']:.1f}.",
        "",
        f"**Footprint** (`benchmarks/runtime_footprint.py`, fresh interpreters, {fp['rounds']} interleaved rounds, "
        f"medians): `import ranet_edge.runtime` takes {1e3 * fp['import_s']['ranet_edge.runtime']:.1f} ms against "
        f"{1e3 * fp['import_s']['onnxruntime']:.1f} ms for `import onnxruntime` alone (x{fp['import_ratio']:.2f}): "
        "it imports nothing until a name is used. `from ranet_edge.runtime import ExitChain`, which brings numpy "
        f"and onnxruntime, takes {1e3 * fp['import_s']['ExitChain']:.1f} ms (x{fp['exitchain_import_ratio']:.2f}); "
        "opencv loads only when an image file is decoded, torch never. The process holds "
        f"{fp['rss_mb']['after_first_run']:.0f} MB with the default bundle loaded and run.{installed_footprint(fp)}",
        "",
        *memory(),
        "",
        f"**Edge formats** (`benchmarks/edge_formats.py`, top-1 per exit on {ed['eval_images']:,} held-out images, int8 "
        f"calibrated on {ed['calibration_images']} others):",
        "",
        "| format | " + " | ".join(f"exit {i}" for i in range(len(ed["top1"]["fp32"]))) + " |",
        "| --- |" + " --- |" * len(ed["top1"]["fp32"]),
        *["| " + k + " | " + " | ".join(f"{100 * a:.2f}" for a in v) + " |" for k, v in ed["top1"].items()],
        "",
        f"int8 ({ed['int8_recipe']}) stays within {max(abs(a) for a in ed['int8_minus_fp32_points']):.2f} points "
        "of fp32 at every exit. CPU latency against fp32, every exit computed (`run_all`), interleaved:",
        "",
        "| threads | int8 / fp32, batch 1 | int8 / fp32, batch 64 | fp16 / fp32, batch 1 | fp16 / fp32, batch 64 |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {t} | x{r['batch1']['int8_over_fp32']:.3f} | x{r['batch64']['int8_over_fp32']:.3f} | "
          f"x{r['batch1']['fp16_over_fp32']:.3f} | x{r['batch64']['fp16_over_fp32']:.3f} |"
          for t, r in sorted(ed["latency"].items())],
        *edge_c1(),
        "",
        "The int8 bundle is the chain quantized as one graph and cut at the exits again (`export/quantize.py`): "
        "stages hand on uint8 channels-last tensors, so ONNX Runtime runs for the stages exactly the nodes it runs "
        "for the whole int8 graph (no QuantizeLinear, DequantizeLinear or Transpose per cut). fp16 is for GPU "
        "providers; on this CPU it runs through casts. After the mobile rewrite, NNAPI and CoreML take 100% of the "
        "nodes of every stage (one partition each); as exported they took 90–100% (NNAPI stops at the "
        "align_corners `Resize`, CoreML at `Flatten`).",
    ]
    return "\n".join(lines)


def installed_footprint(fp: dict) -> str:
    """The same import figures for a regular (non-editable) install, when measured: pip's
    editable finder adds its own import hook to every import of the package."""
    if fp.get("install") != "editable" or not (R / "runtime_footprint_installed.json").exists():
        return ""
    ins = load("runtime_footprint_installed.json")
    return (f" Those figures come from the development tree's editable install, whose import hook costs time of its "
            f"own; installed as a wheel (`pip install '.[cpu]'` into a fresh venv, "
            f"`results/runtime_footprint_installed.json`), `from ranet_edge.runtime import ExitChain` takes "
            f"{1e3 * ins['import_s']['ExitChain']:.1f} ms against {1e3 * ins['import_s']['onnxruntime']:.1f} ms "
            f"(x{ins['exitchain_import_ratio']:.2f}) and `import ranet_edge.runtime` "
            f"{1e3 * ins['import_s']['ranet_edge.runtime']:.1f} ms (x{ins['import_ratio']:.2f}).")


def edge_c1() -> list[str]:
    """int8 against fp32 on RANet C-1 (benchmarks/results/edge_formats_c1.json), and what the
    operator profiles (op_profile_b1.json) say about the default model at batch 1."""
    if not (R / "edge_formats_c1.json").exists():
        return []
    c1 = load("edge_formats_c1.json")
    lines = ["", "The same on RANet C-1 (58.9 MFLOPs; the golden test weights, so accuracy is chance and only the "
             f"int8 − fp32 difference means something: at most {max(abs(a) for a in c1['int8_minus_fp32_points']):.2f} "
             "points):", "",
             "| threads | int8 / fp32, batch 1 | int8 / fp32, batch 64 |", "| --- | --- | --- |",
             *[f"| {t} | x{r['batch1']['int8_over_fp32']:.3f} | x{r['batch64']['int8_over_fp32']:.3f} |"
               for t, r in sorted(c1["latency"].items())]]
    if (R / "op_profile_b1.json").exists():
        bundles = load("op_profile_b1.json")["bundles"]
        fp32 = next((v for k, v in bundles.items() if "int8" not in k), None)
        int8 = next((v for k, v in bundles.items() if "int8" in k), None)
        if fp32 and int8:
            f_ops, i_ops = fp32["chain_us"], int8["chain_us"]
            conv = f_ops.get("Conv", 0) + f_ops.get("FusedConv", 0)
            lines += ["", "Why the default model's int8 gains less at batch 1 (`benchmarks/op_profile.py`, ONNX Runtime's "
                      f"profiler, `results/op_profile_b1.json`): its {int8['chain_nodes'].get('QLinearConv', 0)} int8 "
                      f"convolutions take {i_ops.get('QLinearConv', 0):.0f} us against {conv:.0f} us for the same "
                      "convolutions in fp32: on 16–64 channels at batch 1 the VNNI kernels win nothing, and what int8 "
                      f"saves is the layout reorders ({f_ops.get('ReorderInput', 0) + f_ops.get('ReorderOutput', 0):.0f} us "
                      "in fp32, none in int8) and cheaper concatenations. C-1's wider layers are where int8 convolutions pay."]
    return lines




def memory() -> list[str]:
    """Peak RSS of classifying many images in one call (benchmarks/predict_memory.py)."""
    now, big = load("predict_memory.json"), load("predict_memory_16k.json")
    before = load("predict_memory_before.json") if (R / "predict_memory_before.json").exists() else None
    n, cases = now["images"], ("load", "predict", "run_all", "random_batches", "cli")
    what = {"load": "bundle loaded, images preprocessed (the floor)", "predict": f"`chain.predict(x)`, {n:,} images",
            "run_all": f"`chain.run_all(x)`, {n:,} images", "random_batches": "100 `predict` calls, batch 1..1024",
            "cli": f"`ranet-edge predict` on {n:,} PNG files"}
    head = "| case | before (MB) | now (MB) |" if before else "| case | peak RSS (MB) |"
    rows = [f"| {what[c]} | " + (f"{before['peak_rss_mb'][c]:,.0f} | " if before else "")
            + f"{now['peak_rss_mb'][c]:,.0f} |" for c in cases]
    return [
        f"**Memory** (`benchmarks/predict_memory.py`: peak RSS of a fresh process, {n:,} held-out CIFAR-10 images; "
        f"measured on {now['machine']}):",
        "",
        head, "| --- | --- | --- |" if before else "| --- | --- |", *rows,
        "",
        "`predict` and `run_all` run every graph on at most `max_batch` samples (`ExitChain.load(..., max_batch=128)`): "
        "before, one call on the whole array ran each graph at full batch, and each of the six sessions' ONNX Runtime "
        "arenas kept its own peak for good, with `run_all`'s pre-bound buffers (225 KB per sample) allocated at full "
        "batch on top. The sessions now also share one CPU arena, so the process holds the largest peak, not the sum. "
        f"Past the input array itself nothing grows with it: with {big['images']:,} images `predict` peaks at "
        f"{big['peak_rss_mb']['predict']:.0f} MB and `run_all` at {big['peak_rss_mb']['run_all']:.0f} MB, against "
        f"{big['peak_rss_mb']['load']:.0f} MB for a process that only loads the bundle and preprocesses them.",
    ]
