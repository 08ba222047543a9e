"""The HTTP routes, written once for every ingress: the one-process server (``local.py``) and
the Ray Serve replica (``deployment.py``) both hand each request to :meth:`Routes.handle`.

``/v1/...`` is this project's own API (unchanged); ``/v2/...`` is the Open Inference Protocol
(KServe v2) through ``oip.py``; ``/metrics`` is Prometheus text. Every error is a one-line
``{"error": ...}`` with a 4xx (5xx only for the server's own failures, 503 when it is
overloaded or draining, with ``Retry-After``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from ranet_edge.errors import RanetEdgeError

from . import admission, texts
from .api import RequestError, error_body, parse_images
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .progress import DEADLINE_PARAMETER, deadline_cut, parse_deadline, within
from .rules import PATIENCE_PARAMETER, RULE_PARAMETER, parse_rule
from .stage_engine import RETRY_AFTER_S, SHUTTING_DOWN, Overloaded, StageEngine

log = logging.getLogger("ranet_edge.serve")
access = logging.getLogger("ranet_edge.serve.access")

INLINE_DECODE_BYTES = 64 * 1024  # bodies smaller than this are decoded on the event loop
ROUTES = ("the API is POST /v1/classify, GET /v1/model, GET /v1/health, GET /v2, GET /v2/health/live, "
          "GET /v2/health/ready, GET /v2/models/NAME, GET /v2/models/NAME/ready, POST /v2/models/NAME/infer, "
          "POST /v2/models/NAME/infer_stream and GET /metrics")
JSON = "application/json"
ReadBody = Callable[[int], Awaitable[bytes]]  # read_body(limit): the body, RequestError 413 past limit


@dataclass
class Reply:
    """One HTTP answer, as either ingress sends it: status, body bytes, lower-case headers."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # content-type included
    stream: AsyncIterator[bytes] | None = None  # a body sent as it comes (server-sent events); then body is b""

    @classmethod
    def json(cls, obj: dict, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """``obj`` as compact UTF-8 JSON, with ``content-type`` and ``headers`` added.

        Raises:
            ValueError: ``obj`` holds a NaN or infinite float (not valid JSON).
        """
        body = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        return cls(status, body, {"content-type": JSON, **(headers or {})})

    @classmethod
    def error(cls, exc: RequestError) -> Reply:
        """The one-line ``{"error": ...}`` answer of a refusal; ``Retry-After`` for Overloaded."""
        headers = {"retry-after": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else {}
        return cls.json(error_body(exc.message), exc.status, headers)


class Routes:
    """Dispatch one request: ``handle(method, path, query, headers, read_body)`` -> Reply.

    ``headers`` are lower-case names. ``draining`` set: every new request gets 503 (and
    ``connection: close``); ``in_flight`` counts requests being handled, for the drain.
    """

    def __init__(self, engine: StageEngine, metrics: Metrics, model_name: str = "ranet-edge",
                 replica: str = "local"):
        self.engine = engine
        self.model = engine.model
        self.settings = engine.model.settings
        self.metrics = metrics
        self.model_name = model_name
        self.replica = replica
        self.draining = False
        self.in_flight = 0
        #: the event loop's lag (loop_lag.LoopLag), where the server measures it: a deadline
        #: counts from the handler's start less this, the request's wait for the loop
        self.loop_lag = None
        self._summary = self.model.summary()

    async def handle(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                     read_body: ReadBody) -> Reply:
        """Answer one request, count it in ``metrics`` and log it to ``ranet_edge.serve.access``.

        Every outcome is a Reply: refusals (``RequestError`` from ``read_body`` included)
        become 4xx/503 replies, the server's own failures a 500.
        """
        start = time.perf_counter()
        route = "other"
        if self.draining:
            reply = Reply.json(error_body(SHUTTING_DOWN), 503, {"retry-after": str(RETRY_AFTER_S),
                                                                 "connection": "close"})
        else:
            self.in_flight += 1
            try:
                route, reply = await self._dispatch(method, path.rstrip("/") or "/", query, headers, read_body, start)
            finally:
                self.in_flight -= 1
        self.metrics.answered(route, reply.status, time.perf_counter() - start)
        if access.isEnabledFor(logging.INFO):
            access.info('%s %s %d %d %.2fms', method, path, reply.status, len(reply.body),
                        (time.perf_counter() - start) * 1e3)
        return reply

    async def _dispatch(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                        read_body: ReadBody, start: float) -> tuple[str, Reply]:
        route, want, model = _route(path.split("/")[1:])
        if route is None:
            return "other", Reply.json(error_body(f"no route {path}; {ROUTES}"), 404)
        if method != want:
            return route, Reply.json(error_body(f"{method} {path} is not allowed (use {want}); {ROUTES}"), 405)
        try:
            if model is not None:
                from . import oip

                oip.check_model(*model, self.model_name)
            return route, await getattr(self, "_" + route.replace("/", "_"))(query, headers, read_body, start)
        except RequestError as exc:
            return route, Reply.error(exc)
        except RanetEdgeError as exc:  # e.g. an unknown operating point
            return route, Reply.json(error_body(str(exc)), 400)
        except Exception as exc:  # the server's own failure: still one answer, one line
            log.exception("%s %s failed", method, path)
            return route, Reply.json(error_body(f"internal error: {type(exc).__name__}: {exc}"), 500)

    # ------------------------------------------------------------------ /v1
    async def _v1_health(self, *_) -> Reply:
        return Reply.json({"status": "ok", "replica": self.replica})

    async def _v1_model(self, *_) -> Reply:
        return Reply.json({**self._summary, "replica": self.replica})

    async def _v1_classify(self, query, headers, read_body, start) -> Reply:
        point = query.get("operating_point")  # None: the server's (with --slo-ms, a ladder rung)
        self.model.check_point(point)
        deadline_s = parse_deadline(query.get(DEADLINE_PARAMETER), f"query parameter {DEADLINE_PARAMETER}")
        rule, patience = parse_rule(query.get(RULE_PARAMETER), query.get(PATIENCE_PARAMETER))
        self.model.decision_of(point, rule, patience)  # a bad combination: 400 before the body is read
        if self.model.named and texts.no_texts(self.model, self.model_name):  # no tokenizer: 400 naming /v2
            raise RequestError(400, texts.no_texts(self.model, self.model_name))
        data = await self._read(read_body, start)
        self._admit(start, point, rule, patience, deadline_s)  # --slo-ms, deadline_ms: shed before decoding
        if self.model.named:  # a text bundle: {"texts": [...]}, tokenized off the event loop (texts.py)
            x = await asyncio.to_thread(texts.parse_texts, headers.get("content-type"), data, self.model,
                                        self.settings.max_batch, self.model_name)
        else:
            args = (headers.get("content-type"), data, self.model.chain.preprocess_spec, self.settings.max_batch)
            # a photo takes milliseconds to decode: off the event loop; a thumbnail costs less than the hop
            images = parse_images(*args) if len(data) < INLINE_DECODE_BYTES else await asyncio.to_thread(
                parse_images, *args)
            x = self.model.chain.preprocess(images)
        answer = await self._classify(x, point, start, deadline_s, rule, patience)
        names, counts = self.model.class_names, self.model.chain.exit_classes
        ms = round(answer.server_ms, 3)  # class names name the last exit's classes: an exit of another count has none
        preds = [{"label": label, "class": names[label] if counts[e] == len(names) else str(label), "exit": e,
                  "confidence": round(c, 6), "server_ms": ms}
                 for label, e, c in zip(answer.labels.tolist(), answer.exits.tolist(), answer.confidences.tolist())]
        if deadline_s is not None:
            for p, cut in zip(preds, deadline_cut(answer).tolist()):
                p["deadline_cut"] = cut
        return Reply.json({"predictions": preds, "operating_point": None if patience else answer.operating_point,
                           "graph": self.settings.graph,
                           "replica": self.replica})

    # ------------------------------------------------------------------ /v2 (Open Inference Protocol)
    async def _v2(self, *_) -> Reply:
        from . import oip

        return Reply.json(oip.server_metadata())

    async def _v2_live(self, *_) -> Reply:
        return Reply.json({"live": True})

    async def _v2_ready(self, *_) -> Reply:
        return Reply.json({"ready": True})

    async def _v2_model(self, *_) -> Reply:
        from . import oip

        return Reply.json(oip.model_metadata(self.model, self.model_name))

    async def _v2_model_ready(self, *_) -> Reply:
        return Reply.json({"name": self.model_name, "ready": True})

    async def _v2_infer(self, query, headers, read_body, start) -> Reply:
        from . import oip

        length = oip.parse_header_length(headers.get("inference-header-content-length"))
        data = await self._read(read_body, start)
        args = (data, length, self.model, self.settings.max_batch, lambda *a: self._admit(start, *a))
        req = oip.parse_rest_infer(*args) if len(data) < INLINE_DECODE_BYTES else await asyncio.to_thread(
            oip.parse_rest_infer, *args)
        self.model.check_point(req.point)
        answer = await self._classify(req.x, req.point, start, req.deadline_s, req.rule, req.patience)
        body, extra = oip.rest_infer_response(req, answer, self.model_name)
        return Reply(200, body, {k.lower(): v for k, v in extra.items()})

    async def _v2_infer_stream(self, query, headers, read_body, start) -> Reply:
        from . import oip, streaming

        length = oip.parse_header_length(headers.get("inference-header-content-length"))
        data = await self._read(read_body, start)
        req, anytime = await asyncio.to_thread(streaming.sse_request, data, length, self.model, self.settings.max_batch,
                                               lambda *a: self._admit(start, *a))
        self.model.check_point(req.point)
        events = streaming.sse_events(self.engine, req, anytime, self.model_name, start, self.settings.timeout_s,
                                      self.metrics)
        return Reply(200, b"", {"content-type": "text/event-stream", "cache-control": "no-cache"}, events)

    # ------------------------------------------------------------------ /metrics
    async def _metrics(self, *_) -> Reply:
        return Reply(200, self.metrics.text(), {"content-type": METRICS_TYPE})

    # ------------------------------------------------------------------ shared
    async def _read(self, read_body: ReadBody, start: float) -> bytes:
        """The body within the size limit (413) and the time limit (408: it did not arrive)."""
        left = self.settings.timeout_s - (time.perf_counter() - start)
        try:
            return await asyncio.wait_for(read_body(self.settings.max_body_bytes), max(left, 0.001))
        except asyncio.TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {self.settings.timeout_s:g} s "
                                    "(timeout_s); send it faster or raise --timeout-s") from None

    def _lag_ms(self) -> float:
        return self.loop_lag.ms if self.loop_lag is not None else 0.0

    def _admit(self, start: float, point, rule, patience, deadline_s, n: int = 1) -> None:
        """Refuse (503) before decoding what cannot be answered in time (``admission.py``)."""
        admission.check(self.engine, (time.perf_counter() - start) * 1e3, self._lag_ms(), point=point, rule=rule,
                        patience=patience, deadline_s=deadline_s, n=n)

    async def _classify(self, x, point, start, deadline_s=None, rule=None, patience=None):
        left = self.settings.timeout_s - (time.perf_counter() - start)
        try:
            lag_s = self._lag_ms() / 1e3
            arrived = start - lag_s
            aim = admission.engine_deadline(self.engine, deadline_s, lag_s)
            asked = {"deadline": within(aim, arrived, self.settings.timeout_s), "rule": rule, "patience": patience}
            call = self.engine.classify(x, point, **{k: v for k, v in asked.items() if v is not None})
            intake = time.perf_counter()
            answer = await asyncio.wait_for(call, max(left, 0.001))
            admission.answered(self.engine, deadline_s, aim, arrived, intake, lag_s, answer.server_ms)
            if self.engine.slo is not None and point is None and rule is None and patience is None:  # a chosen rung
                # the reply waits for the loop too
                self.engine.slo.observe_total((time.perf_counter() - arrived) * 1e3 + lag_s * 1e3)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request was not answered within {self.settings.timeout_s:g} s "
                                    "(timeout_s); the server is too busy: send fewer images or retry") from None
        self.metrics.of_answer(answer)
        return answer


