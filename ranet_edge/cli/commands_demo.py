"""`ranet-edge demo`: export, calibrate and benchmark the bundled default model end to end."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import require
from . import cli


@cli.command()
@click.option("--out", default="build/demo", show_default=True, help="working directory")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="intra-op threads [default: 1]")
def demo(out: str, threads: int | None) -> None:
    """Export the bundled default model, calibrate an operating point, benchmark it and show
    where the shipped validation images leave the network."""
    torch = require("torch", "export")
    import numpy as np

    from ranet_edge.runtime import ExitChain

    from ..assets import DEFAULT_CHECKPOINT, SAMPLE_IMAGES
    from .commands_bench import bench
    from .commands_eval import calibrate, split_val
    from .commands_model import export

    ctx = click.get_current_context()
    work = Path(out)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = DEFAULT_CHECKPOINT
    if not ckpt.exists():
        from ..checkpoint import FORMAT
        from ..model import RANet
        from ..presets import get_preset

        click.secho("NOTE: this install has no trained default model; the demo uses the 'tiny' preset "
                    "with UNTRAINED random weights, so its exits say nothing about accuracy.", fg="yellow")
        torch.manual_seed(0)
        cfg = get_preset("tiny")
        ckpt = work / "tiny-untrained.pt"
        torch.save({"format": FORMAT, "config": cfg.to_dict(), "model": RANet(cfg).state_dict()}, ckpt)
    bundle = work / "bundle"
    click.secho(f"\n== 1. export {ckpt.name} -> {bundle}", bold=True)
    ctx.invoke(export, ckpt=str(ckpt), out=str(bundle), monolithic=True, force=True, opset=17,
               batch_size=None, no_simplify=False, granularity="exit", tolerance=1e-4,
               preset=None)
    click.secho("\n== 2. calibrate: the paper's p = 0.5 on the shipped validation images", bold=True)
    ctx.invoke(calibrate, bundle=str(bundle), data_path=str(SAMPLE_IMAGES), holdout=None, seed=0,
               val_size=250, p=0.5, target_accuracy=None, budget_mflops=None, budget_ms=None,
               temperature=False, name="demo", make_default=True, provider="cpu", threads=threads,
               as_json=False)
    click.secho("\n== 3. bench", bold=True)
    ctx.invoke(bench, bundle=str(bundle), provider="cpu", threads=threads, batch_size=1, warmup=5, iters=50,
               thresholds=None, operating_point=None, data_path=str(SAMPLE_IMAGES), n_images=250,
               json_out=str(work / "bench.json"))
    click.secho("\n== 4. early exit at work on the 250 shipped images not used for calibration", bold=True)
    chain = ExitChain.load(bundle, threads=threads)
    with np.load(SAMPLE_IMAGES) as z:
        _, rest = split_val(len(z["y"]), 250, 0, True)  # the images calibrate did not see
        x, y = z["x"][rest], z["y"][rest]
    batch = chain.preprocess(x)
    res = chain.predict(batch)
    final = chain.run_all(batch)[-1].argmax(1)
    flops = np.asarray(chain.manifest.exit_field("flops"), float)
    click.echo(f"{'exit':>4} {'images':>7} {'accuracy':>9} {'MFLOPs':>8}")
    for k in range(chain.num_exits):
        m = res.exits == k
        acc = f"{100 * (res.labels[m] == y[m]).mean():.1f}%" if m.any() else "-"
        click.echo(f"{k:>4} {int(m.sum()):>7} {acc:>9} {flops[k] / 1e6:>8.2f}")
    expected = float(flops[res.exits].mean())
    click.echo(f"adaptive: {100 * (res.labels == y).mean():.1f}% top-1 at {expected / 1e6:.2f} MFLOPs/image; "
               f"final exit alone: {100 * (final == y).mean():.1f}% at {flops[-1] / 1e6:.2f} MFLOPs "
               f"(x{flops[-1] / expected:.2f} fewer FLOPs)")
