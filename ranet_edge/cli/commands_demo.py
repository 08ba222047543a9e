"""`ranet-edge demo`: export, calibrate and benchmark the bundled default model end to end."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import click

from ..errors import require
from . import cli


@cli.command()
@click.option("--out", default="build/demo", show_default=True, help="working directory")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads [default: 1]")
def demo(out: str, threads: int | None) -> None:
    """Export the bundled default model, calibrate an operating point, benchmark it and show
    where the shipped validation images leave the network. Without the export extra (torch,
    onnx) it starts from the shipped bundle, the export of that model, and runs the rest.
    \f
    Raises:
        MissingExtraError: neither torch and onnx nor a shipped bundle are installed.
        RanetEdgeError: a step fails (export, calibration, benchmark).
    """
    from ranet_edge.runtime.evaluation import BenchOptions
    from ranet_edge.tasks import DataOptions, Goal, bench, calibrate, early_exit, unseen_by_calibration

    from ..assets import DEFAULT_BUNDLE, DEFAULT_CHECKPOINT, SAMPLE_IMAGES
    from ..runtime.files import staged_dir
    from ..runtime.manifest import write_json_atomic
    from .commands_bench import echo_bench
    from .commands_eval import _progress, echo_calibrated

    work = Path(out)
    work.mkdir(parents=True, exist_ok=True)
    bundle = work / "bundle"
    if all(importlib.util.find_spec(m) for m in ("torch", "onnx")) or not DEFAULT_BUNDLE.exists():
        require("torch", "export")
        require("onnx", "export")
        from ..demo import demo_checkpoint
        from ..export.exporter import ExportSpec
        from ..export.ranet import export_checkpoint

        ckpt, trained = demo_checkpoint(work)
        if not trained:
            click.secho("NOTE: this install has no trained default model; the demo uses the 'tiny' preset "
                        "with UNTRAINED random weights, so its exits say nothing about accuracy.", fg="yellow")
        click.secho(f"\n== 1. export {ckpt.name} -> {bundle}", bold=True)
        result = export_checkpoint(ckpt, bundle, ExportSpec(opset=17, monolithic=True), force=True)
        click.echo(f"wrote {bundle}: {len(result.manifest['graphs'])} graphs for {len(result.manifest['exits'])} "
                   f"exits; next: ranet-edge info {bundle}")
    else:
        click.secho(f"\n== 1. export: skipped, torch and onnx are not installed (pip install 'ranet-edge[export]'); "
                    f"starting from the shipped bundle, the export of {DEFAULT_CHECKPOINT.name} -> {bundle}", bold=True)
        with staged_dir(bundle) as tmp:
            shutil.copytree(DEFAULT_BUNDLE, tmp, dirs_exist_ok=True)
        click.echo(f"copied {bundle}; next: ranet-edge info {bundle}")
    click.secho("\n== 2. calibrate: the paper's p = 0.5 on the shipped validation images", bold=True)
    data = DataOptions(SAMPLE_IMAGES, val_size=250)
    echo_calibrated(calibrate(bundle, Goal(p=0.5), data, name="demo",
                              make_default=True, threads=threads, progress=_progress))
    click.secho("\n== 3. bench", bold=True)
    b = bench(bundle, BenchOptions(batch_size=1, warmup=5, iters=50, adaptive_images=250), threads=threads,
              data_path=SAMPLE_IMAGES, progress=lambda s: click.echo(f"  measuring {s} ...", err=True))
    echo_bench(b, 1)
    write_json_atomic(work / "bench.json", b.result)
    click.echo(f"wrote {work / 'bench.json'}")
    click.secho("\n== 4. early exit at work on the 250 shipped images not used for calibration", bold=True)
    unseen = unseen_by_calibration(data)
    r = early_exit(bundle, unseen.images, unseen.labels, threads=threads)
    click.echo(f"{'exit':>4} {'images':>7} {'accuracy':>9} {'MFLOPs':>8}")
    for row in r.rows:
        acc = f"{100 * row.accuracy:.1f}%" if row.accuracy is not None else "-"
        click.echo(f"{row.exit:>4} {row.images:>7} {acc:>9} {row.flops / 1e6:>8.2f}")
    click.echo(f"adaptive: {100 * r.accuracy:.1f}% top-1 at {r.expected_flops / 1e6:.2f} MFLOPs/image; "
               f"final exit alone: {100 * r.final_accuracy:.1f}% at {r.final_flops / 1e6:.2f} MFLOPs "
               f"(x{r.final_flops / r.expected_flops:.2f} fewer FLOPs)")
