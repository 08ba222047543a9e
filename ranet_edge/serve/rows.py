"""The stage engine's bookkeeping: requests as the model thread fills them, rows in queues (each
row with its request's exit rule and, for ``patience``, its streak so far), and what a request is
answered (:class:`Answer`, or :class:`Overloaded`)."""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranet_edge.runtime.decision import RULES, Streak, decide
from ranet_edge.runtime.executors.base import Env, Executor

from .api import RequestError

RETRY_AFTER_S = 1  # what an overloaded or draining server asks a client to wait
RULE_CODE = {r: np.int8(i) for i, r in enumerate(RULES)}  # a row's rule, as Rows.rule holds it


@dataclass(frozen=True)
class Answer:
    """One request's results, in its input order."""

    labels: np.ndarray  # int64 (n,)
    exits: np.ndarray  # int64 (n,), 0-based exit index
    confidences: np.ndarray  # float32 (n,), max softmax probability at the exit taken
    logits: np.ndarray  # float32 (n, classes): the logits of the exit each image left at
    server_ms: float  # arrival -> last image decided
    deadline_cut: np.ndarray | None = None  # bool (n,): images a deadline stopped (None: no deadline)
    operating_point: str | None = None  # the stored point its images ran at (None: thresholds given)


class Overloaded(RequestError):
    """The server takes no more work now (queue full, or draining): 503, with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S):
        super().__init__(503, message)
        self.retry_after_s = retry_after_s


class GraphFailed(Exception):
    """A graph run raised (ONNX Runtime refused the rows: a token id past the vocabulary, ...)
    before anything was answered, so the rows may run again, each request's alone."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause

    @staticmethod
    def answer(exc: Exception, named: bool) -> Exception:
        """What the requests whose rows failed with ``exc`` get: a RuntimeError ("the model
        failed: ...", a 500), or for a named-input bundle whose graph refused an argument
        (ONNX Runtime's InvalidArgument: a token id past the vocabulary, a sequence past the
        position table) a 400 naming the model's complaint; after a failed merged batch each
        request's rows run alone, so only the request that sent them gets it."""
        exc = exc.cause if isinstance(exc, GraphFailed) else exc
        if named and type(exc).__name__ == "InvalidArgument":
            text = str(exc)
            why = text.split("Status Message:", 1)[-1].strip()[:200]
            return RequestError(400, f"the model refused these inputs: {why}; check the values (token ids "
                                     "within the vocabulary, the sequence within the model's positions)")
        return RuntimeError(f"the model failed: {type(exc).__name__}: {exc}")


class Request:
    """One classify call as the model thread fills it."""

    __slots__ = ("n", "left", "labels", "exits", "conf", "logits", "future", "loop", "start", "dropped", "watch",
                 "point", "auto", "rung")

    def __init__(self, n: int, num_classes: int, future: asyncio.Future, loop: asyncio.AbstractEventLoop):
        self.n = self.left = n
        self.labels = np.empty(n, np.int64)
        self.exits = np.empty(n, np.int64)
        self.conf = np.empty(n, np.float32)
        self.logits = np.zeros((n, num_classes), np.float32)  # zero beyond an exit's own class count
        self.future, self.loop = future, loop
        self.start = time.perf_counter()
        self.dropped = False  # the caller gave up (timeout, disconnect): its rows are discarded
        self.watch = None  # progress.Watch: a deadline or a progress callback (see progress.py)
        self.point: str | None = None  # the stored operating point it runs at (named in its answer)
        self.auto = False  # --slo-ms picks its point (a ladder rung) when its first rows start
        self.rung = -1  # that rung's index in the controller, once picked


