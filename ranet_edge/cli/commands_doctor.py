"""`ranet-edge doctor`: onnxruntime builds, providers, CPU, torch, and a bundle's placement."""
from __future__ import annotations

import json

import click

from . import cli
from .options import json_option


@cli.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@click.option("--provider", default=None,
              help="provider for the bundle's graphs [default: the first accelerator that works, else cpu]")
@json_option
def doctor(bundle: str | None, provider: str | None, as_json: bool) -> None:
    """What this machine can run: onnxruntime builds, providers (really tried), CPU instruction
    sets, torch, and which provider runs each graph of BUNDLE. Run it when a provider is missing.
    \f
    Problems found are reported, not raised: the command succeeds whatever it finds.
    """
    from ..doctor import diagnose

    rep = diagnose(bundle, provider)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2, allow_nan=False))
        return
    builds = ", ".join(f"{b['name']} {b['version']}" for b in rep.onnxruntime_builds) or "none"
    rows = [
        ("python", f"{rep.python} ({rep.platform})"),
        ("cpu", f"{rep.cpu}: {' '.join(rep.cpu_features) or 'no SIMD sets found'}"),
        ("builds", builds),
        ("onnxruntime", f"{rep.onnxruntime} from {rep.onnxruntime_path}" if rep.onnxruntime else "cannot be imported"),
        ("providers", ", ".join(rep.providers) or "-"),
        ("accelerator", rep.gpu_hint or "none seen"),
        ("torch", f"{rep.torch} (export and train work)" if rep.torch else "not installed (runtime only)"),
    ]
    for name, value in rows:
        click.echo(f"{name:<12} {value}")
    for c in rep.accelerators:
        click.echo(f"{'':<12} {c.provider}: " + ("a session runs on it" if c.usable else f"UNUSABLE: {c.reason}"))
    for p in rep.plugins:
        if not p["installed"]:
            state = "not installed"
        elif p["error"]:
            state = f"UNUSABLE: {p['error']}"
        else:
            state = "devices: " + (", ".join(p["devices"]) or "none on this machine")
        click.echo(f"{'plugin':<12} {p['provider']} ({p['package']}): {state}")
    if rep.bundle is not None:
        b = rep.bundle
        click.echo(f"{'bundle':<12} {b['path']} with {b['provider']}" + (f": {b['error']}" if b["error"] else ""))
        for g in b["graphs"]:
            where = ", ".join(g["providers"]) or "no session"
            note = "" if g["all_nodes_on_first"] else f" (not every node on {b['provider']}{': ' + g['detail'] if g['detail'] else ''})"
            if g.get("nodes") and g["all_nodes_on_first"]:
                note = f" ({sum(g['nodes'].values())}/{sum(g['nodes'].values())} nodes)"
            click.echo(f"{'':<12} {g['graph']:<16} {where}{note}")
    if rep.problems:
        click.echo("problems:")
        for p in rep.problems:
            click.echo(f"  - {p}")
    else:
        click.echo("no problems found")
