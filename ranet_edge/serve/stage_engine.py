"""The batching engine every ingress shares: survivors batched across requests, graph by graph.

Each graph of the chain has its own queue of rows (one row = one image of one request, with
its operating point's thresholds and the feature maps it has cached so far). One model
thread runs the graphs: it takes up to ``max_batch`` rows from a queue, runs the graph on
them, answers every request whose last image that graph decided (early answers), and puts
the rows that go on into the next graph's queue, where they meet the survivors of other
requests and other batches. Which queue runs next:

* a queue with a full batch, or whose oldest row entered the engine ``batch_wait_ms`` ago or
  more, runs first (the deepest of them): a row waits for company that long at most over
  all its graphs, not at each (counted at each, a 5 ms wait made the p99 at half load
  2-3x longer: docs/guides/serving.md);
* otherwise the shallowest queue with rows runs: the rows deeper down wait while earlier
  graphs still run rows that may join them, and the thread never idles while rows wait.

So a lone request runs straight through (no wait), and under load the later graphs run
full batches instead of the half-empty ones a batch's own survivors would make. Requests
with different operating points share graph runs: thresholds are per row.

``stage_batching=False`` is the baseline: each batch runs through all its graphs before the
next batch starts (its requests still answered graph by graph). The monolithic graph is one
stage. Rows of a named-input (text) bundle share a run only with rows of their own sequence
length (``Rows.take``). The asyncio side only queues rows and awaits futures; the model thread resolves them
through ``loop.call_soon_threadsafe``, one call per graph run.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from ranet_edge.errors import InputError
from ranet_edge.runtime.deadline import StageTimes
from ranet_edge.runtime.inputs import NamedBatch

from . import progress
from . import slo as slo_control
from .api import RequestError
from .engine import ServedModel
from .rows import RETRY_AFTER_S, Answer, GraphFailed, Overloaded, Request, Rows, fail_future, resolve

log = logging.getLogger("ranet_edge.serve")

SHUTTING_DOWN = "the server is shutting down; send the request again once it is back (or to another server)"


class StageEngine:
    """Classifies preprocessed images for any number of concurrent callers (see the module doc).

    ``max_batch``, ``batch_wait_ms`` and ``max_queue`` default to the model's settings
    (``max_batch`` at most the chain's, the largest batch its executor was prepared for).
    ``on_batch(graph_index, rows)`` is called (from the model thread) after each graph run,
    for metrics.

    Raises:
        InputError: the model's executor cannot merge rows of several requests (captured buffers).
    """

    def __init__(self, model: ServedModel, *, stage_batching: bool | None = None, max_batch: int | None = None,
                 batch_wait_ms: float | None = None, max_queue: int | None = None,
                 on_batch: Callable[[int, int], None] | None = None):
        s = model.settings
        self.model = model
        self.stage_batching = s.stage_batching if stage_batching is None else stage_batching
        self.executor = model.executor
        self.max_batch = min(max_batch or s.max_batch, model.chain.max_batch)
        self.wait_s = (s.batch_wait_ms if batch_wait_ms is None else batch_wait_ms) / 1e3
        self.max_queue = max_queue or s.max_queue
        self.on_batch = on_batch
        if self.executor.exclusive:  # fixed buffers cannot hold rows of several requests
            raise InputError(f"the {self.executor.kind} executor cannot merge rows of several requests; "
                             "load the chain without capture=True to serve it")
        self.stages = self.executor.graphs  # what runs: .path, .exits, per graph
        self._shape = tuple(model.chain.input_shape)
        self._queues: list[collections.deque[Rows]] = [collections.deque() for _ in self.stages]
        self._queued = [0] * len(self.stages)  # rows in each queue
        self._pending = 0  # images accepted and not yet decided (or discarded)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.closing = False
        self._live: set[Request] = set()  # requests not answered yet (close fails what it leaves)
        #: expected seconds per graph run (deadlines): the chain's, measured at load, refreshed here
        self.times = model.chain.stage_times if self.executor is model.chain.executor else StageTimes(len(self.stages))
        self._watched = 0  # live requests with a deadline or a progress callback (progress.py)
        self.deadline_scale = 1.0  # the share of deadline_ms the engine aims at, learnt (admission.py)
        #: ``--slo-ms``: picks a ladder rung per graph-0 batch for requests naming no point (slo.py)
        self.slo = slo_control.build(model, self.executor, self.max_batch)

    # ------------------------------------------------------------------ asyncio side
    async def start(self) -> None:
        """Start the model thread (again: nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ranet-edge-model", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Images accepted and not yet decided."""
        return self._pending

    @property
    def queued(self) -> list[int]:
        """Rows waiting in each graph's queue (not running)."""
        return list(self._queued)

    async def classify(self, x: np.ndarray | Mapping | NamedBatch, point: str | None, deadline: float | None = None,
                       on_progress: Callable[[progress.Progress], None] | None = None, *,
                       rule: str | None = None, patience: int | None = None) -> Answer:
        """Labels, exits, confidences and logits of the float32 (n, C, H, W) images ``x``
        (preprocessed), or of a named-input bundle's n samples (``x`` a mapping name -> array
        or a ``NamedBatch``, checked by :meth:`ServedModel.check_named`), under the stored
        operating point ``point`` (None: the server's default), or ``rule`` / ``patience``
        (:meth:`ServedModel.decision_of`).
        Cancelling the call discards its rows still queued. ``deadline`` (``time.perf_counter``
        seconds): answer by then with the deepest exit each image reached; ``on_progress``:
        called on this loop after each graph run with a :class:`~.progress.Progress` (see ``progress.py``).

        Raises:
            RequestError: 400 for a bad point or array (or named input), 413 for more images than ``max_queue``.
            Overloaded: 503, the queue is full or the server is draining (also for a request
                still unanswered when :meth:`close` gives up).
            RuntimeError: a graph run failed on this request's rows ("the model failed: ..."; a
                named-input bundle whose graph refused the values: RequestError 400, rows.GraphFailed).
        """
        thr, temps, code = self.model.decision_of(point, rule, patience)
        key = None  # images all share their shape; named inputs batch only with rows of their sizes
        if self.model.named:
            x = self.model.check_named(x)
            key = tuple(a.shape[1:] for a in x.arrays.values())
        elif not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 1 + len(self._shape) \
                or tuple(x.shape[1:]) != self._shape or x.shape[0] < 1:
            what = f"{x.dtype} {list(x.shape)}" if isinstance(x, np.ndarray) else type(x).__name__
            raise RequestError(400, f"the input is {what}; this model takes float32 [N, "
                                    f"{', '.join(map(str, self._shape))}] with N >= 1")
        elif not np.isfinite(x).all():
            raise RequestError(400, "the input holds NaN or infinite values; send finite numbers")
        if self.closing:
            raise Overloaded(SHUTTING_DOWN)
        n = len(x)
        if n > self.max_queue:
            raise RequestError(413, f"{n} images in one request, more than this server ever queues "
                                    f"(max_queue {self.max_queue}); split the request")
        if self._pending + n > self.max_queue:
            raise Overloaded(f"the server is at capacity ({self._pending} images queued, max_queue "
                             f"{self.max_queue}); retry after {RETRY_AFTER_S} s")
        auto = self.slo is not None and point is None and rule is None and patience is None  # a ladder rung
        if auto and not self.slo.admits(n, self._queued):
            raise Overloaded(f"the server cannot answer {n} more images within its objective of {self.slo.slo_ms:g} "
                             f"ms (--slo-ms), even at {self.slo.rungs[0].name}; retry after {RETRY_AFTER_S} s")
        if self._thread is None:
            await self.start()
        loop = asyncio.get_running_loop()
        req = Request(n, max(self.model.chain.exit_classes), loop.create_future(), loop)
        req.auto, req.point = auto, None if auto else self.model.check_point(point)
        if deadline is not None or on_progress is not None:
            req.watch = progress.Watch(n, deadline, on_progress)
        rows = Rows([req], np.zeros(n, np.intp), np.arange(n), np.broadcast_to(thr, (n, len(thr))),
                    np.broadcast_to(temps, (n, len(temps))), self.executor.feed(x), req.start, np.full(n, code),
                    key=key)
        with self._cond:
            self._pending += n
            self._watched += req.watch is not None
            self._live.add(req)
            self._queues[0].append(rows)
            self._queued[0] += n
            self._cond.notify()
        try:
            return await (req.future if req.watch is None or deadline is None else progress.wait(self, req))
        except asyncio.CancelledError:
            with self._cond:
                req.dropped = True  # its rows still queued are discarded
                self._live.discard(req)
            raise
        finally:
            self._watched -= req.watch is not None

    async def close(self, budget_s: float) -> bool:
        """Refuse new work (503) and answer what is in flight, for at most ``budget_s`` seconds;
        then stop the model thread. What is still unanswered then gets Overloaded. True when
        everything was answered in time."""
        self.closing = True
        deadline = time.monotonic() + budget_s
        while self._live and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        clean = not self._live
        with self._cond:
            self._stop = True
            self._cond.notify()
            left = list(self._live)
            self._live.clear()
        for req in left:
            if not req.future.done():
                req.future.set_exception(Overloaded(SHUTTING_DOWN))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, max(0.1, deadline - time.monotonic()))
        return clean

    # ------------------------------------------------------------------ model thread
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(self._queued):
                    self._cond.wait()
                if self._stop:
                    return
                k = self._pick(time.perf_counter())
                rows = self._take(k)
            failed = None if rows is None else self._go(k, rows)
            if failed is None:
                continue
            k, rows, exc = failed
            parts = rows.per_request(self.executor) if isinstance(exc, GraphFailed) else [rows]
            for part in parts:  # each request's rows alone: a bad input fails its own request only
                again = self._go(k, part) if len(parts) > 1 else failed
                if again is not None:
                    self._fail(again[1], again[2])

    def _go(self, k: int, rows: Rows) -> tuple[int, Rows, Exception] | None:
        """Run ``rows`` from graph ``k`` (stage batching: that graph; otherwise every graph to
        the end); None, or the graph that failed, its rows and the error."""
        try:
            if self.stage_batching:
                self._timed(k, rows, True)
            else:  # the whole batch, graph after graph, before the next batch
                while rows is not None:
                    rows = self._timed(k, rows, False)
                    k += 1
        except Exception as exc:  # the model failed: every request of the batch gets an answer
            log.exception("graph %s failed", self.stages[k].path)
            return k, rows, exc
        return None

    def _pick(self, now: float) -> int:
        """The queue to run next (see the module doc); some queue holds rows."""
        if not self.stage_batching:
            return 0
        ready = [k for k, q in enumerate(self._queues)
                 if q and (self._queued[k] >= self.max_batch or now - q[0].born >= self.wait_s)]
        if ready:
            return ready[-1]
        return next(k for k, q in enumerate(self._queued) if q)

    def _take(self, k: int) -> Rows | None:
        """Up to ``max_batch`` rows of queue ``k`` (under the lock), dropped requests' rows left out."""
        q = self._queues[k]
        parts, have = Rows.take(q, self.executor, self.max_batch)  # rows of one sequence length
        self._queued[k] -= have
        rows = Rows.merge(self.executor, parts)
        if any(r.dropped for r in rows.reqs):
            keep = ~np.array([r.dropped for r in rows.reqs])[rows.owner]
            self._pending -= int(len(keep) - keep.sum())
            rows = rows.select(self.executor, np.flatnonzero(keep), rows.env, rows.since) if keep.any() else None
        if k == 0 and self.slo is not None and rows is not None:
            slo_control.assign(self.slo, rows, q, self._queued, time.perf_counter())
        return rows

    def _timed(self, k: int, rows: Rows, hand_on: bool) -> Rows | None:
        """:meth:`_run`, its whole time handed to the ``--slo-ms`` controller."""
        t = time.perf_counter()
        out = self._run(k, rows, hand_on)
        if self.slo is not None:
            self.slo.observe_graph(k, len(rows), time.perf_counter() - t)
        return out

    def _run(self, k: int, rows: Rows, hand_on: bool = True) -> Rows | None:
        """Run graph ``k`` on ``rows``, answer the requests it completes; the rows that go on
        are queued for graph k+1 (``hand_on``) or returned."""
        t0 = time.perf_counter()
        try:
            logits, env = self.executor.run(k, rows.env)
        except Exception as exc:  # before any answer: the rows can run again, request by request
            raise GraphFailed(exc) from exc
        self.times.record(k, len(rows), time.perf_counter() - t0)
        if self.on_batch is not None:
            self.on_batch(k, len(rows))
        alive = np.ones(len(rows), bool)
        done: list[Request] = []
        decided = 0
        for e, z in zip(self.stages[k].exits, logits):
            take, labels, conf = rows.decide(e, z, alive)  # each row by its request's rule
            if not len(labels):
                continue
            alive &= ~take
            idx = np.flatnonzero(take)
            decided += len(idx)
            zt = np.asarray(z, np.float32)[idx]
            width = zt.shape[1]  # this exit's class count (Request.logits: the widest exit's)
            for i, r in enumerate(idx.tolist()):
                req = rows.reqs[rows.owner[r]]
                s = rows.slot[r]
                req.labels[s], req.exits[s], req.conf[s], req.logits[s, :width] = labels[i], e, conf[i], zt[i]
                req.left -= 1
                if req.left == 0:
                    done.append(req)
        if self._watched:  # deadlines and streams: provisional answers, cuts, progress
            more, cut = progress.after_graph(self, k, rows, logits[-1], alive, time.perf_counter())
            done, decided = done + more, decided + cut
        self._answer(done, decided)
        if not alive.any():
            return None
        nxt = rows.select(self.executor, np.flatnonzero(alive), env, time.perf_counter())
        if not hand_on:
            return nxt
        with self._cond:
            self._queues[k + 1].append(nxt)
            self._queued[k + 1] += len(nxt)
        return None

    def _answer(self, done: list[Request], decided: int) -> None:
        with self._cond:
            self._pending -= decided
            for req in done:
                self._live.discard(req)
        now = time.perf_counter()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Answer]]] = {}
        for req in done:
            answer = Answer(req.labels, req.exits, req.conf, req.logits, (now - req.start) * 1e3,
                            None if req.watch is None else req.watch.cut, req.point)
            if self.slo is not None:
                self.slo.observe_exits(req.rung if req.rung >= 0 else None, req.exits)
            by_loop.setdefault(req.loop, []).append((req.future, answer))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(resolve, items)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    def _fail(self, rows: Rows, exc: Exception) -> None:
        """Fail every request with a row in ``rows`` (a graph run on them raised)."""
        error = GraphFailed.answer(exc, self.model.named)
        with self._cond:
            self._pending -= len(rows)
            failed = [r for r in dict.fromkeys(rows.reqs[i] for i in np.unique(rows.owner)) if r in self._live]
            for req in failed:
                req.dropped = True  # its rows still queued are discarded
                self._live.discard(req)
        for req in failed:
            try:
                req.loop.call_soon_threadsafe(fail_future, req.future, error)
            except RuntimeError:
                pass


