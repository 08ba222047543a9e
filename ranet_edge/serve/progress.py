"""Requests the stage engine reports on before their answer: deadlines and anytime streams.

A request with a deadline (``deadline_ms``, counted from its arrival) or a progress callback
(streaming) carries a :class:`Watch`. After every graph run that held rows of such a request,
the model thread (:func:`after_graph`):

- writes each of its rows still running a provisional answer: the label, confidence and
  logits at the deepest exit that graph computed;
- stops a row of a deadline request whose next graph is not expected to finish in time
  (now + the engine's expected time of that graph, ``runtime/deadline.py``, > deadline): the
  row leaves at that exit, marked ``deadline_cut``;
- publishes a :class:`Progress` (copies, never changed again): the request's answers so far,
  which are final, and which were cut; streams get it on their event loop.

On the asyncio side, :func:`wait` answers a deadline request at its deadline with the last
Progress, once every image has its first exit (a row still waiting for graph 0 is answered
as soon as graph 0 ran: it is then past its deadline and cut). So a request whose first exit
finished is answered with what it has, never left to time out.

Requests without a Watch cost the model thread nothing: it looks here only while one is live.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from ranet_edge.runtime.decision import confidence

from .api import RequestError
from .rows import Answer, Request, Rows

DEADLINE_PARAMETER = "deadline_ms"
POLL_S = 0.001  # past its deadline, how often a request waiting for its first exits looks again
TIMEOUT_MARGIN_S = 0.05  # a deadline request is answered this long before timeout_s at the latest


@dataclass(frozen=True)
class Progress:
    """One request's state after a graph run (arrays of its n images, in its input order)."""

    exit: int  # the deepest exit the graph run computed
    labels: np.ndarray  # int64 (n,): final answer, or provisional at the deepest exit reached
    exits: np.ndarray  # int64 (n,): exit of each answer (-1: no exit reached yet)
    confidences: np.ndarray  # float32 (n,)
    logits: np.ndarray  # float32 (n, classes): logits of the exit of each answer
    final: np.ndarray  # bool (n,): answers that will not change (left at an exit, or cut)
    cut: np.ndarray  # bool (n,): answers a deadline stopped
    server_ms: float  # arrival -> this graph run's end

    @property
    def deadline_cut(self) -> np.ndarray:
        """``cut``, under the name answers use."""
        return self.cut

    @property
    def reached(self) -> bool:
        """Whether every image has at least one exit computed."""
        return bool((self.exits >= 0).all())

    @property
    def done(self) -> bool:
        """Whether every answer is final."""
        return bool(self.final.all())


class Watch:
    """What the model thread tracks for a request with a deadline or a progress callback."""

    __slots__ = ("deadline", "on_progress", "final", "cut", "best")

    def __init__(self, n: int, deadline: float | None, on_progress: Callable[[Progress], None] | None):
        self.deadline = deadline  # perf_counter seconds, or None
        self.on_progress = on_progress  # called on the request's event loop
        self.final = np.zeros(n, bool)
        self.cut = np.zeros(n, bool)
        self.best: Progress | None = None  # the last Progress published


def parse_deadline(value: Any, where: str = f"parameter {DEADLINE_PARAMETER}") -> float | None:
    """A request's ``deadline_ms`` (a number, or the text of a number in a query string) in
    seconds; None when absent.

    Raises:
        RequestError: 400, not a finite number of milliseconds > 0.
    """
    if value is None:
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, Real) or not math.isfinite(number) or number <= 0:
        shown = value if isinstance(value, (int, float, str)) else type(value).__name__
        raise RequestError(400, f"{where} must be a number of milliseconds > 0, got {str(shown)[:40]!r}")
    return float(number) / 1e3


def within(deadline_s: float | None, start: float, timeout_s: float) -> float | None:
    """The engine's deadline (``perf_counter`` seconds) of a request that arrived at ``start``
    with ``deadline_s``, on a server that times requests out after ``timeout_s``: the earlier
    of the two, the timeout less a margin, so that a request with its first exit is answered
    rather than timed out (None without a deadline)."""
    if deadline_s is None:
        return None
    return start + min(deadline_s, timeout_s - TIMEOUT_MARGIN_S)


