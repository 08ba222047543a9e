"""`ranet-edge serve`: the bundle over HTTP on Ray Serve, until Ctrl-C."""
from __future__ import annotations

import signal
import time

import click

from . import cli
from .commands_runtime import provider_option


@cli.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="address the HTTP proxy listens on")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True, help="model replicas, one process each")
@click.option("--max-batch", type=int, default=64, show_default=True, help="most images one batch runs")
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True,
              help="how long a batch waits for more requests after its first")
@click.option("--operating-point", default=None, help="stored point for requests that name none [default: the bundle's]")
@provider_option
@click.option("--graph", type=click.Choice(["chain", "monolithic"]), default="chain", show_default=True,
              help="monolithic: serve the whole-model graph (no early exit), the baseline")
@click.option("--address", default=None,
              help="join a running Ray cluster ('auto' on one of its nodes, or HEAD:PORT) instead of starting Ray here")
@click.option("--max-body-bytes", type=int, default=8 * 1024 * 1024, show_default=True,
              help="larger request bodies are refused with 413")
@click.option("--haproxy", is_flag=True,
              help="HAProxy instead of Serve's Python proxy, talking to the replicas directly: several times "
                   "the requests per second (local Ray only; its stats ports 8404/9101 listen on all interfaces)")
def serve(bundle, host, port, replicas, max_batch, batch_wait_ms, operating_point, provider, threads, graph,
          address, max_body_bytes, haproxy) -> None:
    """Serve BUNDLE (default: the shipped model) over HTTP with dynamic batching and per-sample exit."""
    from ranet_edge.serve import ServeSettings
    from ranet_edge.serve.launcher import serve_bundle

    if haproxy and address:
        raise click.UsageError("--haproxy applies to the Ray this command starts; for a cluster, start its nodes "
                               "with RAY_SERVE_ENABLE_HA_PROXY=1 ray start ...")
    settings = ServeSettings(bundle=bundle, graph=graph, operating_point=operating_point, provider=provider,
                             threads=threads or 1, replicas=replicas, max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes)
    click.echo("starting Ray ..." if address is None else f"joining the Ray cluster at {address} ...", err=True)
    server, app = serve_bundle(settings, address, host, port, quiet=True, haproxy=haproxy)
    # SIGTERM (a service manager stopping us) shuts down like Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _print_summary(app, server, settings, haproxy)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("shutting down ...", err=True)
    finally:
        server.close()
    click.echo("stopped", err=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_summary(app, server, settings, haproxy: bool) -> None:
    s = app.summary
    points = [f"{name}{' (default)' if name == s['default_operating_point'] else ''}" for name in s["operating_points"]]
    click.echo(f"ranet-edge serving at {app.url}")
    click.echo(f"model      {s['bundle']}: {len(s['exits'])} exits, {s['num_classes']} classes, "
               f"input {s['input']['size']}x{s['input']['size']}, graph {s['graph']}")
    click.echo(f"runs on    {settings.replicas} replica(s), provider {settings.provider} "
               f"({', '.join(s['session_providers'])}), {settings.threads} thread(s) each")
    click.echo(f"ingress    {'HAProxy, direct to the replicas' if haproxy else 'Serve HTTP proxy'}")
    click.echo(f"batching   up to {settings.max_batch} images, waiting {settings.batch_wait_ms:g} ms; "
               f"bodies up to {settings.max_body_bytes} bytes")
    click.echo(f"operating points: {', '.join(points) or 'none stored: every image runs to the last exit'}")
    click.echo(f"  POST {app.url}/v1/classify   image/jpeg or image/png body, or a JSON list of base64 images; "
               "?operating_point=NAME")
    click.echo(f"  GET  {app.url}/v1/model")
    click.echo(f"  GET  {app.url}/v1/health")
    metrics = server.metrics_url
    if metrics:
        click.echo(f"  metrics (Prometheus) {metrics}")
    click.echo("Press Ctrl-C to stop.")
