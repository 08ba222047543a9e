"""``ranet-edge serve`` on Ray, start to stop: start (or join) Ray, deploy, print what serves
where, wait for SIGINT or SIGTERM, then stop within a bound and say so.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group. Ray's own processes
in that group block SIGINT and its actors run in process groups of their own, so the signal
lands here only; this process then drains and stops Serve and Ray itself
(:meth:`Server.close <ranet_edge.serve.launcher.Server.close>`, at most ``STOP_BUDGET_S``), and
kills, as a last resort, whatever the private Ray left running. A second signal cuts the
draining short.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import procs
from .launcher import Deployed, Flag, Server, bounded, serve_bundle
from .settings import ServeSettings

Echo = Callable[..., None]  # click.echo's shape: echo(message, err=False)


def _echo(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


class _Signals:
    """SIGINT and SIGTERM as events: the first asks to stop, the second to hurry. While
    ``raising`` (Ray starting), a signal also raises KeyboardInterrupt to abandon the start."""

    def __init__(self) -> None:
        self.stop, self.hurry = Flag(), Flag()
        self.raising = True
        self.name = ""

    def __call__(self, signum: int, frame) -> None:
        (self.hurry if self.stop.is_set() else self.stop).set()
        self.name = self.name or signal.Signals(signum).name
        if self.raising:
            self.raising = False  # once: the bounded stop that follows must not be cut again
            raise KeyboardInterrupt

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again: ray.init puts a C++ handler of its own on SIGTERM)."""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self)

    @contextmanager
    def installed(self) -> Iterator[_Signals]:
        before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        self.install()
        try:
            yield self
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)


