"""The one-process server (``ranet-edge serve`` without ``--ray``): uvicorn, a raw ASGI app,
the stage engine and, with ``--grpc-port``, the gRPC service, all on one asyncio loop.

Why a raw ASGI app on uvicorn: ``benchmarks/serve_overhead.py`` measured an echo route's
server CPU per request side by side (``benchmarks/results/serve_overhead.json``): ~50 us
here, ~80-100 us for Starlette on the same uvicorn or for aiohttp, ~500-600 us for KServe's
ModelServer and MLServer, against a model that costs ~300 us per image. The routes
(``routes.py``) are shared with the Ray ingress.

Stopping: the first SIGINT or SIGTERM drains (new requests get 503 with ``Retry-After``,
requests in flight are answered, for at most ``DRAIN_S``), then the listener closes and the
process exits 0; a second signal cuts the drain short.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from ranet_edge.errors import InputError, require

from .api import RequestError
from .engine import ServedModel, input_words, v1_body
from .loop_lag import LoopLag
from .metrics import Metrics
from .routes import Reply, Routes, too_big
from .settings import ServeSettings
from .stage_engine import StageEngine

DRAIN_S = 5.0  # the longest the drain waits for requests in flight
LINGER_S = 0.2  # then the listener stays up this long answering 503, before it closes
CLOSE_S = 2.0  # uvicorn's own shutdown (closing connections) at most this long
BACKLOG = 2048

Echo = Callable[..., None]  # click.echo's shape: echo(message, err=False)


def _echo(message: str, err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


class App:
    """The ASGI application: the body is read through ``Routes``' ``read_body``, within its limit."""

    def __init__(self, routes: Routes):
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope["query_string"] else {}

        async def read_body(limit: int) -> bytes:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise too_big(limit)
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "the client closed the connection before the body arrived")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_big(limit)
                chunks.append(chunk)
                more = message.get("more_body", False)
            return b"".join(chunks)

        reply = await self.routes.handle(scope["method"], scope["path"], query, headers, read_body)
        await send_reply(send, reply)


