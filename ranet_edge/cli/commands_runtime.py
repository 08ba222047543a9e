"""Torch-free commands: info, predict, providers."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from . import cli
from .options import json_option


def provider_option(func):
    """``--provider`` (default ``cpu``) and ``--threads`` (intra-op threads per session)."""
    func = click.option("--threads", type=click.IntRange(min=1), default=None,
                        help="intra-op threads per session [default: 1]")(func)
    return click.option("--provider", default="cpu", show_default=True,
                        help="execution provider: cpu, cuda, tensorrt, openvino, coreml, nnapi, xnnpack, "
                             "dml, qnn, rocm, webgpu (qnn, openvino, webgpu also as plugin packages), "
                             "or a full ONNX Runtime name")(func)


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@json_option
def info(bundle: str, as_json: bool) -> None:
    """Per-exit cost, graph size, cache hand-over and tensor names of a bundle.
    \f
    Raises:
        BundleError: BUNDLE has no readable ranet-edge manifest.
    """
    from ranet_edge.info import bundle_info, dead_work_note

    rep = bundle_info(bundle)
    if as_json:
        click.echo(json.dumps(rep, indent=2, allow_nan=False))
        return
    model = rep.get("model") or {}
    click.echo(f"bundle {bundle}: {len(rep['exits'])} exits, granularity {rep['granularity']}, "
               f"{rep['precision']} {rep['graph_format']}, batch {rep['batch_size'] or 'dynamic'}, opset {rep['opset']}")
    if model.get("official_flags"):
        click.echo(f"model  {model['official_flags']}")
    click.echo(f"{'exit':>4} {'graph':<14} {'MFLOPs':>8} {'stage':>8} {'paid':>8} {'params M':>9} "
               f"{'graph KB':>9} {'cache KB':>9}  inputs -> outputs")
    for r in rep["exits"]:
        click.echo(f"{r['exit']:>4} {r['graph']:<14} {r['flops'] / 1e6:>8.2f} {r['stage_flops'] / 1e6:>8.2f} "
                   f"{r['run_flops'] / 1e6:>8.2f} {r['params'] / 1e6:>9.3f} {r['graph_bytes'] / 1024:>9.0f} "
                   f"{r['cache_bytes_per_sample'] / 1024:>9.1f}  {len(r['inputs'])} in -> "
                   f"{len(r['outputs'])} out")
    extra = [r["run_flops"] - r["flops"] for r in rep["exits"]]
    click.echo(f"total cache hand-over per sample: {rep['total_cache_bytes_per_sample'] / 1024:.1f} KB")
    if any(extra):
        mean = sum(extra) / len(extra) / 1e6
        click.echo("'MFLOPs' is the official cumulative count, as the papers report it; 'paid' is what a sample "
                   f"leaving there pays in this chain: {abs(mean):.2f} MFLOPs {'more' if mean > 0 else 'less'} "
                   "on average per exit")
    note = dead_work_note([r["flops"] for r in rep["exits"]], [r["dead_flops"] for r in rep["exits"]])
    if note:
        click.echo(note)
    if rep.get("mobile_report"):
        click.echo("mobile usability (share of nodes each EP takes):")
        for stage, r in rep["mobile_report"].items():
            click.echo(f"  {stage}: " + ", ".join(f"{ep} {v}" for ep, v in r.items()))
    if rep.get("compiled"):
        providers = sorted({p for forms in rep["compiled"].values() for p in forms})
        click.echo(f"compiled for {', '.join(providers)} (EPContext models, loaded by that provider): "
                   f"{len(rep['compiled'])} of {len({r['graph'] for r in rep['exits']})} graphs")
    for graph, r in (rep.get("qnn_placement") or {}).items():
        cpu = ", ".join(f"{n} {op}" for op, n in r["on_cpu"].items()) or "nothing"
        click.echo(f"  QNN HTP: {graph} {r['on_qnn']}/{r['nodes']} nodes ({r['share']:.0%}), on the CPU: {cpu}")
    if not rep["monolithic"]:
        click.echo("no monolithic graph: re-export with --monolithic to benchmark the chain against it")


def parse_thresholds(spec: str | None):
    """'0.9', '0.8,0.9,0.95' or an operating point name -> what ExitChain.predict takes."""
    if spec is None:
        return None
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        return spec  # an operating point name
    return values[0] if len(values) == 1 else values


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True)
@provider_option
@click.option("--thresholds", default=None, help="one value, a comma list per exit, or an operating point name")
@click.option("--rule", type=click.Choice(["max_prob", "entropy", "patience"]), default=None,
              help="exit rule [default: the operating point's, else max_prob]; entropy thresholds are max entropies")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="PABEE's t: leave once t exits in a row agree with this one's label (rule patience)")
@json_option
def predict(bundle: str, images: tuple[str, ...], provider: str, threads: int | None,
            thresholds: str | None, rule: str | None, patience: int | None, as_json: bool) -> None:
    """Classify image files; each stops at the first exit its exit rule takes it at.
    \f
    Raises:
        InputError: an image file does not exist.
        BundleError: BUNDLE is missing, malformed or tampered with.
        ProviderError: the provider is not offered by the installed onnxruntime.
        CalibrationError: ``--thresholds`` is malformed or names no stored operating point, or
            does not go with ``--rule`` / ``--patience``.
    """
    from ranet_edge.runtime import ExitChain, read_image

    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    if chain.session_providers[0][0] != "CPUExecutionProvider":  # what the provider took, never a silent CPU run
        for line in chain.placement_lines():
            click.echo(line, err=True)
    arrays = []
    for path in images:
        if not Path(path).is_file():
            raise InputError(f"image {path} does not exist")
        arrays.append(read_image(path))
    res = chain.predict(chain.preprocess(arrays), parse_thresholds(thresholds), rule=rule, patience=patience)
    names, counts = chain.class_names, chain.exit_classes  # class names name the last exit's classes
    rows = [{"image": p, "label": int(lab), "class": names[lab] if names and counts[e] == len(names) else str(lab),
             "exit": int(e),
             "confidence": round(float(c), 6)}
            for p, lab, e, c in zip(images, res.labels, res.exits, res.confidences)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, allow_nan=False))
        return
    for r in rows:
        click.echo(f"{r['image']}\t{r['class']} ({r['label']})\texit {r['exit']}\tconfidence {r['confidence']:.3f}")


@cli.command()
@json_option
def providers(as_json: bool) -> None:
    """List the execution providers this onnxruntime build offers."""
    from ranet_edge.runtime import available_providers
    from ranet_edge.runtime._ort import ort

    rows = available_providers()
    if as_json:
        click.echo(json.dumps({"onnxruntime": ort.__version__, "providers": rows}, indent=2, allow_nan=False))
        return
    click.echo(f"onnxruntime {ort.__version__}")
    for r in rows:
        plugin = (f"  (plugin {r['plugin']}: " + (", ".join(r["devices"]) or "no device on this machine") + ")"
                  if "plugin" in r else "")
        click.echo(f"  {r['short']:<10} {r['name']}{plugin}")