def run_ray(settings: ServeSettings, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
            haproxy: bool = False, echo: Echo = _echo, model_name: str = "ranet-edge") -> int:
    """Serve ``settings`` on Ray until SIGINT or SIGTERM; the process's exit code.

    0 once stopped by a signal (also one that came while Ray was starting). Errors while
    starting raise, after stopping what had started. When a step of the stop had to be
    abandoned (Ray did not answer within its bound), this ends the process itself with
    ``os._exit`` once everything is flushed and killed, so that Ray's exit handlers cannot
    hang it.

    Meant for a process of its own (``ranet-edge serve``): with a local Ray, the last sweep
    kills and reaps every process below this one, all of them Ray's there.

    Raises:
        BundleError: the bundle does not load (checked before Ray starts).
        CalibrationError: an operating point the bundle does not store.
        ProviderError: a provider that is not available here.
        RayStartError: the private Ray did not come up.
        ServeError: the cluster cannot be reached, or Serve cannot start or deploy.
        InputError: a port that is taken, or ``haproxy`` with ``address``.
        MissingExtraError: Ray is not installed.
    """
    signals = _Signals()
    local = address is None
    if local:  # a Ray worker whose raylet is gone stays below us, for the last sweep
        procs.become_subreaper()
    try:
        with signals.installed():
            clean = _serve_until_signal(signals, settings, address, host, port, haproxy, echo, model_name)
    finally:
        if local:  # run in a process that goes on (a test): leave it as it was
            procs.become_subreaper(False)
    if clean:
        echo("stopped", err=True)
    else:
        why = "at once" if signals.hurry.is_set() else "Ray did not stop in time"
        echo(f"stopped ({why}: the processes of its private Ray were killed)" if local else f"stopped ({why})",
             err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _serve_until_signal(signals: _Signals, settings: ServeSettings, address: str | None, host: str, port: int,
                        haproxy: bool, echo: Echo, model_name: str = "ranet-edge") -> bool:
    """Start, serve until ``signals`` says stop, stop; True when the stop was clean."""
    local = address is None
    echo("starting Ray ..." if local else f"joining the Ray cluster at {address} ...", err=True)
    server = None
    try:
        server, app = serve_bundle(settings, address, host, port, quiet=True, haproxy=haproxy, model_name=model_name)
        signals.install()
        signals.raising = False
        if not signals.stop.is_set():  # a signal between the deploy and here
            print_summary(app, server, settings, haproxy, echo, model_name)
        while not signals.stop.is_set():
            time.sleep(0.2)
    except KeyboardInterrupt:
        echo(f"{signals.name or 'interrupted'} while starting; stopping ...", err=True)
    else:
        echo(f"{signals.name}: shutting down (again to stop at once) ...", err=True)
    return _stop(server, local, signals.hurry)


def _stop(server: Server | None, local: bool, hurry: Flag) -> bool:
    """Close ``server`` (or a Ray left half-started), then, local Ray, kill what is left below
    this process (all of it Ray's: this process starts nothing else) and reap it."""
    ray = sys.modules.get("ray")
    if server is not None:
        clean = server.close(hurry=hurry)
    else:
        clean = ray is None or not ray.is_initialized() or bounded(ray.shutdown, 4.0, hurry)
    if local:
        left = {p for p in procs.descendants(os.getpid()) if p[0] != os.getpid()}
        for _ in range(50):  # a second for those already on their way out
            if not (left := procs.alive(left)):
                break
            time.sleep(0.02)
        if left:
            clean = False
            procs.kill(left)
        procs.reap()
    if not clean and ray is not None:  # Ray's exit handler would wait on the step that was abandoned
        atexit.unregister(ray.shutdown)
    return clean


def print_summary(app: Deployed, server: Server, settings: ServeSettings, haproxy: bool, echo: Echo = _echo,
                  model_name: str = "ranet-edge") -> None:
    """What ``ranet-edge serve`` prints once it answers: URL, model, replicas, ingress, routes."""
    from .engine import input_words, v1_body

    s = app.summary
    points = [f"{name}{' (default)' if name == s['default_operating_point'] else ''}" for name in s["operating_points"]]
    echo(f"ranet-edge serving at {app.url}")
    echo(f"model      {s['bundle']}: {len(s['exits'])} exits, {s['num_classes']} classes, "
         f"{input_words(s)}, graph {s['graph']}")
    replicas = (f"{settings.min_replicas}-{settings.max_replicas} replicas (autoscaled: about "
                f"{settings.target_ongoing_requests:g} requests in flight each)" if settings.replicas == "auto"
                else f"{settings.replicas} replica(s)")
    echo(f"runs on    {replicas}, provider {settings.provider} "
         f"({', '.join(s['session_providers'])}), {settings.threads} thread(s) each")
    ingress = "HAProxy, direct to the replicas" if haproxy else "Serve HTTP proxy"
    if not server.local:
        ingress += (" on the head node, then an ingress that sends a request whose replica was lost to "
                    "another, once")
    echo(f"ingress    {ingress}")
    echo(f"batching   {'survivors batched across requests graph by graph' if settings.stage_batching else 'batch by batch'}"
         f" in each replica, up to {settings.max_batch} images, waiting {settings.batch_wait_ms:g} ms; "
         f"bodies up to {settings.max_body_bytes} bytes")
    echo(f"operating points: {', '.join(points) or 'none stored: every image runs to the last exit'}")
    echo(f"  POST {app.url}/v1/classify   {v1_body(s)}; "
         "?operating_point=NAME")
    echo(f"  GET  {app.url}/v1/model")
    echo(f"  GET  {app.url}/v1/health")
    echo(f"  POST {app.url}/v2/models/{model_name}/infer   Open Inference Protocol (KServe v2), JSON or binary tensors")
    echo(f"  GET  {app.url}/v2, /v2/health/live, /v2/health/ready, /v2/models/{model_name}[/ready]")
    echo(f"  metrics (Prometheus) {app.url}/metrics (the replica that answers)")
    metrics = server.metrics_url
    if metrics:
        echo(f"  Ray's metrics (Prometheus) {metrics}")
    if server.ray is not None:
        echo(f"Ray's logs {server.ray.logs_dir}")
    echo("Press Ctrl-C to stop.")
