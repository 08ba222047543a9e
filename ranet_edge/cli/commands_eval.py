"""Torch-free commands that need labelled data: calibrate, eval."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import DataError, require
from . import cli
from .commands_runtime import provider_option


def data_options(func):
    func = click.option("--seed", type=int, default=0, show_default=True, help="seed of --holdout and of the split")(func)
    func = click.option("--holdout", type=click.IntRange(min=1), default=None,
                        help="use only the last N of a seeded permutation of --data (the split "
                             "`ranet-edge train --val-size N` held out)")(func)
    func = click.option("--val-size", type=int, default=None,
                        help="images used to fit thresholds; the rest evaluate [default: half]")(func)
    return click.option("--data", "data_path", default=None,
                        help="ImageFolder root, CIFAR batches or .npz [default: the images shipped with the package]")(func)


def load_images(data_path: str | None, holdout: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 NHWC images and labels from --data (or the shipped sample)."""
    from ..data import open_dataset, split

    if data_path is None:
        from ..assets import SAMPLE_IMAGES

        if not SAMPLE_IMAGES.exists():
            raise DataError("no --data given and this install ships no sample images; pass --data PATH")
        data_path = str(SAMPLE_IMAGES)
    ds = open_dataset(data_path)
    if holdout is not None and holdout > len(ds):
        raise DataError(f"--holdout {holdout} is more than the {len(ds)} images of {data_path}; "
                        f"give at most {len(ds)}")
    if holdout is not None and holdout < len(ds):  # every image when it names them all
        _, idx = split(len(ds), holdout, seed)
        ds = ds.subset(idx)
    if len(ds) == 0:
        raise DataError(f"{data_path} holds no images")
    ds = ds.materialize() if ds.arrays is None and len(ds) <= 60000 else ds
    images = ds.arrays if ds.arrays is not None else np.stack(ds.images(range(len(ds))))
    return images, ds.labels, data_path


def split_val(n: int, val_size: int | None, seed: int, need_eval: bool) -> tuple[np.ndarray, np.ndarray]:
    size = n // 2 if val_size is None else val_size
    if not (1 <= size <= n) or (need_eval and size >= n):
        raise DataError(f"--val-size {size} must be between 1 and {n - 1 if need_eval else n} for {n} images")
    perm = np.random.default_rng([seed, 1]).permutation(n)
    return np.sort(perm[:size]), np.sort(perm[size:])


def _progress(label: str, length: int):
    return click.progressbar(length=length, label=label, file=sys.stderr)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@data_options
@click.option("--p", "p", type=float, default=None, help="the paper's share parameter (1/20 .. 39/20)")
@click.option("--target-accuracy", type=float, default=None, help="cheapest point reaching this top-1 (0-1 or %)")
@click.option("--budget-mflops", type=float, default=None, help="most accurate point within this many MFLOPs/image")
@click.option("--budget-ms", type=float, default=None, help="most accurate point within this many ms/image")
@click.option("--temperature", is_flag=True, help="fit per-exit softmax temperatures first")
@click.option("--name", default=None, help="operating point name [default: derived from the goal]")
@click.option("--default", "make_default", is_flag=True, help="make it the bundle's default operating point")
@provider_option
@click.option("--json", "as_json", is_flag=True)
def calibrate(bundle, data_path, holdout, seed, val_size, p, target_accuracy, budget_mflops, budget_ms,
              temperature, name, make_default, provider, threads, as_json) -> None:
    """Fit exit thresholds on labelled images and store them in the bundle as an operating point."""
    from ranet_edge.runtime import ExitChain, OperatingPoint, save_point
    from ranet_edge.runtime import calibration as cal
    from ranet_edge.runtime.evaluate import collect
    from ranet_edge.runtime.latency import measure_stages
    from ranet_edge.runtime.operating_points import thresholds_to_json

    goals = [g for g in (p, target_accuracy, budget_mflops, budget_ms) if g is not None]
    if len(goals) != 1:
        raise click.UsageError("give exactly one of --p, --target-accuracy, --budget-mflops, --budget-ms")
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    images, labels, source = load_images(data_path, holdout, seed)
    val_idx, _ = split_val(len(images), val_size if val_size is not None else len(images), seed, False)
    with _progress("running every exit", len(val_idx)) as bar:
        outs = collect(chain, images[val_idx], labels[val_idx], progress=bar.update)
    temps = cal.fit_temperatures(outs.logits, outs.labels) if temperature else None
    conf, correct = outs.conf_correct(temps)
    # Official counts, so that budgets and costs compare with the papers' (MSDNet's chain pays
    # less than them at early exits; the measured ms shows what is really paid).
    flops = np.asarray(chain.manifest.exit_field("flops"), np.float64)
    times = measure_stages(chain, chain.preprocess(images[:1]), warmup=3, iters=30)
    exit_ms = np.asarray(times.exit_ms(chain))
    if p is not None:
        thr = cal.paper_thresholds(conf, p)
        res = cal.outcome(conf, correct, flops, thr)
        method, default_name = f"paper p={p:g}", f"p{p:g}"
    elif target_accuracy is not None:
        target = target_accuracy / 100 if target_accuracy > 1 else target_accuracy
        res = cal.for_accuracy(conf, correct, flops, target)
        method, default_name = f"cheapest with val accuracy >= {target:.4f}", f"acc{target:.3f}"
    elif budget_mflops is not None:
        res = cal.for_budget(conf, correct, flops / 1e6, budget_mflops)
        method, default_name = f"most accurate within {budget_mflops:g} MFLOPs", f"mflops{budget_mflops:g}"
    else:
        res = cal.for_budget(conf, correct, exit_ms, budget_ms)
        method, default_name = (f"most accurate within {budget_ms:g} ms on {chain.session_providers[0][0]}",
                                f"ms{budget_ms:g}")
    counts = res.exit_counts
    expected_flops = float(counts @ flops / counts.sum())
    expected_ms = float(counts @ exit_ms / counts.sum())
    thresholds = [float(t) if t < 1e7 else float("inf") for t in res.thresholds[:-1]] + [float("-inf")]
    point = OperatingPoint(
        thresholds=thresholds, method=method, val_accuracy=res.accuracy, expected_flops=expected_flops,
        expected_ms=expected_ms, temperatures=[float(t) for t in temps] if temps is not None else None,
        provider=chain.session_providers[0][0],
    )
    name = name or default_name
    save_point(bundle, name, point, default=make_default)
    report = {"name": name, "thresholds": thresholds_to_json(thresholds),
              "val_accuracy": res.accuracy, "expected_flops": expected_flops, "expected_ms": expected_ms,
              "exit_counts": counts.tolist(), "val_images": int(len(val_idx)), "data": source,
              "temperatures": point.temperatures}
    if temperature:
        plain_conf, _ = outs.conf_correct()
        report["ece_before"] = float(np.mean([cal.expected_calibration_error(pk, outs.labels)
                                              for pk in outs.probs()]))
        report["ece_after"] = float(np.mean([cal.expected_calibration_error(pk, outs.labels)
                                             for pk in outs.probs(temps)]))
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    click.echo(f"operating point {name!r} ({method}) saved to {Path(bundle) / 'thresholds.json'}")
    click.echo(f"  thresholds   {', '.join('inf' if not np.isfinite(t) else f'{t:.4f}' for t in thresholds[:-1])}")
    click.echo(f"  val accuracy {100 * res.accuracy:.2f}% on {len(val_idx)} images")
    click.echo(f"  expected     {expected_flops / 1e6:.2f} MFLOPs, {expected_ms:.3f} ms per image")
    click.echo(f"  exit counts  {counts.tolist()}")
    if temperature:
        click.echo(f"  temperatures {', '.join(f'{t:.2f}' for t in temps)} (mean ECE {report['ece_before']:.4f} -> "
                   f"{report['ece_after']:.4f})")


