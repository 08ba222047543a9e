"""`ranet-edge convert`: ORT format, int8, fp16 and QNN (int8 for the Qualcomm HTP) bundles."""
from __future__ import annotations

import click

from ..errors import DataError
from . import cli


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--out", required=True, help="directory of the converted bundle")
@click.option("--to", "target", required=True, help="ort (mobile, static shapes), int8 (static QDQ), fp16 (GPU) or qnn (int8, static shapes, "
                   "compiled for the Qualcomm HTP)")
@click.option("--batch-size", type=int, default=1, show_default=True, help="static batch of the ort and qnn targets")
@click.option("--data", "data_path", default=None, help="calibration images (required for int8)")
@click.option("--calib-size", type=int, default=256, show_default=True, help="images used to calibrate int8")
@click.option("--mobile-ops/--keep-ops", default=True, show_default=True,
              help="ort: rewrite align_corners Resize as MatMuls and Flatten as Reshape (same maths)")
@click.option("--qnn-context/--no-qnn-context", default=True, show_default=True,
              help="qnn: compile each graph for the HTP into an EPContext model (needs onnxruntime-qnn)")
@click.option("--force", is_flag=True, help="replace a non-empty output directory")
def convert(bundle, out, target, batch_size, data_path, calib_size, mobile_ops, qnn_context, force) -> None:
    """Convert a bundle for the edge: ORT format, int8, fp16 or qnn, as a new complete bundle.
    \f
    Raises:
        MissingExtraError: onnx is not installed (the ``export`` extra).
        ExportError: an unknown ``--to``, or the conversion fails.
        DataError: int8 or qnn without ``--data``, or images that cannot be read.
        RanetEdgeError: as ``ranet_edge.export.convert.convert_bundle``.
    """
    from ranet_edge.errors import ExportError, require

    require("onnx", "export")
    from ranet_edge.data import load_labelled
    from ranet_edge.export.convert import TARGETS, convert_bundle

    if target not in TARGETS:
        raise ExportError(f"unknown --to {target!r}; use one of: {', '.join(TARGETS)}")
    if target in ("int8", "qnn") and data_path is None:
        raise DataError(f"--to {target} needs --data with real calibration images (ImageFolder, CIFAR batches or .npz)")
    images = None
    if data_path is not None or target not in ("int8", "qnn"):
        try:
            images = load_labelled(data_path).images
        except DataError:
            if data_path is not None:
                raise
    data = convert_bundle(bundle, out, target, batch_size, images, calib_size, force,
                          mobile_ops=mobile_ops, compile_qnn=qnn_context)
    click.echo(f"wrote {out} ({data['precision']}, {data['graph_format']}); next: ranet-edge info {out}")
    check = data.get("conversion_check")
    if check:
        click.echo("top-1 agreement with fp32 per exit on " + f"{check['images']} images: "
                   + ", ".join(f"{100 * a:.1f}%" for a in check["top1_agreement"]))
