"""`ranet-edge serve`: the bundle over HTTP (and gRPC) until Ctrl-C or SIGTERM: in this one
process (ranet_edge/serve/local.py), or on Ray Serve with --ray (ranet_edge/serve/ray_lifecycle.py)."""
from __future__ import annotations

import logging
import sys

import click

from . import cli
from .commands_runtime import provider_option


@cli.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="address the server listens on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="HTTP port (0: one the OS picks, printed at start; one-process server only)")
@click.option("--max-batch", type=int, default=64, show_default=True,
              help="most images one graph run takes (a request with more is refused)")
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True,
              help="longest a row waits for more rows to join it, over all its graphs")
@click.option("--stage-batching/--no-stage-batching", default=True, show_default=True,
              help="batch the survivors of all requests graph by graph; off: each batch runs all its graphs "
                   "before the next starts (the baseline)")
@click.option("--device-io/--no-device-io", default=None,
              help="keep feature maps in device memory between graphs (IOBinding) [default: on for GPU providers]")
@click.option("--max-queue", type=int, default=1024, show_default=True,
              help="images accepted and not yet decided; requests beyond it get 503 with Retry-After")
@click.option("--timeout-s", type=float, default=30.0, show_default=True,
              help="a request not answered this long after it arrived gets 504 (408 if its body is still arriving)")
@click.option("--operating-point", default=None, help="stored point for requests that name none [default: the bundle's]")
@click.option("--slo-ms", type=float, default=None,
              help="latency objective: requests naming no point get the most accurate ladder rung predicted to "
                   "answer within S ms (needs `calibrate --ladder N`); past the floor, 503")
@click.option("--min-point", default=None, help="--slo-ms: the cheapest ladder rung used [default: ladder-0]")
@provider_option
@click.option("--graph", type=click.Choice(["chain", "monolithic"]), default="chain", show_default=True,
              help="monolithic: serve the whole-model graph (no early exit), the baseline")
@click.option("--max-body-bytes", type=int, default=8 * 1024 * 1024, show_default=True,
              help="larger request bodies are refused with 413")
@click.option("--model-name", default="ranet-edge", show_default=True,
              help="the model's name in the Open Inference Protocol (/v2/models/NAME)")
@click.option("--max-length", type=click.IntRange(1), default=512, show_default=True,
              help="text bundles: the longest sequence a request may send (texts on /v1 are truncated to it)")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=None,
              help="also serve the KServe GRPCInferenceService on this port (one-process server)")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="one line per request on stderr (logger ranet_edge.serve.access)")
@click.option("--ray", "use_ray", is_flag=True,
              help="serve on Ray Serve (replicas, clusters) instead of this one process: needs the ray extra")
@click.option("--replicas", default="1", show_default=True,
              help="--ray: model replicas, one process each; 'auto': as many as the load needs (Serve's autoscaling, "
                   "between --min-replicas and --max-replicas)")
@click.option("--min-replicas", type=int, default=1, show_default=True, help="--replicas auto: the fewest replicas")
@click.option("--max-replicas", type=int, default=4, show_default=True, help="--replicas auto: the most replicas")
@click.option("--target-ongoing-requests", type=float, default=4.0, show_default=True,
              help="--replicas auto: add replicas while more requests than this are in flight per replica")
@click.option("--address", default=None,
              help="--ray: join a running Ray cluster ('auto' on one of its nodes, or HEAD:PORT) instead of starting Ray")
@click.option("--haproxy", is_flag=True,
              help="--ray: HAProxy instead of Serve's Python proxy, talking to the replicas directly (local Ray "
                   "only; its stats ports 8404/9101 listen on all interfaces)")
def serve(bundle, host, port, max_batch, batch_wait_ms, stage_batching, device_io, max_queue, timeout_s, operating_point,
          slo_ms, min_point, provider, threads, graph, max_body_bytes, model_name, max_length, grpc_port, access_log, use_ray,
          replicas, min_replicas, max_replicas, target_ongoing_requests, address, haproxy) -> None:
    """Serve BUNDLE (default: the shipped model) over HTTP: /v1 and the Open Inference Protocol
    (/v2), survivors batched across requests graph by graph, early answers, Prometheus metrics.
    \f
    Raises:
        click.UsageError: Ray-only options without ``--ray``, or with ``--ray``: ``--haproxy``
            with ``--address``, ``--grpc-port``, or ``--port 0``.
        SystemExit: always, with the server's exit status once it stops.
        RanetEdgeError: the bundle, provider or settings are refused, or Ray does not start
            (:class:`~ranet_edge.errors.ServeError`).
    """
    from ranet_edge.serve import ServeSettings

    if not use_ray:
        given = [flag for flag, on in (("--address", address), ("--replicas", replicas != "1"), ("--haproxy", haproxy))
                 if on]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to Ray Serve: add --ray (and the ray extra: "
                                   "pip install 'ranet-edge[ray]')")
    else:
        if haproxy and address:
            raise click.UsageError("--haproxy applies to the Ray this command starts; for a cluster, start its nodes "
                                   "with RAY_SERVE_ENABLE_HA_PROXY=1 ray start ...")
        if grpc_port is not None:
            raise click.UsageError("--grpc-port is served by the one-process server; drop --ray, or --grpc-port")
        if port == 0:
            raise click.UsageError("--ray needs a fixed --port (Serve's proxy does not report one the OS picked)")
    if replicas.strip().lower() == "auto":
        replicas = "auto"
    elif replicas.strip().isdigit():
        replicas = int(replicas)
    else:
        raise click.BadParameter(f"{replicas!r} is neither a whole number nor 'auto'", param_hint="--replicas")
    settings = ServeSettings(bundle=bundle, graph=graph, operating_point=operating_point, provider=provider,
                             threads=threads or 1, replicas=replicas, min_replicas=min_replicas,
                             max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                             max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes,
                             stage_batching=stage_batching, max_queue=max_queue, timeout_s=timeout_s,
                             device_io=device_io, slo_ms=slo_ms, min_point=min_point, max_length=max_length)
    logging.getLogger("ranet_edge.serve.access").setLevel(logging.INFO if access_log else logging.WARNING)
    if use_ray:
        from ranet_edge.serve.ray_lifecycle import run_ray

        sys.exit(run_ray(settings, address, host, port, haproxy, echo=click.echo, model_name=model_name))
    from ranet_edge.serve.local import run_local

    sys.exit(run_local(settings, host, port, model_name, grpc_port, echo=click.echo))
