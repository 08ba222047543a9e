"""Torch-free commands that need labelled data: calibrate, eval."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click
import numpy as np

from ..errors import require
from . import cli
from .commands_runtime import provider_option


def data_options(func):
    """``--data``, ``--val-size``, ``--holdout``, ``--seed`` and ``--label-map``: the fields of
    :class:`~ranet_edge.tasks.DataOptions`."""
    func = click.option("--label-map", type=click.Path(dir_okay=False), default=None,
                        help="JSON mapping the labels' classes (the last exit's) to those of exits of another class "
                             'count, e.g. {"20": [coarse class of each of the 100 fine ones]}; required by such exits')(func)
    func = click.option("--seed", type=int, default=0, show_default=True, help="seed of --holdout and of the split")(func)
    func = click.option("--holdout", type=click.IntRange(min=1), default=None,
                        help="use only the last N of a seeded permutation of --data (the split "
                             "`ranet-edge train --val-size N` held out)")(func)
    func = click.option("--val-size", type=int, default=None,
                        help="images used to fit thresholds; the rest evaluate [default: half]")(func)
    return click.option("--data", "data_path", default=None,
                        help="ImageFolder root, CIFAR batches or .npz [default: the images shipped with the package]")(func)


@contextlib.contextmanager
def _progress(label: str, length: int):
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@data_options
@click.option("--p", "p", type=float, default=None, help="the paper's share parameter (1/20 .. 39/20)")
@click.option("--target-accuracy", type=float, default=None, help="cheapest point reaching this top-1 (0-1 or %)")
@click.option("--budget-mflops", type=float, default=None, help="most accurate point within this many MFLOPs/image")
@click.option("--budget-ms", type=float, default=None, help="most accurate point within this many ms/image")
@click.option("--ladder", type=int, default=None,
              help="write N points ladder-0 (all at exit 0) .. ladder-(N-1) (most accurate) at even steps of "
                   "expected ms, for `serve --slo-ms`")
@click.option("--temperature", is_flag=True, help="fit per-exit softmax temperatures first")
@click.option("--rule", type=click.Choice(["max_prob", "entropy", "patience"]), default="max_prob", show_default=True,
              help="exit rule: max softmax probability, softmax entropy (DeeBERT), or patience (PABEE: every t "
                   "is reported, the goal picks one)")
@click.option("--name", default=None, help="operating point name [default: derived from the goal]")
@click.option("--default", "make_default", is_flag=True, help="make it the bundle's default operating point")
@provider_option
@click.option("--json", "as_json", is_flag=True)
def calibrate(bundle, data_path, holdout, seed, val_size, label_map, p, target_accuracy, budget_mflops, budget_ms,
              ladder, temperature, rule, name, make_default, provider, threads, as_json) -> None:
    """Fit exit thresholds on labelled images and store them in the bundle as an operating point.
    \f
    Raises:
        click.UsageError: not exactly one of ``--p``, ``--target-accuracy``, ``--budget-mflops``,
            ``--budget-ms``, ``--ladder``; ``--ladder`` below 2 or with ``--name``/``--default``.
        RanetEdgeError: as :func:`ranet_edge.tasks.calibrate` (bundle, provider, data, a goal
            that cannot be met).
    """
    from ranet_edge.tasks import DataOptions, Goal
    from ranet_edge.tasks import calibrate as run_calibration

    goals = [g for g in (p, target_accuracy, budget_mflops, budget_ms, ladder) if g is not None]
    if len(goals) != 1:
        raise click.UsageError("give exactly one of --p, --target-accuracy, --budget-mflops, --budget-ms, --ladder")
    if ladder is not None:
        if rule != "max_prob":
            raise click.UsageError(f"--ladder fits max_prob points; drop --rule {rule}")
        _calibrate_ladder(bundle, ladder, DataOptions(data_path, holdout, seed, val_size, label_map), temperature, name,
                          make_default, provider, threads, as_json)
        if label_map and not as_json:
            click.echo(f"(labels mapped by {label_map} at exits of another class count: val acc credits their "
                       "answers for the mapped class)")
        return
    res = run_calibration(bundle, Goal(p, target_accuracy, budget_mflops, budget_ms),
                          DataOptions(data_path, holdout, seed, val_size, label_map), temperature=temperature, name=name,
                          make_default=make_default, provider=provider, threads=threads, progress=_progress,
                          rule=rule)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, allow_nan=False))
        return
    echo_calibrated(res)
    if label_map:
        click.echo(f"  labels       mapped by {label_map} at exits of another class count: val accuracy credits "
                   "their answers for the mapped class")


def _calibrate_ladder(bundle, n, data, temperature, name, make_default, provider, threads, as_json) -> None:
    from ranet_edge.ladder import calibrate_ladder

    if n < 2:
        raise click.UsageError(f"--ladder {n}: a ladder needs at least 2 rungs; pass --ladder 2 or more")
    if name is not None or make_default:
        raise click.UsageError("--ladder names its points ladder-0 .. ladder-(N-1) and keeps the default; "
                               "drop --name and --default")
    res = calibrate_ladder(bundle, n, data, temperature=temperature, provider=provider, threads=threads,
                           progress=_progress)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, allow_nan=False))
        return
    click.echo(f"ladder of {n} operating points saved to {res.path} (fitted on {res.val_images} images; "
               f"default stays {res.default!r})")
    click.echo(f"{'name':>10} {'val acc':>8} {'MFLOPs':>7} {'exp ms':>7}  exit counts")
    for name_i, point, out in zip(res.names, res.points, res.outcomes, strict=True):
        click.echo(f"{name_i:>10} {100 * point.val_accuracy:>7.2f}% {point.expected_flops / 1e6:>7.2f} "
                   f"{point.expected_ms:>7.3f}  {out.exit_counts.tolist()}")


def echo_calibrated(res) -> None:
    """Print a :class:`ranet_edge.tasks.Calibrated` as `ranet-edge calibrate` does."""
    point, thresholds = res.point, res.point.thresholds
    click.echo(f"operating point {res.name!r} ({point.method}) saved to {res.path}")
    if res.patience is not None:
        click.echo(f"  {'t':>3} {'accuracy':>9} {'MFLOPs':>8} {'ms':>7}  exits")
        for r in res.patience:
            click.echo(f"  {r['t']:>3} {100 * r['accuracy']:>8.2f}% {r['expected_flops'] / 1e6:>8.2f} "
                       f"{r['expected_ms']:>7.3f}  {r['exit_counts']}")
    click.echo(f"  thresholds   {', '.join('inf' if not np.isfinite(t) else f'{t:.4f}' for t in thresholds[:-1])}"
               + ("" if point.rule == "max_prob" else f" ({point.rule})"))
    click.echo(f"  val accuracy {100 * res.outcome.accuracy:.2f}% on {res.val_images} images")
    click.echo(f"  expected     {point.expected_flops / 1e6:.2f} MFLOPs, {point.expected_ms:.3f} ms per image")
    click.echo(f"  exit counts  {res.outcome.exit_counts.tolist()}")
    if res.ece_before is not None:
        click.echo(f"  temperatures {', '.join(f'{t:.2f}' for t in point.temperatures)} (mean ECE "
                   f"{res.ece_before:.4f} -> {res.ece_after:.4f})")


@cli.command(name="eval")
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@data_options
@provider_option
@click.option("--batch-size", type=int, default=1, show_default=True, help="batch of the timed budgeted runs")
@click.option("--json", "json_out", default=None, help="write the results as JSON to this file")
@click.option("--plot", "plot_out", default=None, help="write accuracy-vs-cost curves to this PNG")
def evaluate(bundle, data_path, holdout, seed, val_size, label_map, provider, threads, batch_size, json_out,
             plot_out) -> None:
    """Anytime accuracy per exit and the paper's budgeted batch curve, with measured latency.
    \f
    Raises:
        MissingExtraError: ``--plot`` without matplotlib (the ``plot`` extra), before the run.
        RanetEdgeError: as :func:`ranet_edge.tasks.evaluate`.
    """
    from ranet_edge.runtime.evaluation import plot
    from ranet_edge.tasks import DataOptions
    from ranet_edge.tasks import evaluate as run_evaluation

    if plot_out:  # say so before the long run, not after it
        require("matplotlib", "plot")
    if bundle is None:
        from ..assets import default_bundle

        bundle = default_bundle()
    res = run_evaluation(bundle, DataOptions(data_path, holdout, seed, val_size, label_map), provider=provider,
                         threads=threads, batch_size=batch_size, progress=_progress)
    echo_evaluation(res)
    if json_out:
        from ranet_edge.runtime.manifest import write_json_atomic

        write_json_atomic(Path(json_out), res.to_dict())
        click.echo(f"wrote {json_out}")
    if plot_out:
        plot(res.anytime, res.budgeted, plot_out, title=f"{Path(bundle).name}: {res.eval_images} held-out images")
        click.echo(f"wrote {plot_out}")


def echo_evaluation(res) -> None:
    """Print a :class:`ranet_edge.tasks.Evaluation` as `ranet-edge eval` does."""
    lat, b = res.latency, res.batch_size
    click.echo(f"anytime prediction on {res.eval_images} images ({res.source}); ms to each exit per image, "
               f"timed at batch {b}")
    click.echo(f"{'exit':>4} {'top-1':>7} {'top-5':>7} {'MFLOPs':>8} {'ms':>7}")
    for r in res.anytime:
        click.echo(f"{r['exit']:>4} {100 * r['top1']:>7.2f} {100 * r['top5']:>7.2f} {r['flops'] / 1e6:>8.2f} {r['ms']:>7.3f}")
    if lat:
        ref, last = lat["references"]["chain"], lat["to_graph"][-1]
        click.echo(f"ms to an exit: the graphs up to it run in sequence, median of {last['calls']} calls "
                   f"interleaved in settled blocks; every graph {last['median_ms']:.3f} ms against the full chain "
                   f"(run_all) {ref['median_ms']:.3f} ms in the same blocks, per call at batch {lat['batch_size']}")
    click.echo(f"budgeted batch classification: thresholds fit on {res.val_images} images, measured at batch {b}; "
               "ms/img: the timed chain run, exp ms: exit shares x ms to each exit")
    click.echo(f"{'p':>5} {'top-1':>7} {'MFLOPs':>8} {'ms/img':>7} {'exp ms':>7} {'ratio':>6}  exits")
    for r in res.budgeted[::2]:
        exp = f"{r['expected_ms']:>7.3f} {r['real_over_expected']:>6.2f}" if "expected_ms" in r else f"{'-':>7} {'-':>6}"
        click.echo(f"{r['p']:>5.2f} {100 * r['accuracy']:>7.2f} {r['expected_flops'] / 1e6:>8.2f} "
                   f"{r['measured_ms']:>7.3f} {exp}  {r['exit_counts']}")
