"""The event loop's lag (serve/loop_lag.py): what the one-process server leaves room for in
``--slo-ms`` and ``deadline_ms``, measured on a real loop that a callback blocks."""
from __future__ import annotations

import asyncio
import time

import pytest

from ranet_edge.serve.loop_lag import WEIGHT, LoopLag


def test_the_estimate_is_a_running_mean_of_the_delays():
    seen = []
    lag = LoopLag(lambda: True, seen.append)
    lag.late(40.0)
    assert lag.ms == pytest.approx(40.0 * WEIGHT)
    lag.late(0.0)
    assert lag.ms == pytest.approx(40.0 * WEIGHT * (1 - WEIGHT)) and len(seen) == 2
    for _ in range(100):  # a loop late by 10 ms at every wake-up: the mean goes there
        lag.late(10.0)
    assert lag.ms == pytest.approx(10.0)


def test_one_long_stall_counts_a_fifth_then_fades():
    lag = LoopLag(lambda: False)
    lag.late(500.0)  # a first request that held the loop half a second
    assert lag.ms == pytest.approx(500.0 * WEIGHT)
    for _ in range(40):  # 40 wake-ups on time: 2 s idle, or 0.2 s busy
        lag.late(0.0)
    assert lag.ms < 0.1


def test_a_blocked_loop_is_seen_then_forgotten():
    async def main() -> tuple[float, float]:
        seen: list[float] = []
        lag = LoopLag(lambda: True, seen.append)
        task = asyncio.ensure_future(lag.run())
        await asyncio.sleep(0.03)
        asyncio.get_running_loop().call_soon(time.sleep, 0.1)  # one callback holds the loop 100 ms
        await asyncio.sleep(0.02)
        peak = max(seen)
        await asyncio.sleep(0.5)  # on time again: the mean comes down
        task.cancel()
        return peak, lag.ms

    peak, after = asyncio.run(main())
    assert peak >= 10.0 and after < peak / 4
