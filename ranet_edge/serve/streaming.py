"""Answers that refine, streamed: gRPC ``ModelStreamInfer`` and server-sent events over HTTP.

A request with the parameter ``anytime: true`` gets one response per exit reached (each
image's label, exit and confidence so far: :class:`~ranet_edge.serve.progress.Progress`),
then its final answer, marked ``final: true``. Without it, a streamed request gets its final
answer alone. Both transports go through :func:`refinements`, on the same stage engine as
every other request.

- **gRPC** (:func:`stream_handler`): Triton's bidirectional ``ModelStreamInfer``, as
  ``tritonclient.grpc``'s ``start_stream`` / ``async_stream_infer`` use it. Requests on one
  stream run concurrently; each response carries the request's ``id`` and the parameters
  ``final`` and ``triton_final_response`` (Triton's decoupled-model flag: true on a request's
  last response). With ``triton_enable_empty_final_response`` (tritonclient's
  ``enable_empty_final_response=True``) the final answer has ``triton_final_response: false``
  and an empty response with ``triton_final_response: true`` follows it, as a decoupled
  Triton model that sends its final flag alone. A refused request gets a response with
  ``error_message`` and the stream goes on.
- **HTTP** (:func:`sse_events`): ``POST /v2/models/{name}/infer_stream`` takes the body of
  ``/v2/models/{name}/infer`` (JSON) and answers ``text/event-stream``: one ``event: exit``
  per exit reached (with ``anytime: true``), then ``event: final``; each ``data:`` line is
  the JSON response ``/infer`` would give, with ``parameters.final``. A refusal before the
  stream starts is the usual one-line 4xx; one after it is an ``event: error``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import oip
from .api import RequestError, error_body
from .progress import Progress, within

log = logging.getLogger("ranet_edge.serve")

ANYTIME_PARAMETER = "anytime"
EMPTY_FINAL_PARAMETER = "triton_enable_empty_final_response"


def flag(parameters: dict, name: str) -> bool:
    """A boolean request parameter (absent: False).

    Raises:
        RequestError: 400, the parameter is not true or false.
    """
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(400, f"parameter {name} must be true or false, got {str(value)[:40]!r}")
    return value


async def refinements(engine: Any, req: oip.InferRequest, anytime: bool, start: float,
                      timeout_s: float) -> AsyncIterator[Any]:
    """The Progress of each graph run that leaves images of ``req`` running (with ``anytime``),
    then its final Answer; all within ``timeout_s`` of ``start``.

    Raises:
        RequestError: what ``engine.classify`` refuses; 504 past ``timeout_s``.
    """
    queue: asyncio.Queue = asyncio.Queue()
    deadline = within(req.deadline_s, start, timeout_s)
    task = asyncio.ensure_future(engine.classify(req.x, req.point, deadline,
                                                 queue.put_nowait if anytime else None))
    task.add_done_callback(lambda _t: queue.put_nowait(None))  # after every Progress sent before the answer
    try:
        while True:
            left = timeout_s - (time.perf_counter() - start)
            try:
                item = await asyncio.wait_for(queue.get(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise RequestError(504, f"the request was not answered within {timeout_s:g} s (timeout_s); "
                                        "the server is too busy: send fewer images or retry") from None
            if item is None:
                break
            if not item.done:
                yield item
        yield task.result()
    finally:
        if not task.done():
            task.cancel()


# ---------------------------------------------------------------------------- gRPC
def stream_handler(service: Any) -> Callable:
    """The ``ModelStreamInfer`` method of ``service`` (a ``grpc_service.InferenceService``):
    an async generator of serialized ``ModelStreamInferResponse`` from request bytes."""
    import grpc

    from .grpc_service import _param, grpc_code, infer_request, infer_response, messages

    reply_cls = messages["ModelStreamInferResponse"]

    def error(message: str, request_id: str) -> Any:
        """An error response, with the request's id where it has one (tritonclient reads only the message)."""
        resp = messages["ModelInferResponse"](model_name=service.name, model_version=oip.MODEL_VERSION, id=request_id)
        resp.parameters["triton_final_response"].bool_param = True
        return reply_cls(error_message=message, infer_response=resp)

    async def one(raw: bytes, out: asyncio.Queue) -> None:
        start = time.perf_counter()
        code, request_id = grpc.StatusCode.OK, ""
        try:
            try:
                msg = messages["ModelInferRequest"].FromString(raw)
            except Exception:
                raise RequestError(400, "a stream message is not a valid inference.ModelInferRequest; build it "
                                        "from the KServe v2 grpc_predict_v2.proto") from None
            request_id = msg.id
            oip.check_model(msg.model_name, msg.model_version, service.name)
            params = {k: _param(v) for k, v in msg.parameters.items()}
            anytime, empty = flag(params, ANYTIME_PARAMETER), flag(params, EMPTY_FINAL_PARAMETER)
            req = infer_request(msg, service.model, service.max_images, lambda *a: service._admit(start, *a))
            async for item in refinements(service.engine, req, anytime, start, service.timeout_s):
                final = not isinstance(item, Progress)
                resp = infer_response(req, item, service.name)
                resp.parameters["final"].bool_param = final
                resp.parameters["triton_final_response"].bool_param = final and not empty
                out.put_nowait(reply_cls(infer_response=resp))
                if final and service.metrics is not None:
                    service.metrics.of_answer(item)
            if empty:
                last = messages["ModelInferResponse"](model_name=service.name, model_version=oip.MODEL_VERSION,
                                                      id=req.id or "")
                last.parameters["triton_final_response"].bool_param = True
                out.put_nowait(reply_cls(infer_response=last))
        except RequestError as exc:
            code = grpc_code(exc.status)
            out.put_nowait(error(" ".join(exc.message.split()), request_id))
        except Exception as exc:  # a bug or a failed graph run: one line, the stream goes on
            code = grpc.StatusCode.INTERNAL
            log.exception("grpc ModelStreamInfer failed")
            out.put_nowait(error(f"internal error ({type(exc).__name__}); see the server log", request_id))
        finally:
            service._log("ModelStreamInfer", code, start)

    async def handle(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        out: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def read() -> None:
            async for raw in requests:
                task = asyncio.ensure_future(one(raw, out))
                running.add(task)
                task.add_done_callback(running.discard)
            while running:
                await asyncio.gather(*list(running), return_exceptions=True)
            out.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await out.get()) is not None:
                yield item.SerializeToString()
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    return handle