class Rows:
    """Rows waiting for one graph: whose they are, their thresholds and exit rule, and their
    tensors as the executor holds them (an :class:`~ranet_edge.runtime.executors.base.Env`)."""

    __slots__ = ("reqs", "owner", "slot", "thr", "temps", "env", "since", "rule", "streak", "key", "born")

    def __init__(self, reqs: list[Request], owner: np.ndarray, slot: np.ndarray, thr: np.ndarray,
                 temps: np.ndarray, env: Env, since: float, rule: np.ndarray | None = None,
                 streak: Streak | None = None, key: tuple | None = None, born: float | None = None):
        self.reqs = reqs  # the requests the rows belong to
        self.owner = owner  # int (m,): index into reqs of each row
        self.slot = slot  # int (m,): position of each row in its request
        self.thr = thr  # float32 (m, exits): each row's thresholds (its operating point)
        self.temps = temps  # float32 (m, exits): each row's temperatures
        self.env = env  # what this graph and later ones read, for these m rows
        self.since = since  # when the oldest of these rows joined this queue (perf_counter)
        self.rule = np.zeros(len(owner), np.int8) if rule is None else rule  # int8 (m,): RULE_CODE of each row
        self.streak = streak  # the patience rule's state of every row (None: no patience row decided yet)
        #: what rows must share to run in one batch: the sizes of a named-input request's dynamic
        #: axes (its sequence length); None for images, which all share their shape
        self.key = key
        #: when the oldest of these rows entered the engine (graph 0's queue): what bounds a
        #: row's waits for company over all its graphs (StageEngine._pick)
        self.born = since if born is None else born

    def __len__(self) -> int:
        return len(self.owner)

    def select(self, ex: Executor, keep: np.ndarray, env: Env, since: float) -> Rows:
        """The rows ``keep`` (sorted positions) with tensors ``env`` (still of all rows)."""
        return Rows(self.reqs, self.owner[keep], self.slot[keep], self.thr[keep], self.temps[keep],
                    env if len(keep) == len(self) else ex.take(env, keep), since, self.rule[keep],
                    None if self.streak is None else self.streak.take(keep), self.key, self.born)

    def decide(self, e: int, z: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit ``e``'s decision for these rows, each by its own rule and thresholds
        (:func:`~ranet_edge.runtime.decision.decide` once per rule present): (take (m,), labels
        and confidences of the leaving rows, in row order). Keeps the patience streak."""
        codes = self.rule
        if (codes == codes[0]).all():  # the usual case: one rule
            groups = [(RULES[codes[0]], None)]
        else:
            groups = [(RULES[c], codes == c) for c in np.unique(codes)]
        take = np.zeros(len(codes), bool)
        labels, conf = np.empty(len(codes), np.int64), np.empty(len(codes), np.float32)
        for rule, mine in groups:
            d = decide(z, self.thr[:, e], self.temps[:, e], alive if mine is None else alive & mine, rule,
                       self.streak if rule == "patience" else None)
            if d.state is not None:
                self.streak = d.state
            if mine is None:
                return d.take, d.labels, d.confidences
            take |= d.take
            labels[d.take], conf[d.take] = d.labels, d.confidences
        return take, labels[take], conf[take]

    def per_request(self, ex: Executor) -> list[Rows]:
        """These rows split by request (a request may own several parts of them)."""
        groups: dict[int, list[int]] = {}
        for i, req in enumerate(self.reqs):
            groups.setdefault(id(req), []).append(i)
        if len(groups) == 1:
            return [self]
        return [self.select(ex, np.flatnonzero(np.isin(self.owner, owners)), self.env, self.since)
                for owners in groups.values()]

    def cut(self, ex: Executor, t: int) -> tuple[Rows, Rows]:
        """The first ``t`` rows and the rest."""
        n = len(self)
        return (self.select(ex, np.arange(t), self.env, self.since),
                self.select(ex, np.arange(t, n), self.env, self.since))

    @staticmethod
    def take(queue: collections.deque[Rows], ex: Executor, most: int) -> tuple[list[Rows], int]:
        """Up to ``most`` rows from the front of ``queue`` that can share one graph run (taken out
        of it, cut where a part does not fit): the oldest part's, and every later part of the same
        :attr:`Rows.key`, in queue order. Parts of another key stay queued in their order, so the
        oldest rows always run next. Returns (the parts, their row count).

        Rows of different sequence lengths are not padded to one: the server cannot know how a
        model reads padding, and padded rows would not give ``ExitChain.predict``'s answers on the
        request's own arrays (see docs/guides/serving.md, "Text bundles")."""
        parts: list[Rows] = []
        have = 0
        key = queue[0].key if queue else None
        skipped: list[Rows] = []
        while queue and have < most:
            part = queue.popleft()
            if part.key != key:
                skipped.append(part)
                continue
            if have + len(part) > most:
                part, rest = part.cut(ex, most - have)
                queue.appendleft(rest)
            parts.append(part)
            have += len(part)
        queue.extendleft(reversed(skipped))  # back at the front, in their order
        return parts, have

    @staticmethod
    def merge(ex: Executor, parts: Sequence[Rows]) -> Rows:
        """One Rows of ``parts`` in order (requests of several batches, tensors concatenated
        by ``ex``; all of one :attr:`key`); ``since`` is the oldest part's.

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
        streak = None
        known = next((p.streak for p in parts if p.streak is not None), None)
        if known is not None:  # rows no patience decision has seen yet agree with nothing (label -1)
            labels = [np.full(len(p), -1, np.int64) if p.streak is None else p.streak.labels for p in parts]
            counts = [np.zeros(len(p), np.int64) if p.streak is None else p.streak.count for p in parts]
            streak = Streak(np.concatenate(labels), np.concatenate(counts), known.classes)
        return Rows(reqs, np.concatenate(owners), np.concatenate([p.slot for p in parts]),
                    np.concatenate([p.thr for p in parts]), np.concatenate([p.temps for p in parts]),
                    ex.concat([p.env for p in parts]), min(p.since for p in parts),
                    np.concatenate([p.rule for p in parts]), streak, parts[0].key, min(p.born for p in parts))


def resolve(items: list[tuple[asyncio.Future, object]]) -> None:
    """Set each future's answer (the model thread calls it on the futures' loop)."""
    for future, answer in items:
        if not future.done():
            future.set_result(answer)


def fail_future(future: asyncio.Future, error: Exception) -> None:
    """Fail ``future`` with ``error`` unless it is done (on its loop)."""
    if not future.done():
        future.set_exception(error)