async def send_reply(send, reply: Reply) -> None:
    """Send ``reply`` through the ASGI ``send``, with its length; a 413 also closes the connection.
    A streamed reply (server-sent events) goes chunk by chunk, without a length."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    if reply.stream is not None:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        try:
            async for chunk in reply.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await reply.stream.aclose()
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(len(reply.body)).encode()))
    if reply.status == 413:  # the rest of a body too large is not read: this connection ends
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: the OS picks), inheritable.

    Raises:
        InputError: the address cannot be bound (in use, or not this machine's); names the fix.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port or --host") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def run_local(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, model_name: str = "ranet-edge",
              grpc_port: int | None = None, echo: Echo = _echo) -> int:
    """Serve ``settings`` in this process until SIGINT or SIGTERM; the exit code (0 once stopped).

    Errors while starting (a bad bundle, a port in use) raise before anything listens.

    Raises:
        MissingExtraError: uvicorn or prometheus_client is not installed (``ranet-edge[serve]``).
        BundleError: a bundle that does not load (see :class:`~ranet_edge.serve.engine.ServedModel`).
        CalibrationError: an operating point the bundle does not store.
        ProviderError: a provider that is not available here.
        InputError: the port cannot be bound, or an executor that cannot batch several requests.
        ServeError: the gRPC port cannot be bound.
    """
    t0 = time.perf_counter()
    for module in ("uvicorn", "prometheus_client"):
        require(module, "serve")
    model = ServedModel(settings)
    sock = listen(host, port)
    try:
        loop = _new_loop(uvloop_ok=grpc_port is None)
        try:
            return loop.run_until_complete(_serve(model, sock, model_name, grpc_port, echo, t0))
        finally:
            loop.close()
    finally:
        sock.close()


def _new_loop(uvloop_ok: bool) -> asyncio.AbstractEventLoop:
    if uvloop_ok:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def _serve(model: ServedModel, sock: socket.socket, model_name: str, grpc_port: int | None, echo: Echo,
                 t0: float) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self):  # the signals are ours: see _stop_on_signals
            return contextlib.nullcontext()

    engine = StageEngine(model)
    metrics = Metrics(engine, engine.max_batch)
    engine.on_batch = metrics.on_batch
    await engine.start()
    routes = Routes(engine, metrics, model_name, replica=f"{socket.gethostname()}:{os.getpid()}")
    routes.loop_lag = LoopLag(lambda: routes.in_flight > 0,
                              None if engine.slo is None else lambda ms: setattr(engine.slo, "loop_lag_ms", ms))
    watching = None
    config = uvicorn.Config(App(routes), lifespan="off", access_log=False, log_level="warning", loop="none",
                            timeout_graceful_shutdown=int(CLOSE_S), timeout_keep_alive=5, backlog=BACKLOG)
    server = Server(config)
    grpc_server = None
    stop, hurry, why = asyncio.Event(), asyncio.Event(), []
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        why.append(name)
        (hurry if stop.is_set() else stop).set()

    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, on_signal, s.name)
    try:
        if grpc_port is not None:
            from .grpc_service import build_grpc_server

            host = sock.getsockname()[0]
            grpc_server, grpc_port = build_grpc_server(engine, model_name, host, grpc_port, metrics=metrics,
                                                       loop_lag=routes.loop_lag)
            await grpc_server.start()
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not serving.done() and not stop.is_set():
            await asyncio.sleep(0.005)
        if serving.done():
            serving.result()  # raises what stopped it
        if not stop.is_set():
            watching = asyncio.ensure_future(routes.loop_lag.run())  # from here: the start-up is not lag
            print_summary(routes, sock, grpc_port, time.perf_counter() - t0, echo)
            await asyncio.wait([asyncio.ensure_future(stop.wait()), serving], return_when=asyncio.FIRST_COMPLETED)
        echo(f"{why[0] if why else 'stopped'}: shutting down (again to stop at once) ...", err=True)
        clean = await _drain(routes, engine, hurry)
        if grpc_server is not None:
            await grpc_server.stop(grace=0 if hurry.is_set() else 1.0)
        server.should_exit = True
        server.force_exit = hurry.is_set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(serving, CLOSE_S + 1.0)
        echo("stopped" if clean else "stopped (requests still unanswered at the drain's end got 503)", err=True)
        return 0
    finally:
        if watching is not None:
            watching.cancel()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(s)
        if not engine.closing:
            await engine.close(0.0)


async def _drain(routes: Routes, engine: StageEngine, hurry: asyncio.Event) -> bool:
    """New requests 503; wait (at most DRAIN_S, less once hurried) for those in flight; close
    the engine. True when every request in flight was answered."""
    routes.draining = True
    deadline = time.monotonic() + DRAIN_S
    while routes.in_flight and time.monotonic() < deadline and not hurry.is_set():
        await asyncio.sleep(0.005)
    clean = await engine.close(0.0 if hurry.is_set() else max(0.0, deadline - time.monotonic()))
    linger = time.monotonic() + LINGER_S
    while time.monotonic() < linger and not hurry.is_set():  # a request sent just before still gets its 503
        await asyncio.sleep(0.01)
    return clean and not routes.in_flight


def print_summary(routes: Routes, sock: socket.socket, grpc_port: int | None, took_s: float, echo: Echo) -> None:
    """What ``ranet-edge serve`` prints once it answers: URL, model, engine, routes."""
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    s, settings, engine = routes.model.summary(), routes.settings, routes.engine
    points = [f"{name}{' (default)' if name == s['default_operating_point'] else ''}" for name in s["operating_points"]]
    echo(f"ranet-edge serving at {url}")
    echo(f"model      {s['bundle']}: {len(s['exits'])} exits, {s['num_classes']} classes, "
         f"{input_words(s)}, graph {s['graph']}; Open Inference Protocol name "
         f"{routes.model_name!r}")
    echo(f"runs on    one process, provider {settings.provider} ({', '.join(s['session_providers'])}), "
         f"{settings.threads} thread(s) per graph; healthy {took_s:.2f} s after start")
    echo(f"batching   {'survivors batched across requests graph by graph' if engine.stage_batching else 'batch by batch'}"
         f", up to {settings.max_batch} images, waiting {settings.batch_wait_ms:g} ms; queue {settings.max_queue} "
         f"images; bodies up to {settings.max_body_bytes} bytes; {settings.timeout_s:g} s per request")
    echo(f"operating points: {', '.join(points) or 'none stored: every image runs to the last exit'}")
    if engine.slo is not None:
        echo(f"objective  {settings.slo_ms:g} ms (--slo-ms): requests naming no point move along "
             f"{', '.join(r.name for r in engine.slo.rungs)}; past {engine.slo.rungs[0].name}, 503")
    echo(f"  POST {url}/v1/classify   {v1_body(s)}; "
         "?operating_point=NAME")
    echo(f"  GET  {url}/v1/model, {url}/v1/health")
    echo(f"  POST {url}/v2/models/{routes.model_name}/infer   Open Inference Protocol (KServe v2), JSON or binary tensors")
    echo(f"  GET  {url}/v2, /v2/health/live, /v2/health/ready, /v2/models/{routes.model_name}[/ready]")
    if grpc_port is not None:
        echo(f"  gRPC {host}:{grpc_port}   KServe GRPCInferenceService")
    echo(f"  metrics (Prometheus) {url}/metrics")
    echo("Press Ctrl-C to stop.")
