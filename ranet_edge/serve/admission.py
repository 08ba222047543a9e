"""Refusals before decoding: a request that cannot be answered in time costs least as a 503
sent before its images are decoded and queued.

Every ingress (``/v1``, ``/v2`` REST, gRPC, and the streams of both) calls :func:`check` once
it knows the request's parameters and image count, and before it decodes the images:

- ``--slo-ms`` (``slo.precheck``): a request naming no point that has waited the objective
  times the budget's learnt factor already, or finds the queue predicted past it even at
  the floor of the ladder;
- ``deadline_ms``: a request whose first exit is predicted past its deadline. Its time
  since arrival (the handler's wait so far, plus the event loop's lag before the handler
  ran), plus the engine's expected time of the rows queued at every graph (rows further
  down are older, and the engine runs them first once their wait is spent) and of graph 0 on
  the request's own images, exceeds the deadline. Such a request would get its first exit
  late whatever happens; answering it would also spend the time that later requests need to
  meet theirs. It gets 503 with ``Retry-After`` and a message naming the predicted time. So
  does one that waited for the event loop (its handler's wait so far plus the loop's lag) as
  long as the share of its deadline the engine aims at (below): under overload the loop is a
  queue too (``benchmarks/open_loop.py`` at 1x load: 99.0-100% of the answers within the
  deadline + 2 ms on the client's clock, 1.4-3.7% refused, against 85-99% without). An
  idle engine (no rows queued) takes every request, as the ``--slo-ms`` controller does: a
  deadline shorter than graph 0 alone is answered at exit 0, late, as ``predict`` would.

What the prediction misses (the time a request spends outside the engine on a saturated
machine: its bytes waiting for the loop, decoding slowed by the other threads, the reply
waiting to be sent) the engine learns from its own answers, as the ``--slo-ms`` budget does
(``slo.learn``): each deadline request reports its time from arrival to its reply, plus the
loop's lag (:func:`observe`), and the share of ``deadline_ms`` the engine aims at
(``StageEngine.deadline_scale``) steps down on a miss (past ``slo.MISS_AT`` of the deadline:
the client's clock adds what the server cannot see) and recovers on a hit, settling where
1% miss. Under a load the machine can just carry, the engine then cuts rows a little
earlier, and the work it saves keeps the rest in time. An answer the engine itself had past
its aim (``OVERRUN_MS``) is not counted: the share is for the time outside the engine.

The engine's expected times are its own measurements (``runtime/deadline.py``'s
``StageTimes``, refreshed by every graph run); before the first run they are 0 and nothing is
refused. A request the check admits can still be cut at a deadline (``progress.py``).
"""
from __future__ import annotations

import math
import time
from typing import Any

from .rows import RETRY_AFTER_S, Overloaded
from .slo import MISS_AT, learn, precheck

OVERRUN_MS = 1.0  # an answer ready in the engine later than this past its aim is not counted (observe)


def first_exit_ms(engine: Any, n: int) -> float:
    """Expected ms until ``n`` more images get their first exit on ``engine`` (a StageEngine):
    the rows queued at every graph, in runs of ``max_batch``, then graph 0 on the ``n``."""
    times, cap = engine.times, max(int(engine.max_batch), 1)
    seconds = 0.0
    for k, q in enumerate(engine.queued):
        if q:
            runs = math.ceil(q / cap)
            seconds += (runs - 1) * times.expected(k, cap) + times.expected(k, q - (runs - 1) * cap)
    return (seconds + times.expected(0, max(int(n), 1))) * 1e3


def check(engine: Any, waited_ms: float, lag_ms: float = 0.0, *, point: str | None = None,
          rule: str | None = None, patience: int | None = None, deadline_s: float | None = None,
          n: int = 1) -> None:
    """Refuse now what cannot be answered in time (see the module doc): ``waited_ms`` since the
    handler ran, ``lag_ms`` the event loop's lag (0 where nothing measures it), ``n`` images.

    Raises:
        Overloaded: 503 with ``Retry-After``.
    """
    if point is None and rule is None and patience is None:
        precheck(engine, None, waited_ms)
    if deadline_s is None or not any(engine.queued):
        return
    waited, deadline_ms = waited_ms + lag_ms, deadline_s * 1e3
    share_ms = engine.deadline_scale * deadline_ms
    if waited >= share_ms:
        raise Overloaded(f"the request waited {waited:.1f} ms for the server's event loop, past the "
                         f"{share_ms:.1f} ms of its deadline_ms {deadline_ms:g} that this server aims at under "
                         f"its load now; retry after {RETRY_AFTER_S} s, or give a longer deadline_ms")
    ahead = first_exit_ms(engine, n)
    if waited + ahead > deadline_ms:
        raise Overloaded(f"the first exit is predicted {waited + ahead:.1f} ms after arrival, past deadline_ms "
                         f"{deadline_ms:g} (waited {waited:.1f} ms, {ahead:.1f} ms of work ahead); retry after "
                         f"{RETRY_AFTER_S} s, or give a longer deadline_ms")


def engine_deadline(engine: Any, deadline_s: float | None, lag_s: float) -> float | None:
    """The part of ``deadline_s`` (from arrival) the engine aims at: its learnt share, less the
    loop's lag ``lag_s`` that the answer waits again before it is sent (None: no deadline)."""
    if deadline_s is None:
        return None
    return max(engine.deadline_scale * deadline_s - lag_s, 0.0)


def observe(engine: Any, ms: float, deadline_s: float, engine_ms: float, aim_s: float) -> None:
    """A deadline request was answered ``ms`` after it arrived (plus the lag its reply waits),
    its answer ready in the engine ``engine_ms`` after arrival, against the engine's aim
    ``aim_s`` (:func:`engine_deadline`): the engine's share of deadlines steps down on a miss,
    up on a hit (see the module doc). An answer the engine itself had late (a deadline
    shorter than graph 0, a first exit behind a long queue) says nothing of the time outside
    the engine, and is not counted: one client's impossible deadlines do not cut everyone's."""
    if engine_ms > aim_s * 1e3 + OVERRUN_MS:
        return
    engine.deadline_scale = learn(engine.deadline_scale, ms > MISS_AT * deadline_s * 1e3)


def answered(engine: Any, deadline_s: float | None, aim_s: float | None, arrived: float, intake: float,
             lag_s: float, server_ms: float) -> None:
    """:func:`observe` a deadline answer as every ingress times it (no deadline: nothing): from
    ``arrived`` (the handler's start less the loop's lag ``lag_s``) to now, plus the lag its
    reply waits; the engine's part from ``arrived`` to its ``intake``, plus the answer's
    ``server_ms``."""
    if deadline_s is not None:
        observe(engine, (time.perf_counter() - arrived + lag_s) * 1e3, deadline_s,
                (intake - arrived) * 1e3 + server_ms, aim_s)