def too_big(limit: int) -> RequestError:
    """The 413 a ``read_body`` raises for a body over ``limit`` bytes (returned, not raised)."""
    return RequestError(413, f"the body exceeds this server's limit of {limit} bytes (max_body_bytes); "
                             "send smaller images or fewer per request")


_FIXED = {("v1", "classify"): ("v1/classify", "POST"), ("v1", "model"): ("v1/model", "GET"),
          ("v1", "health"): ("v1/health", "GET"), ("v2",): ("v2", "GET"), ("v2", "health", "live"): ("v2/live", "GET"),
          ("v2", "health", "ready"): ("v2/ready", "GET"), ("metrics",): ("metrics", "GET")}
_MODEL = {(): ("v2/model", "GET"), ("ready",): ("v2/model/ready", "GET"), ("infer",): ("v2/infer", "POST"),
          ("infer_stream",): ("v2/infer_stream", "POST")}


def _route(parts: list[str]) -> tuple[str | None, str, tuple[str, str | None] | None]:
    """(handler name, method, (model name, version) of a /v2/models path) of a path split at
    '/'; (None, '', None) when none matches."""
    hit = _FIXED.get(tuple(parts))
    if hit is not None:
        return (*hit, None)
    if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
        name, rest, version = unquote(parts[2]), parts[3:], None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = unquote(rest[1]), rest[2:]
        hit = _MODEL.get(tuple(rest))
        if hit is not None:
            return (*hit, (name, version))
    return None, "", None
