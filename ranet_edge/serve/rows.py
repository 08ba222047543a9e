"""The stage engine's bookkeeping: requests as the model thread fills them, and rows in queues."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from ranet_edge.runtime.executors.base import Env, Executor


class Request:
    """One classify call as the model thread fills it."""

    __slots__ = ("n", "left", "labels", "exits", "conf", "logits", "future", "loop", "start", "dropped")

    def __init__(self, n: int, num_classes: int, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.n = self.left = n
        self.labels = np.empty(n, np.int64)
        self.exits = np.empty(n, np.int64)
        self.conf = np.empty(n, np.float32)
        self.logits = np.empty((n, num_classes), np.float32)
        self.future, self.loop = future, loop
        self.start = time.perf_counter()
        self.dropped = False  # the caller gave up (timeout, disconnect): its rows are discarded


class Rows:
    """Rows waiting for one graph: whose they are, their thresholds, and their tensors as the
    executor holds them (an :class:`~ranet_edge.runtime.executors.base.Env`)."""

    __slots__ = ("reqs", "owner", "slot", "thr", "temps", "env", "since")

    def __init__(self, reqs: list[Request], owner: np.ndarray, slot: np.ndarray, thr: np.ndarray,
                 temps: np.ndarray, env: Env, since: float):
        self.reqs = reqs  # the requests the rows belong to
        self.owner = owner  # int (m,): index into reqs of each row
        self.slot = slot  # int (m,): position of each row in its request
        self.thr = thr  # float32 (m, exits): each row's thresholds (its operating point)
        self.temps = temps  # float32 (m, exits): each row's temperatures
        self.env = env  # what this graph and later ones read, for these m rows
        self.since = since  # when the oldest of these rows joined this queue (perf_counter)

    def __len__(self) -> int:
        return len(self.owner)

    def select(self, ex: Executor, keep: np.ndarray, env: Env, since: float) -> Rows:
        """The rows ``keep`` (sorted positions) with tensors ``env`` (still of all rows)."""
        return Rows(self.reqs, self.owner[keep], self.slot[keep], self.thr[keep], self.temps[keep],
                    env if len(keep) == len(self) else ex.take(env, keep), since)

    def cut(self, ex: Executor, t: int) -> tuple[Rows, Rows]:
        """The first ``t`` rows and the rest."""
        n = len(self)
        return (self.select(ex, np.arange(t), self.env, self.since),
                self.select(ex, np.arange(t, n), self.env, self.since))

    @staticmethod
    def merge(ex: Executor, parts: Sequence[Rows]) -> Rows:
        """One Rows of ``parts`` in order (requests of several batches, tensors concatenated
        by ``ex``); ``since`` is the oldest part's.

        Raises:
            InputError: several parts and an executor that cannot merge rows (captured buffers).
        """
        if len(parts) == 1:
            return parts[0]
        reqs: list[Request] = []
        owners = []
        for p in parts:
            owners.append(p.owner + len(reqs))
            reqs.extend(p.reqs)
        return Rows(reqs, np.concatenate(owners), np.concatenate([p.slot for p in parts]),
                    np.concatenate([p.thr for p in parts]), np.concatenate([p.temps for p in parts]),
                    ex.concat([p.env for p in parts]), min(p.since for p in parts))
