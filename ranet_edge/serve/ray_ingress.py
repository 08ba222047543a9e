"""The ingress of a cluster deployment: a request whose replica died is tried once more.

Serve's controller restarts a replica that dies and its routers stop choosing it, but a
request that was *in flight* on it fails, and Serve leaves retrying to the application. On a
cluster, where a node can go away with its replicas, ``ranet-edge serve --address`` puts
this small deployment in front of the model replicas: it reads the request, hands it to a
model replica through a deployment handle and, when that replica died or became unreachable
before answering (``RayActorError``: ``ActorDiedError``, ``ActorUnavailableError``), hands it
to a replica again, once (the router then picks a live one). Classifying an image is
idempotent, so a second try cannot do harm. An answer that needed it carries
``x-ranet-retried: 1``; a request whose second try failed too gets 503 with
``Retry-After: 1``, which a client honours by sending it again.

The ingress reserves no CPU and runs on the head node (Ray's ``node:__internal_head__``
resource), beside Serve's controller and HTTP proxy: losing the head node loses the cluster
anyway, losing any other node loses none of the requests that went through here.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from .api import RequestError
from .routes import Reply

T = TypeVar("T")
RETRIES = 1  # a second replica is asked once: a request is not sent round a dying cluster
RETRY_AFTER_S = 1
RETRIED_HEADER = "x-ranet-retried"
HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node one of it
INGRESS_ONGOING = 1000  # requests in flight through the ingress; the model replicas bound their own


def replica_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the replica died or cannot be reached (so another may answer)."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


async def call_with_retry(call: Callable[[], Awaitable[T]], retries: int = RETRIES) -> tuple[T, int]:
    """``await call()``; when the replica it went to was lost (:func:`replica_lost`), call it
    again, up to ``retries`` more times. (result, how many times it was called again).

    Raises:
        RayActorError: the last try's, when every try lost its replica.
        Exception: whatever ``call`` raised that is not a lost replica, at once, not retried.
    """
    for attempt in range(retries + 1):
        try:
            return await call(), attempt
        except Exception as exc:
            if attempt == retries or not replica_lost(exc):
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


class RetryingIngress:
    """Serve's HTTP ingress in front of ``model`` (a handle to the ``RanetServer`` deployment):
    the body read here (up to ``max_body_bytes``, then cut and flagged), the answer made by a
    model replica's :meth:`RanetServer.handle <ranet_edge.serve.deployment.RanetServer.handle>`."""

    def __init__(self, model, max_body_bytes: int):
        self.model = model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"]
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            body, over = await self._read(request)
        except RequestError as exc:
            return _response(Reply.error(exc))
        args = (request.method, path, dict(request.query_params), headers, body, over)
        try:
            (status, reply_headers, reply_body), retried = await call_with_retry(
                lambda: self.model.handle.remote(*args))
        except Exception as exc:
            if not replica_lost(exc):
                raise
            return _response(Reply.json({"error": f"the replica answering this request was lost, and so was "
                                                  f"the one it was sent to next; send it again in "
                                                  f"{RETRY_AFTER_S} s"}, 503,
                                        {"retry-after": str(RETRY_AFTER_S)}))
        if retried:
            reply_headers = {**reply_headers, RETRIED_HEADER: str(retried)}
        return Response(reply_body, status_code=status, headers=reply_headers)

    async def _read(self, request: Request) -> tuple[bytes, bool]:
        """The body and whether it went past ``max_body_bytes`` (then cut there: the replica refuses it)."""
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                chunks.append(chunk)
                if size > self.max_body_bytes:
                    return b"", True
        except OSError:
            raise RequestError(400, "the client closed the connection before the body arrived") from None
        return b"".join(chunks), False


def _response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, headers=reply.headers)
