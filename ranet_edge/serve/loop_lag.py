"""How late the server's event loop runs what is due: the time a request spends outside the
engine's queues, which ``--slo-ms`` and ``deadline_ms`` must leave room for.

A request's time on the one-process server is not all the engine's. Its bytes wait in the
socket until the event loop gets to them, and once the engine has answered, the handler
waits again for the loop to resume it and write the reply. On an idle loop both waits are
microseconds. On a saturated one (parsing, decoding and answering more requests than it
can), they grow to tens or hundreds of ms, and nothing the engine measures shows it:
``benchmarks/open_loop.py`` saw admitted requests answered in ~90 ms under a 30 ms
objective that the engine's own prediction said they fit.

:class:`LoopLag` measures those waits where they happen: a task that sleeps ``PERIOD_S``
and records how much later than due it woke (the time the loop spent on everything ready
before it). The estimate is a running mean of those delays, the latest weighing
``WEIGHT``: a saturated loop, late at every wake-up, raises it within a few wake-ups; one
long stall (a first request warming its sessions, a preempted thread on a busy machine)
moves it by a fifth of the stall, then fades (the ``--slo-ms`` controller learns the rest
from its answers' own times). While no request is in flight it wakes every ``IDLE_S`` only.
The server starts it once it listens, so its own start-up is not counted.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PERIOD_S = 0.005  # wake-ups while requests are in flight: 200 a second
IDLE_S = 0.05  # and while none is
WEIGHT = 0.2  # the weight of the latest delay in the running mean


class LoopLag:
    """The event loop's lag in ms (:attr:`ms`), kept by :meth:`run` on that loop.

    ``busy`` says whether requests are in flight (then the loop is watched every
    ``PERIOD_S``); ``on_change`` (optional) gets each new estimate, e.g. to hand it to the
    ``--slo-ms`` controller, which reads it from the model thread.
    """

    def __init__(self, busy: Callable[[], bool], on_change: Callable[[float], None] | None = None):
        self.busy = busy
        self.on_change = on_change
        self.ms = 0.0

    def late(self, ms: float) -> None:
        """A wake-up ``ms`` late: the running mean moves toward it by ``WEIGHT``."""
        self.ms += WEIGHT * (ms - self.ms)
        if self.on_change is not None:
            self.on_change(self.ms)

    async def run(self) -> None:
        """Watch the running loop until cancelled."""
        while True:
            period = PERIOD_S if self.busy() else IDLE_S
            t = time.perf_counter()  # not loop.time(): uvloop's is the time its iteration began
            await asyncio.sleep(period)
            self.late(max(time.perf_counter() - t - period, 0.0) * 1e3)
