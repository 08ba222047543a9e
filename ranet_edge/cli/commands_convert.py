"""`ranet-edge convert`: ORT format, int8 and fp16 bundles."""
from __future__ import annotations

import click

from ..errors import DataError
from . import cli


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, help="directory of the converted bundle")
@click.option("--to", "target", required=True, help="ort (mobile, static shapes), int8 (static QDQ) or fp16 (GPU)")
@click.option("--batch-size", type=int, default=1, show_default=True, help="static batch of the ort target")
@click.option("--data", "data_path", default=None, help="calibration images (required for int8)")
@click.option("--calib-size", type=int, default=256, show_default=True, help="images used to calibrate int8")
@click.option("--mobile-ops/--keep-ops", default=True, show_default=True,
              help="ort: rewrite align_corners Resize as MatMuls and Flatten as Reshape (same maths)")
@click.option("--force", is_flag=True, help="replace a non-empty output directory")
def convert(bundle, out, target, batch_size, data_path, calib_size, mobile_ops, force) -> None:
    """Convert a bundle for the edge: ORT format, int8 or fp16, as a new complete bundle."""
    from ranet_edge.errors import ExportError, require

    require("onnx", "export")
    from ranet_edge.data import load_labelled
    from ranet_edge.export.convert import TARGETS, convert_bundle

    if target not in TARGETS:
        raise ExportError(f"unknown --to {target!r}; use one of: {', '.join(TARGETS)}")
    if target == "int8" and data_path is None:
        raise DataError("--to int8 needs --data with real calibration images (ImageFolder, CIFAR batches or .npz)")
    images = None
    if data_path is not None or target != "int8":
        try:
            images = load_labelled(data_path).images
        except DataError:
            if data_path is not None:
                raise
    data = convert_bundle(bundle, out, target, batch_size, images, calib_size, force,
                          mobile_ops=mobile_ops)
    click.echo(f"wrote {out} ({data['precision']}, {data['graph_format']}); next: ranet-edge info {out}")
    check = data.get("conversion_check")
    if check:
        click.echo("top-1 agreement with fp32 per exit on " + f"{check['images']} images: "
                   + ", ".join(f"{100 * a:.1f}%" for a in check["top1_agreement"]))
