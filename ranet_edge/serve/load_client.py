"""A load generator that checks every answer and honours ``503 + Retry-After``.

Closed-loop clients (aiohttp, one asyncio loop in a thread of its own) post images to
``/v1/classify`` until told to stop, each request until it is answered: a 503 with
``Retry-After`` is waited out and the same request sent again; anything else that is not a
200 carrying the expected labels counts as failed. For the cluster test and benchmark
(``tests/test_ray_cluster.py``, ``benchmarks/ray_cluster.py``): the counts say whether a
node lost under load lost a request.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import numpy as np

MAX_RETRY_AFTER_S = 5.0  # a longer Retry-After is waited this long
REQUEST_TIMEOUT_S = 60.0


@dataclass
class Tally:
    """What the clients saw. ``sent`` counts requests once however often each was sent."""

    sent: int = 0
    ok: int = 0  # answered 200 with the expected labels
    retried: int = 0  # of those, answered after the ingress tried another replica (x-ranet-retried)
    deferred: int = 0  # 503 + Retry-After answers, each waited out and the request sent again
    failed: int = 0  # another status, a wrong label, a connection error: not sent again
    errors: list[str] = field(default_factory=list)  # the first failures, said
    answers: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, replica) of each 200

    def counts(self) -> dict:
        """The counts, as the benchmark writes them."""
        return {"sent": self.sent, "answered_200": self.ok, "retried_by_ingress": self.retried,
                "answered_503_then_resent": self.deferred, "failed": self.failed,
                "unanswered": self.sent - self.ok - self.failed}

    def rate(self, start: float, end: float) -> float:
        """Requests answered 200 per second between two monotonic times."""
        n = sum(1 for t, _ in self.answers if start <= t < end)
        return n / max(end - start, 1e-9)


def sample_requests(n: int = 64, per_request: int = 1) -> list[tuple[bytes, list[int]]]:
    """``n`` requests of the shipped sample images, each with the labels ``ExitChain.predict``
    gives them at the shipped bundle's default operating point (what the server must answer):
    one PNG each, or with ``per_request`` > 1 a JSON list of that many base64 PNGs."""
    import base64
    import json

    import cv2

    from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
    from ranet_edge.runtime import ExitChain

    with np.load(SAMPLE_IMAGES) as z:
        x = z["x"]
    chain = ExitChain.load(DEFAULT_BUNDLE)
    labels = chain.predict(chain.preprocess(x)).labels.tolist()
    pngs = [cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]))[1].tobytes() for im in x]
    out = []
    for i in range(n):
        idx = [(i * per_request + j) % len(x) for j in range(per_request)]
        if per_request == 1:
            out.append((pngs[idx[0]], [int(labels[idx[0]])]))
        else:
            body = json.dumps([base64.b64encode(pngs[k]).decode() for k in idx]).encode()
            out.append((body, [int(labels[k]) for k in idx]))
    return out


class Load:
    """``clients`` closed-loop clients posting ``requests`` to ``url + "/v1/classify"`` in
    turn, from :meth:`start` until :meth:`stop`; :attr:`tally` counts as they go. With
    ``rate``, the clients together start at most that many requests per second (a steady
    load that leaves the machine room, as a cluster's other machines would have)."""

    def __init__(self, url: str, requests: list[tuple[bytes, list[int]]], clients: int = 4,
                 rate: float | None = None):
        self.url, self.requests, self.clients = url.rstrip("/") + "/v1/classify", requests, clients
        self.interval = clients / rate if rate else 0.0  # between two requests of one client
        self.tally = Tally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self, timeout: float = REQUEST_TIMEOUT_S + 10) -> Tally:
        """Let each client finish the request it is on (sent again until answered), then stop."""
        self._stop.set()
        self._thread.join(timeout)
        return self.tally

    async def _run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            await asyncio.gather(*(self._client(session, k) for k in range(self.clients)))

    async def _client(self, session, k: int) -> None:
        i, slot = k, time.monotonic() + self.interval * k / self.clients
        while not self._stop.is_set():
            if self.interval:
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
                slot = max(slot + self.interval, time.monotonic() - self.interval)
            body, want = self.requests[i % len(self.requests)]
            i += self.clients
            self.tally.sent += 1
            await self._until_answered(session, body, want)

    async def _until_answered(self, session, body: bytes, want: list[int]) -> None:
        t = self.tally
        while True:
            try:
                ctype = "application/json" if body[:1] == b"[" else "image/png"
                async with session.post(self.url, data=body, headers={"Content-Type": ctype}) as r:
                    status, headers = r.status, r.headers
                    payload = await r.json(content_type=None) if status in (200, 503) else await r.text()
            except Exception as exc:  # a connection reset, a timeout: not an answer
                return self._fail(f"{type(exc).__name__}: {exc}")
            if status == 503 and "Retry-After" in headers:
                t.deferred += 1
                await asyncio.sleep(min(float(headers["Retry-After"]), MAX_RETRY_AFTER_S))
                continue
            if status != 200:
                return self._fail(f"{status}: {str(payload)[:200]}")
            got = [p["label"] for p in payload["predictions"]]
            if got != want:
                return self._fail(f"labels {got}, expected {want}")
            t.ok += 1
            t.retried += "x-ranet-retried" in headers
            t.answers.append((time.monotonic(), payload.get("replica", "")))
            return None

    def _fail(self, why: str) -> None:
        self.tally.failed += 1
        if len(self.tally.errors) < 10:
            self.tally.errors.append(why)
