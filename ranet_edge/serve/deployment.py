"""The Ray Serve deployment: HTTP routes, dynamic batching with early answers, metrics.

One replica holds one :class:`ServedModel`. Requests are batched by ``@serve.batch``
(counted in images); the batch handler is an async generator that runs the batch one graph
at a time in a worker thread and, after each graph, yields the answers of the requests whose
images have all left, so a request decided at exit 0 is answered while later graphs still
run for the rest of its batch. Requests asking for different operating points share a batch
and are routed in one group per point.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time

from ray import serve
from ray.serve.metrics import Counter, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse

from ranet_edge.errors import RanetEdgeError

from .api import RequestError, error_body, parse_images
from .engine import BatchRun, Job, ServedModel, images_in
from .settings import ServeSettings

log = logging.getLogger("ray.serve")

INLINE_DECODE_BYTES = 64 * 1024  # bodies smaller than this are decoded on the event loop
ROUTES = "the API is POST /v1/classify, GET /v1/model and GET /v1/health"
DRAIN_POLL_S = 0.05  # how often a replica looks for the drain file
SHUTTING_DOWN = "the server is shutting down; send the request again once it is back (or to another server)"


class _Metrics:
    """Prometheus metrics through Ray (served by each node's metrics agent)."""

    def __init__(self, max_batch: int):
        self.requests = Counter("ranet_requests", description="classify requests answered, by HTTP status",
                                tag_keys=("status",))
        self.images = Counter("ranet_exit_images", description="images classified, by the exit they left at",
                              tag_keys=("exit",))
        bounds = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch] + [max_batch]
        self.batch = Histogram("ranet_batch_images", description="images per batch", boundaries=bounds)
        self.latency = Histogram("ranet_request_ms", description="server-side ms from arrival to answer",
                                 boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000])


class RanetServer:
    """An HTTP ingress deployment serving one bundle (see ``ServeSettings``)."""

    def __init__(self, settings: dict, drain_file: str | None = None):
        self.settings = ServeSettings.from_dict(settings)
        self.model = ServedModel(self.settings)
        self._classify.set_max_batch_size(self.settings.max_batch)
        self._classify.set_batch_wait_timeout_s(self.settings.batch_wait_ms / 1e3)
        self.replica = serve.get_replica_context().replica_tag
        self.metrics = _Metrics(self.settings.max_batch)
        self.draining, self.in_flight = False, 0
        self._watch = None
        if drain_file:  # Serve runs this constructor on the replica's event loop
            self._watch = asyncio.get_running_loop().create_task(self._watch_drain(drain_file))

    async def _watch_drain(self, drain_file: str) -> None:
        """Once ``drain_file`` exists (the server is stopping): answer new requests 503, let those
        in flight finish, then say so with an ``.idle`` file beside it, named by this replica."""
        while not os.path.exists(drain_file):
            await asyncio.sleep(DRAIN_POLL_S)
        self.draining = True
        while self.in_flight:
            await asyncio.sleep(0.01)
        marker = f"{drain_file}.{re.sub(r'[^A-Za-z0-9_.-]', '_', self.replica)}.idle"
        with open(marker + ".tmp", "w"):
            pass
        os.replace(marker + ".tmp", marker)

    async def __call__(self, request: Request) -> JSONResponse:
        if self.draining:
            return JSONResponse(error_body(SHUTTING_DOWN), status_code=503,
                                headers={"Connection": "close", "Retry-After": "1"})
        self.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        path = request.scope["path"]
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        route = {"/v1/classify": "POST", "/v1/model": "GET", "/v1/health": "GET"}.get(path.rstrip("/"))
        if route is None:
            return JSONResponse(error_body(f"no route {path}; {ROUTES}"), status_code=404)
        if request.method != route:
            return JSONResponse(error_body(f"{request.method} {path} is not allowed; {ROUTES}"), status_code=405)
        if path.startswith("/v1/health"):
            return JSONResponse({"status": "ok", "replica": self.replica})
        if path.startswith("/v1/model"):
            return JSONResponse({**self.model.summary(), "replica": self.replica})
        try:
            body = await self._classify_request(request, start)
            status = 200
        except RequestError as exc:
            body, status = error_body(exc.message), exc.status
        except RanetEdgeError as exc:  # e.g. an unknown operating point
            body, status = error_body(str(exc)), 400
        except Exception as exc:  # the model failed: still one answer per request
            log.exception("classification failed")
            body, status = error_body(f"internal error while classifying: {type(exc).__name__}: {exc}"), 500
        self.metrics.requests.inc(tags={"status": str(status)})
        self.metrics.latency.observe((time.perf_counter() - start) * 1e3)
        return JSONResponse(body, status_code=status)

    async def _classify_request(self, request: Request, start: float) -> dict:
        point = self.model.check_point(request.query_params.get("operating_point"))
        data = await _read_body(request, self.settings.max_body_bytes)
        args = (request.headers.get("content-type"), data, self.model.chain.preprocess_spec, self.settings.max_batch)
        # a photo takes milliseconds to decode: off the event loop; a thumbnail costs less than the hop
        images = parse_images(*args) if len(data) < INLINE_DECODE_BYTES else await asyncio.to_thread(parse_images, *args)
        job = Job(images, point, start)
        async for predictions in self._classify(job):
            if predictions is not None:
                return {"predictions": predictions, "operating_point": point, "graph": self.settings.graph,
                        "replica": self.replica}
        raise RuntimeError("the batch ended without answering this request")  # pragma: no cover

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=images_in)
    async def _classify(self, jobs: list[Job]):
        """Yields, after each graph that completes requests, one entry per job: its predictions
        when they just completed, None while it waits, StopIteration once answered (Serve then
        ends that caller's stream)."""
        self.metrics.batch.observe(images_in(jobs))
        run = BatchRun(self.model, jobs)
        answered = [False] * len(jobs)
        while not run.done:
            completed = set(await asyncio.to_thread(run.step))
            out, exits = [], collections.Counter()
            for j in range(len(jobs)):
                if j in completed:
                    out.append(run.results[j])
                    answered[j] = True
                    exits.update(p["exit"] for p in run.results[j])
                else:
                    out.append(StopIteration if answered[j] else None)
            for exit_, count in exits.items():
                self.metrics.images.inc(count, tags={"exit": str(exit_)})
            if completed:  # a graph that completed no request wakes nobody
                yield out


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    too_big = (f"the body exceeds this server's limit of {limit} bytes (max_body_bytes); "
               "send smaller images or fewer per request")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def build_deployment(settings: ServeSettings, name: str = "ranet-edge", drain_file: str | None = None
                     ) -> serve.Application:
    """The bound application for ``serve.run``, with ``settings.replicas`` replicas.

    ``drain_file`` (a path on every node that runs a replica): once it exists, the replicas
    answer new requests 503 and, their requests in flight answered, create
    ``DRAIN_FILE.REPLICA.idle`` beside it (``Server.close`` waits for those)."""
    return serve.deployment(RanetServer, name=name).options(
        num_replicas=settings.replicas,
        # requests in flight per replica: a full batch running and the next one filling
        max_ongoing_requests=max(2 * settings.max_batch, 8),
        ray_actor_options={"num_cpus": settings.threads},
    ).bind(settings.to_dict(), drain_file)
