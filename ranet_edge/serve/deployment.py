"""The Ray Serve deployment: one more ingress in front of the same engine and routes.

A replica holds one :class:`~ranet_edge.serve.stage_engine.StageEngine` (survivors batched
across requests graph by graph, early answers, the bounded queue) and hands every request to
the same :class:`~ranet_edge.serve.routes.Routes` the one-process server uses: ``/v1``,
the Open Inference Protocol's ``/v2`` and ``/metrics`` (this replica's own counters) answer
alike on both ingresses.

On a cluster (:func:`build_deployment` with ``retry``) the replicas sit behind
:class:`~ranet_edge.serve.ray_ingress.RetryingIngress`, which reads each request and hands it
to :meth:`RanetServer.handle`, again on another replica when the first died mid-request.
"""
from __future__ import annotations

import asyncio
import os
import re

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from .api import RequestError
from .engine import ServedModel
from .metrics import Metrics
from .ray_ingress import HEAD_RESOURCE, INGRESS_ONGOING, RetryingIngress
from .routes import Routes, too_big
from .settings import ServeSettings
from .stage_engine import StageEngine

DRAIN_POLL_S = 0.05  # how often a replica looks for the drain file
# --replicas auto: Serve's autoscaler looks at the requests in flight per replica; these delays
# let it add replicas within seconds of a queue building up and remove them half a minute after
UPSCALE_DELAY_S = 5.0
DOWNSCALE_DELAY_S = 30.0
LOOK_BACK_S = 10.0  # the window the requests in flight are averaged over (Serve's default: 30 s)


class RanetServer:
    """An HTTP ingress deployment serving one bundle (see ``ServeSettings``).

    Raises:
        ConfigError: ``settings`` that ``ServeSettings.from_dict`` refuses.
        BundleError: a bundle that does not load (see :class:`~ranet_edge.serve.engine.ServedModel`).
        CalibrationError: an operating point the bundle does not store.
        ProviderError: a provider that is not available on the replica's node.
        InputError: an executor that cannot batch rows of several requests.
    """

    def __init__(self, settings: dict, drain_file: str | None = None, model_name: str = "ranet-edge"):
        self.settings = ServeSettings.from_dict(settings)
        self.model = ServedModel(self.settings)
        self.engine = StageEngine(self.model)
        self.metrics = Metrics(self.engine, self.engine.max_batch)
        self.engine.on_batch = self.metrics.on_batch
        # the replica and the first 12 hex digits of its Ray node's id: which machine answered
        self.replica = f"{serve.get_replica_context().replica_tag}@{ray.get_runtime_context().get_node_id()[:12]}"
        self.routes = Routes(self.engine, self.metrics, model_name, replica=self.replica)
        self._watch = None
        if drain_file:  # Serve runs this constructor on the replica's event loop
            self._watch = asyncio.get_running_loop().create_task(self._watch_drain(drain_file))

    async def _watch_drain(self, drain_file: str) -> None:
        """Once ``drain_file`` exists (the server is stopping): answer new requests 503, let those
        in flight finish, then say so with an ``.idle`` file beside it, named by this replica."""
        while not os.path.exists(drain_file):
            await asyncio.sleep(DRAIN_POLL_S)
        self.routes.draining = True
        while self.routes.in_flight:
            await asyncio.sleep(0.01)
        await self.engine.close(1.0)
        marker = f"{drain_file}.{re.sub(r'[^A-Za-z0-9_.-]', '_', self.replica)}.idle"
        with open(marker + ".tmp", "w"):
            pass
        os.replace(marker + ".tmp", marker)

    async def handle(self, method: str, path: str, query: dict, headers: dict, body: bytes,
                     over: bool) -> tuple[int, dict, bytes]:
        """One request read by the :class:`~ranet_edge.serve.ray_ingress.RetryingIngress`:
        (status, headers, body) of the answer. ``over``: the body went past the ingress's limit.
        A streamed answer (server-sent events) is gathered whole here: behind the retrying
        ingress its events arrive together, once the last is out."""
        await self.engine.start()

        async def read_body(limit: int) -> bytes:
            if over or len(body) > limit:
                raise too_big(limit)
            return body

        reply = await self.routes.handle(method, path, query, headers, read_body)
        if reply.stream is not None:
            return reply.status, reply.headers, b"".join([chunk async for chunk in reply.stream])
        return reply.status, reply.headers, reply.body

    async def __call__(self, request: Request) -> Response:
        await self.engine.start()
        path = request.scope["path"]
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = {k.lower(): v for k, v in request.headers.items()}

        async def read_body(limit: int) -> bytes:
            """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise too_big(limit)
            chunks, size = [], 0
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise too_big(limit)
                    chunks.append(chunk)
            except OSError:
                raise RequestError(400, "the client closed the connection before the body arrived") from None
            return b"".join(chunks)

        reply = await self.routes.handle(request.method, path, dict(request.query_params), headers, read_body)
        if reply.stream is not None:  # server-sent events
            from starlette.responses import StreamingResponse

            return StreamingResponse(reply.stream, status_code=reply.status, headers=reply.headers)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)


def running_replicas(apps: list[str]) -> int:
    """Replicas Serve reports running in the applications ``apps`` (0 when it cannot say)."""
    if not apps:
        return 0
    try:
        status = serve.status().applications
        return sum(d.replica_states.get("RUNNING", 0) for a in apps if a in status
                   for d in status[a].deployments.values())
    except Exception:  # Serve not answering: a drain then waits for none
        return 0


def replica_options(settings: ServeSettings) -> dict:
    """``num_replicas``, or with ``replicas="auto"`` Serve's ``autoscaling_config`` from the
    settings (``min_replicas`` .. ``max_replicas``, ``target_ongoing_requests`` per replica)."""
    if settings.replicas != "auto":
        return {"num_replicas": settings.replicas}
    return {"num_replicas": "auto", "autoscaling_config": {
        "min_replicas": settings.min_replicas, "initial_replicas": settings.min_replicas,
        "max_replicas": settings.max_replicas, "target_ongoing_requests": settings.target_ongoing_requests,
        "upscale_delay_s": UPSCALE_DELAY_S, "downscale_delay_s": DOWNSCALE_DELAY_S,
        "look_back_period_s": LOOK_BACK_S}}


def build_deployment(settings: ServeSettings, name: str = "ranet-edge", drain_file: str | None = None,
                     model_name: str = "ranet-edge", retry: bool = False) -> serve.Application:
    """The bound application for ``serve.run``, with ``settings.replicas`` replicas (or
    autoscaled, :func:`replica_options`).

    ``drain_file`` (a path on every node that runs a replica): once it exists, the replicas
    answer new requests 503 and, their requests in flight answered, create
    ``DRAIN_FILE.REPLICA.idle`` beside it (``Server.close`` waits for those).

    ``retry`` (a cluster): the replicas are deployment ``name`` behind ``NAME-ingress``, one
    :class:`~ranet_edge.serve.ray_ingress.RetryingIngress` on the head node that tries a
    request whose replica died once more on another."""
    model = serve.deployment(RanetServer, name=name).options(
        # requests in flight per replica: the engine's bounded queue answers 503 beyond its own limit
        max_ongoing_requests=max(2 * settings.max_batch, 8),
        ray_actor_options={"num_cpus": settings.threads},
        **replica_options(settings),
    ).bind(settings.to_dict(), None if retry else drain_file, model_name)
    if not retry:
        return model
    return serve.deployment(RetryingIngress, name=f"{name}-ingress").options(
        num_replicas=1, max_ongoing_requests=INGRESS_ONGOING,
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}},
    ).bind(model, settings.max_body_bytes)