# ---------------------------------------------------------------------------- HTTP (server-sent events)
def sse_request(body: bytes, header_length: int | None, model: Any, max_images: int,
                admit: oip.Admit | None = None) -> tuple[oip.InferRequest, bool]:
    """The body of ``POST /v2/models/{name}/infer_stream``: (the request, every output as JSON;
    its ``anytime`` parameter). ``admit``: see ``oip.build_request``.

    Raises:
        RequestError: 400 for a malformed request or parameter, 413 for too many images.
    """
    req = oip.parse_rest_infer(body, header_length, model, max_images, admit)
    header = body if header_length is None else body[:header_length]
    parameters = json.loads(header).get("parameters") or {}  # parse_rest_infer checked the JSON
    outputs = tuple(oip.RequestedOutput(o.name, False) for o in req.outputs)  # events carry JSON
    return dataclasses.replace(req, outputs=outputs), flag(parameters, ANYTIME_PARAMETER)


async def sse_events(engine: Any, req: oip.InferRequest, anytime: bool, model_name: str, start: float,
                     timeout_s: float, metrics: Any = None) -> AsyncIterator[bytes]:
    """The ``text/event-stream`` body of ``POST /v2/models/{name}/infer_stream`` (see the module doc)."""
    try:
        async for item in refinements(engine, req, anytime, start, timeout_s):
            final = not isinstance(item, Progress)
            doc = json.loads(oip.rest_infer_response(req, item, model_name)[0])
            doc["parameters"] = {"final": final}
            yield f"event: {'final' if final else 'exit'}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()
            if final and metrics is not None:
                metrics.of_answer(item)
    except RequestError as exc:
        yield f"event: error\ndata: {json.dumps(error_body(exc.message))}\n\n".encode()
    except Exception as exc:  # the model failed: the stream ends with one line
        log.exception("infer_stream failed")
        yield f"event: error\ndata: {json.dumps(error_body(f'internal error: {type(exc).__name__}: {exc}'))}\n\n".encode()
