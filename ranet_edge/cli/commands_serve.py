"""`ranet-edge serve`: the bundle over HTTP on Ray Serve, until Ctrl-C or SIGTERM
(ranet_edge/serve/ray_lifecycle.py)."""
from __future__ import annotations

import sys

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
    from ranet_edge.serve.ray_lifecycle import run_ray

    if haproxy and address:
        raise click.UsageError("--haproxy applies to the Ray this command starts; for a cluster, start its nodes "
                               "with RAY_SERVE_ENABLE_HA_PROXY=1 ray start ...")
    settings = ServeSettings(bundle=bundle, graph=graph, operating_point=operating_point, provider=provider,
                             threads=threads or 1, replicas=replicas, max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes)
    sys.exit(run_ray(settings, address, host, port, haproxy, echo=click.echo))
