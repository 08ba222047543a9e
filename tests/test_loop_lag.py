"""The event loop's lag (serve/loop_lag.py): what the one-process server leaves room for in
``--slo-ms`` and ``deadline_ms``, measured on a real loop that a callback blocks."""
from __future__ import annotations

import asyncio
import time

import pytest

from ranet_edge.serve.loop_lag import DECAY, LoopLag


def test_the_estimate_rises_at_once_and_decays():
    seen = []
    lag = LoopLag(lambda: True, seen.append)
    lag.late(0.1)
    lag.late(40.0)
    assert lag.ms == 40.0
    lag.late(0.0)
    assert lag.ms == pytest.approx(40.0 * DECAY)
    lag.late(35.0)  # later than the decayed estimate: taken as it is
    assert lag.ms == 35.0 and seen == [0.1, 40.0, 40.0 * DECAY, 35.0]
    for _ in range(60):
        lag.late(0.2)
    assert lag.ms == 0.2  # back to what the loop shows once it is on time


def test_a_blocked_loop_is_seen_then_forgotten():
    async def main() -> tuple[float, float]:
        seen: list[float] = []
        lag = LoopLag(lambda: True, seen.append)
        task = asyncio.ensure_future(lag.run())
        await asyncio.sleep(0.03)
        asyncio.get_running_loop().call_soon(time.sleep, 0.06)  # one callback holds the loop 60 ms
        await asyncio.sleep(0.02)
        peak = max(seen)
        await asyncio.sleep(0.3)  # on time again: the estimate decays
        task.cancel()
        return peak, lag.ms

    peak, after = asyncio.run(main())
    assert peak >= 30.0 and after < peak / 4


def test_the_decay_follows_time_not_wake_ups():
    lag = LoopLag(lambda: False)
    lag.late(500.0)  # a start-up that held the loop half a second
    lag.late(0.0, after_s=1.0)  # one idle wake-up a second later
    assert lag.ms < 1e-3
