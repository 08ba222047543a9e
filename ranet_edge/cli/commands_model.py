"""Commands that need torch: inspect, train, export."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CheckpointError, DataError, require
from . import cli
from .options import arch_options, json_option, pop_arch, resolve_arch


def _load(ckpt: str, preset, flags):
    from ..checkpoint import load_checkpoint

    config, source, arch = resolve_arch(preset, flags)
    return load_checkpoint(ckpt, config, source, arch)


@cli.command()
@click.argument("ckpt", type=click.Path())
@arch_options
@json_option
def inspect(ckpt: str, as_json: bool, **kwargs) -> None:
    """Show a checkpoint's architecture, exits and cumulative FLOPs/params per exit.
    \f
    Raises:
        CheckpointError: CKPT is a bundle or a graph, or cannot be loaded (see
            :func:`ranet_edge.checkpoint.load_checkpoint`).
        MissingExtraError: torch is not installed (the ``export`` extra).
        ConfigError: bad ``--preset``, ``--arch`` or architecture flags.
    """
    from ..checkpoint import not_a_checkpoint

    instead = not_a_checkpoint(ckpt)  # a bundle or a graph: say so, torch or not
    if instead:
        raise CheckpointError(instead)
    require("torch", "export")
    preset, flags = pop_arch(kwargs)
    loaded = _load(ckpt, preset, flags)
    costs = loaded.model.exit_costs()
    report = {
        "config": loaded.config.to_dict(),
        "exits": len(costs),
        "flops": [c.flops for c in costs],
        "params": [c.params for c in costs],
        "dead_flops": [c.dead_flops for c in costs],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    from ..architectures import NAMES

    click.echo(f"checkpoint   {ckpt} ({loaded.layout} layout, {NAMES[loaded.config.arch]}, "
               f"architecture {loaded.config_source})")
    click.echo(f"flags        {loaded.config.official_flags()}")
    click.echo(f"exits        {len(costs)}, {loaded.config.num_classes} classes, "
               f"input 3x{loaded.config.image_size}x{loaded.config.image_size}")
    click.echo(f"{'exit':>4} {'MFLOPs':>10} {'params (M)':>11}")
    for k, c in enumerate(costs):
        click.echo(f"{k:>4} {c.flops / 1e6:>10.2f} {c.params / 1e6:>11.3f}")
    from ..info import dead_work_note

    note = dead_work_note(report["flops"], report["dead_flops"])
    if note:
        click.echo(note)


@cli.command()
@click.option("--data", "data_path", required=True, help="dataset: ImageFolder root, CIFAR batches or .npz")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet", "folder"]), default=None,
              help="dataset family: picks the default architecture and the augmentation")
@arch_options(with_data=False)
@click.option("--epochs", type=int, default=300, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--schedule", type=click.Choice(["multistep", "cosine"]), default="multistep", show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--nesterov", is_flag=True, help="Nesterov momentum")
@click.option("--val-size", type=int, default=5000, show_default=True, help="held-out validation images")
@click.option("--workers", type=int, default=0, show_default=True, help="image decoding threads for file datasets that are not preloaded")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch intra-op threads")
@click.option("--out", default="runs/ranet", show_default=True, help="checkpoint directory")
@click.option("--resume", is_flag=True, help="continue from OUT/last.pt (its architecture when no flags are given)")
@click.option("--init", "init", default=None, type=click.Path(dir_okay=False),
              help="start from this checkpoint's weights (RANet or MSDNet, ours or official); its "
                   "architecture is recognised from its keys and shapes")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-batches", type=int, default=None, hidden=True)
def train(data_path: str, dataset: str | None, threads: int | None, **kwargs) -> None:
    """Train a RANet or an MSDNet (summed cross-entropy over exits, SGD); works under torchrun.
    \f
    Raises:
        MissingExtraError: torch is not installed (the ``train`` extra).
        DataError: ``--data`` does not exist or cannot be read, or ``--resume`` finds a
            ``last.pt`` without a stored architecture.
        ConfigError: bad ``--preset``, ``--arch`` or architecture flags.
        CheckpointError: ``--init`` or ``--resume`` cannot be loaded into the architecture.
    """
    torch = require("torch", "train")
    from ..train import TrainOptions
    from ..train import train as run_train

    if not Path(data_path).exists():
        raise DataError(f"dataset {data_path} does not exist; pass --data with an ImageFolder root, "
                        "CIFAR python batches or an .npz")
    preset, flags = pop_arch(kwargs)
    if dataset and flags.get("data") is None and not preset:
        flags["data"] = {"imagenet": "ImageNet", "folder": "cifar10"}.get(dataset, dataset)
    config, source, arch = resolve_arch(preset, flags)
    last = Path(kwargs["out"]) / "last.pt"
    if config is None and kwargs.get("init"):
        from ..checkpoint import load_checkpoint

        config = load_checkpoint(kwargs["init"], None, source, arch).config
    elif config is None and kwargs["resume"] and last.exists():
        from ..architectures import config_from_dict
        from ..checkpoint import read_checkpoint_file

        state = read_checkpoint_file(last)
        if "config" not in state:
            raise DataError(f"{last} is not a ranet-edge training checkpoint; remove it or drop --resume")
        config = config_from_dict(state["config"])
    elif config is None:
        from ..architectures import config_type

        config = config_type(arch or "ranet")()
    if threads:
        torch.set_num_threads(threads)
    augment = "imagenet" if dataset == "imagenet" else ("cifar" if dataset in ("cifar10", "cifar100") else "auto")
    opts = TrainOptions(data=data_path, augment=augment, **kwargs)
    click.echo(f"training {config.official_flags()} for {opts.epochs} epochs -> {opts.out}", err=True)
    run_train(config, opts)


def default_checkpoint() -> Path:
    """The bundled, trained default model."""
    from ..assets import DEFAULT_CHECKPOINT

    return DEFAULT_CHECKPOINT


@cli.command()
@click.argument("ckpt", required=False, type=click.Path())
@click.option("-o", "--out", "out", default=None, help="bundle directory [default: <ckpt name>.bundle]")
@arch_options
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset")
@click.option("--batch-size", type=int, default=None, help="static batch size (mobile EPs); default dynamic")
@click.option("--no-simplify", is_flag=True, help="skip onnxsim")
@click.option("--monolithic", is_flag=True, help="also write the whole model as one graph (bench baseline)")
@click.option("--granularity", type=click.Choice(["exit", "subnetwork"]), default="exit", show_default=True,
              help="one graph per exit, or one per RANet sub-network")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="max |diff| / max |logit| allowed at every exit")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx.export's path (dynamo: the 'dynamo' extra, --opset 18 or later)")
@click.option("--force", is_flag=True, help="replace a non-empty output directory")
def export(ckpt: str | None, out: str | None, opset: int, batch_size: int | None, no_simplify: bool,
           monolithic: bool, granularity: str, tolerance: float, exporter: str, force: bool, **kwargs) -> None:
    """Export a checkpoint to a bundle of chained per-exit ONNX graphs, validated against PyTorch.
    \f
    Raises:
        click.BadParameter: ``--batch-size`` below 1.
        CheckpointError: CKPT is a bundle or a graph, or cannot be loaded.
        MissingExtraError: torch or onnx is not installed (the ``export`` extra).
        ExportError: no CKPT and no bundled default model, a non-empty ``--out`` without
            ``--force``, or a failed export step.
        ValidationError: an exit differs from PyTorch by more than ``--tolerance``.
        ConfigError: bad ``--preset``, ``--arch`` or architecture flags.
    """
    import time

    from ..checkpoint import not_a_checkpoint

    instead = not_a_checkpoint(ckpt) if ckpt else None  # a bundle or a graph: say so, torch or not
    if instead:
        raise CheckpointError(instead)
    require("torch", "export")
    require("onnx", "export")
    from ..errors import ExportError
    from ..export.exporter import ExportSpec
    from ..export.ranet import export_checkpoint

    if batch_size is not None and batch_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--batch-size")
    if ckpt is None:
        ckpt = str(default_checkpoint())
        if not Path(ckpt).exists():
            raise ExportError("no checkpoint given and no bundled default model in this install; "
                              "pass a checkpoint path")
        click.echo(f"exporting the bundled default model {Path(ckpt).name}", err=True)
    preset, flags = pop_arch(kwargs)
    config, source, arch = resolve_arch(preset, flags)
    out = out or (Path(ckpt).name.split(".")[0] + ".bundle")
    spec = ExportSpec(opset=opset, batch_size=batch_size, simplify=not no_simplify, monolithic=monolithic,
                      granularity=granularity, tolerance=tolerance, exporter=exporter)
    t0 = time.perf_counter()
    result = export_checkpoint(ckpt, out, spec, config, source, force=force,
                               arch=arch)
    exits = result.manifest["exits"]
    click.echo(f"wrote {out}: {len(result.manifest['graphs'])} graphs for {len(exits)} exits "
               f"in {time.perf_counter() - t0:.1f}s; next: ranet-edge info {out}")