@cli.command(name="eval")
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@data_options
@provider_option
@click.option("--batch-size", type=int, default=1, show_default=True, help="batch of the timed budgeted runs")
@click.option("--json", "json_out", default=None, help="write the results as JSON to this file")
@click.option("--plot", "plot_out", default=None, help="write accuracy-vs-cost curves to this PNG")
def evaluate(bundle, data_path, holdout, seed, val_size, provider, threads, batch_size, json_out, plot_out) -> None:
    """Anytime accuracy per exit and the paper's budgeted batch curve, with measured latency."""
    from ranet_edge.errors import InputError
    from ranet_edge.runtime import ExitChain
    from ranet_edge.runtime.evaluate import PAPER_P, anytime, budgeted, collect, plot
    from ranet_edge.runtime.latency import measure_stages

    if batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    if plot_out:  # say so before the long run, not after it
        require("matplotlib", "plot")
    if bundle is None:
        from ..assets import default_bundle

        bundle = default_bundle()
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    images, labels, source = load_images(data_path, holdout, seed)
    val_idx, eval_idx = split_val(len(images), val_size, seed, True)
    times = measure_stages(chain, chain.preprocess(images[:1]), warmup=3, iters=30)
    exit_ms = times.exit_ms(chain)
    flops = chain.manifest.exit_field("flops")
    with _progress("running every exit", len(images)) as bar:
        val = collect(chain, images[val_idx], labels[val_idx], progress=bar.update)
        test = collect(chain, images[eval_idx], labels[eval_idx], progress=bar.update)
    any_rows = anytime(test, flops, exit_ms)
    with _progress("budgeted runs (39 operating points)", len(PAPER_P)) as bar:
        bud_rows = budgeted(chain, val, images[eval_idx], labels[eval_idx], flops, batch_size,
                            progress=bar.update, run_costs=chain.manifest.exit_field("run_flops"))
    result = {"bundle": str(bundle), "data": source, "val_images": int(len(val_idx)),
              "eval_images": int(len(eval_idx)), "provider": chain.session_providers[0][0],
              "batch_size": batch_size, "anytime": any_rows, "budgeted": bud_rows}
    click.echo(f"anytime prediction on {len(eval_idx)} images ({source}); latency p50 at batch 1")
    click.echo(f"{'exit':>4} {'top-1':>7} {'top-5':>7} {'MFLOPs':>8} {'ms':>7}")
    for r in any_rows:
        click.echo(f"{r['exit']:>4} {100 * r['top1']:>7.2f} {100 * r['top5']:>7.2f} {r['flops'] / 1e6:>8.2f} {r['ms']:>7.3f}")
    click.echo(f"budgeted batch classification: thresholds fit on {len(val_idx)} images, measured at batch {batch_size}")
    click.echo(f"{'p':>5} {'top-1':>7} {'MFLOPs':>8} {'ms/img':>7}  exits")
    for r in bud_rows[::2]:
        click.echo(f"{r['p']:>5.2f} {100 * r['accuracy']:>7.2f} {r['expected_flops'] / 1e6:>8.2f} "
                   f"{r['measured_ms']:>7.3f}  {r['exit_counts']}")
    if json_out:
        from ranet_edge.runtime.manifest import write_json_atomic

        write_json_atomic(Path(json_out), result)
        click.echo(f"wrote {json_out}")
    if plot_out:
        plot(any_rows, bud_rows, plot_out, title=f"{Path(bundle).name}: {len(eval_idx)} held-out images")
        click.echo(f"wrote {plot_out}")