def after_graph(engine: Any, k: int, rows: Rows, last: np.ndarray, alive: np.ndarray,
                now: float) -> tuple[list[Request], int]:
    """Graph ``k`` of the StageEngine ``engine`` ran on ``rows``; ``alive`` (changed in place)
    marks the rows that go on and ``last`` holds every row's logits at the graph's deepest exit.
    Provisional answers, deadline cuts and Progress for watched requests (see the module doc).
    Returns the requests the cuts completed and the number of rows cut."""
    watched = [i for i, r in enumerate(rows.reqs) if r.watch is not None]
    if not watched:
        return [], 0
    mine = np.isin(rows.owner, watched)
    k_exit = engine.stages[k].exits[-1]
    going = np.flatnonzero(mine & alive)
    done: list[Request] = []
    cut = 0
    if len(going):
        z = np.asarray(last, np.float32)[going]
        temps = rows.temps[going, k_exit]
        conf = confidence(z / temps[:, None] if (temps != 1).any() else z)
        labels = z.argmax(axis=1)
        nxt = engine.times.expected(k + 1, len(going)) if k + 1 < len(engine.stages) else 0.0
        for j, r in enumerate(going.tolist()):
            req = rows.reqs[rows.owner[r]]
            s, w = rows.slot[r], req.watch
            req.labels[s], req.exits[s], req.conf[s], req.logits[s, :z.shape[1]] = labels[j], k_exit, conf[j], z[j]
            if w.deadline is not None and now + nxt > w.deadline:
                alive[r] = False
                w.cut[s] = w.final[s] = True
                req.left -= 1
                cut += 1
                if req.left == 0:
                    done.append(req)
    for r in np.flatnonzero(mine & ~alive).tolist():
        rows.reqs[rows.owner[r]].watch.final[rows.slot[r]] = True
    for i in watched:
        req = rows.reqs[i]
        w = req.watch
        reached = np.zeros(req.n, bool)
        reached[rows.slot[rows.owner == i]] = True
        if w.best is not None:
            reached |= w.best.exits >= 0
        labels, exits, conf = (np.where(reached, a, b) for a, b in ((req.labels, -1), (req.exits, -1), (req.conf, 0)))
        w.best = Progress(k_exit, labels, exits, conf.astype(np.float32), req.logits.copy(), w.final.copy(),
                          w.cut.copy(), (now - req.start) * 1e3)
        if w.on_progress is not None:
            try:
                req.loop.call_soon_threadsafe(w.on_progress, w.best)
            except RuntimeError:  # that loop is closed: nobody listens any more
                pass
    return done, cut


async def wait(engine: Any, req: Request) -> Answer:
    """A deadline request's answer (``engine``: the StageEngine): the engine's, or at the
    deadline the last Progress once every image reached an exit (see the module doc)."""
    left = req.watch.deadline - time.perf_counter()
    try:
        return await asyncio.wait_for(asyncio.shield(req.future), max(left, 0.0))
    except asyncio.TimeoutError:
        pass
    while not req.future.done() and (req.watch.best is None or not req.watch.best.reached):
        # some image still waits for graph 0: the model thread cuts it right after (it is past its
        # deadline); the others may wait in deeper queues, so look again after each short while
        await asyncio.wait({req.future}, timeout=POLL_S)
    best = req.watch.best
    if req.future.done():
        return req.future.result()
    with engine._cond:
        req.dropped = True  # its rows still queued are discarded
        engine._live.discard(req)
    return Answer(best.labels, best.exits, best.confidences, best.logits,
                  (time.perf_counter() - req.start) * 1e3, ~best.final | best.cut, req.point)


def deadline_cut(answer: Any) -> np.ndarray:
    """bool (n,): the images of ``answer`` a deadline stopped (all False without one)."""
    cut = getattr(answer, "deadline_cut", None)
    return np.zeros(len(answer.labels), bool) if cut is None else cut
