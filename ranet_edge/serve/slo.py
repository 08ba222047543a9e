"""A latency objective instead of a growing queue (``ranet-edge serve --slo-ms S``).

The bundle's ladder (``calibrate --ladder N``: ``ladder-0``, every image at exit 0, ..
``ladder-(N-1)``, the most accurate) is the menu. Each batch the stage engine takes for
graph 0 gets the most accurate rung whose predicted completion fits the objective, for the
requests that name no operating point (a request that names one keeps it). The prediction,
in ms, for rung ``i`` taking ``T_i(m)`` ms to run ``m`` images::

    work ahead W = the time of the rows queued for graphs 1.. (with the shares that go on)
    head = waited(oldest row of the batch)   + W + T_i(rows(batch))
    tail = waited(youngest row of queue 0)   + W + T_i(rows(queue 0))
    fits when max(head, tail) <= HEADROOM * S - 2 * L

``L`` is the event loop's lag (``loop_lag.LoopLag``, set by the one-process server): a
request waits about that long before its handler runs and again after its answer, time the
engine's queues do not show (0 where nothing measures it).

What the prediction still misses (decoding, a preempted thread, a prediction gone wrong)
the controller learns from its own answers: the HTTP side reports each answered request's
time from arrival to answer, plus the loop's lag its reply still waits
(:meth:`SloController.observe_total`), and the budget's factor
``scale`` shrinks by ``MISS_CUT`` on each answer past the objective and recovers by
``RECOVER`` on each within it, so that it settles where ``TARGET_MISS`` of the answers miss
(the objective is a p99): ``fits when ... <= scale * HEADROOM * S - 2 * L``. An answer
counts as a miss past ``MISS_AT`` of ``S``: the client's clock adds what the server cannot see.

``T_i(m)`` sums, over the graphs, the time of the rung's share of ``m`` reaching each: a
graph's time is a line in its rows (ms per run + ms per row, ``max_batch`` rows a run, so
larger batches cost less per row) timed at load on 1 and ``max_batch`` rows, times a factor
that follows the engine's own runs of that graph (a busier machine: above 1). The shares
follow the answers given at each rung, once a rung has answered ``MIN_SEEN`` images
(before: graph 0's time times the rung's stored expected ms over exit 0's).
Below the floor (``--min-point``, default ``ladder-0``) nothing is cheaper: a request whose
predicted completion at the floor does not fit is refused with 503 and ``Retry-After``, as
a full queue is. The controller takes an injectable clock, so tests drive it exactly.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import CalibrationError, ConfigError
from ranet_edge.runtime.evaluation.ladder import ladder_names
from ranet_edge.runtime.operating_points import OperatingPoint

from .rows import RETRY_AFTER_S, Overloaded

HEADROOM = 0.8  # the share of the objective the model thread may use; the rest is for the HTTP side
MIN_SEEN = 64  # images a rung answers before its observed exit shares replace its stored cost
ALPHA = 0.1  # weight of each graph run in the running (geometric) factor of observed over predicted time
WINDOW = 512.0  # images over which the observed exit shares follow a change
MAX_GAP_S = 1.0  # a gap between two choices counts at most this long in the time below the default
TARGET_MISS = 0.01  # the share of answers past the objective the budget's factor settles at
MISS_CUT = 0.9  # the factor's step down on an answer past the objective
RECOVER = MISS_CUT ** (-TARGET_MISS / (1 - TARGET_MISS))  # and up on one within it: steady at TARGET_MISS
MIN_SCALE = 0.2  # the factor's floor: the engine always keeps a fifth of its share
#: an answer counts as a miss once the server's own measure of it passes this share of the
#: objective: the client's clock adds what no server sees (the request's wait in the socket
#: beyond the loop's mean lag, the client's own loop); benchmarks/open_loop.py on 2 cores:
#: at 1-1.5x load, p99 on the client's clock 28-31 ms against 30 with 0.8, 30-35 with 0.9
MISS_AT = 0.8


def learn(scale: float, missed: bool) -> float:
    """A budget's factor after one more answer (``missed``: its time passed ``MISS_AT`` of the
    objective or deadline): ``MISS_CUT`` times it after a miss, ``RECOVER``
    times it after a hit, within [``MIN_SCALE``, 1]: it settles where ``TARGET_MISS`` miss.
    The ``--slo-ms`` budget and the engine's share of each ``deadline_ms`` learn this way."""
    return max(MIN_SCALE, scale * MISS_CUT) if missed else min(1.0, scale * RECOVER)


def ladder_of(points: Mapping[str, OperatingPoint], slo_ms: float | None, min_point: str | None) -> list[str]:
    """The rungs ``--slo-ms`` moves along, from the floor up ([] without ``slo_ms``).

    Raises:
        ConfigError: ``slo_ms`` not above 0, ``min_point`` without ``slo_ms``, a bundle with no
            ladder, or a ``min_point`` that is not one of its rungs.
    """
    if slo_ms is None:
        if min_point is not None:
            raise ConfigError("--min-point is the floor of --slo-ms; add --slo-ms S")
        return []
    if isinstance(slo_ms, bool) or not isinstance(slo_ms, (int, float)) or not slo_ms > 0 or math.isinf(slo_ms):
        raise ConfigError(f"--slo-ms must be a number of milliseconds > 0, got {slo_ms!r}")
    try:
        names = ladder_names(points)
    except CalibrationError as exc:
        raise ConfigError(str(exc)) from None
    if not names:
        raise ConfigError("--slo-ms moves along the bundle's ladder, and this bundle has none; write one with "
                          "`ranet-edge calibrate BUNDLE --ladder 8`")
    floor = names[0] if min_point is None else min_point
    if floor not in names:
        raise ConfigError(f"--min-point {floor!r} is not a rung of the ladder; give one of {', '.join(names)}")
    return names[names.index(floor):]


@dataclass(frozen=True)
class Rung:
    """One rung as the engine applies it."""

    name: str
    thr: np.ndarray  # float32 (exits,)
    temps: np.ndarray  # float32 (exits,)
    ratio: float  # stored expected ms over the cheapest rung's (exit 0 alone): the cost before any is seen
    below_default: bool  # fewer expected FLOPs than the server's default point


def measure_graphs(executor, shape: Sequence[int], batch: int, repeats: int = 3) -> tuple[list[float], list[float]]:
    """(ms per run, ms per row) of each graph of ``executor``: the line through its time on 1
    and on ``batch`` zero images (run in turn, the best of ``repeats`` each)."""
    def times(n: int) -> list[float]:
        best = [math.inf] * len(executor.graphs)
        x = np.zeros((n, *shape), np.float32)
        for _ in range(repeats):
            env = executor.feed(x)
            for k in range(len(best)):
                t = time.perf_counter()
                _, env = executor.run(k, env)
                best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
        return best

    one, full = times(1), times(batch)
    per_row = [max((f - o) / max(batch - 1, 1), 1e-6) for o, f in zip(one, full, strict=True)]
    return [max(o - r, 0.0) for o, r in zip(one, per_row, strict=True)], per_row


class SloController:
    """Chooses a rung per graph-0 batch and decides admission (see the module doc).

    Graph ``k`` running ``r`` rows is predicted to take ``slow[k] * (run_ms[k] + r * row_ms[k])``
    ms, at most ``max_batch`` rows a run: ``run_ms`` and ``row_ms`` come from the load-time
    measurement, ``slow`` follows the engine's own runs (1 at load; above 1 when the machine
    is busier). ``graph_of_exit[e]`` is the graph that computes exit ``e``. Rungs are cheapest
    first; ``rungs[0]`` is the floor.
    """

    def __init__(self, rungs: Sequence[Rung], slo_ms: float, graph_of_exit: Sequence[int],
                 run_ms: Sequence[float], row_ms: Sequence[float], max_batch: int,
                 clock: Callable[[], float] = time.perf_counter):
        self.rungs = list(rungs)
        self.thr_table = np.stack([r.thr for r in self.rungs])  # (rungs, exits) float32
        self.temps_table = np.stack([r.temps for r in self.rungs])
        self.slo_ms = float(slo_ms)
        self.clock = clock
        self.graph_of_exit = np.asarray(graph_of_exit, np.intp)
        self.run_ms = np.asarray(run_ms, np.float64)
        self.row_ms = np.asarray(row_ms, np.float64)
        self.max_batch = max_batch
        g = len(self.run_ms)
        self.slow = np.ones(g)  # observed over predicted time of each graph's runs
        self.reach = np.zeros((len(self.rungs), g))  # share of each rung's images reaching each graph
        self.seen = np.zeros(len(self.rungs))  # images each rung answered
        self.all_reach = np.ones(g)  # over every answer (pessimistic until some are seen)
        self.current = len(self.rungs) - 1
        self.batches = [0] * len(self.rungs)  # graph-0 batches given each rung
        self.below_default_s = 0.0
        self._last = clock()
        #: the event loop's lag in ms (loop_lag.LoopLag writes it from the loop, the engine reads it)
        self.loop_lag_ms = 0.0
        self.scale = 1.0  # the budget's factor, learnt from the answers' own times (observe_total)

    # ------------------------------------------------------------------ predictions
    def budget_ms(self) -> float:
        """The engine's share of the objective: ``HEADROOM`` of it times the learnt ``scale``,
        less the event loop's lag twice (before a request's handler runs, and after its answer
        is ready)."""
        return self.scale * HEADROOM * self.slo_ms - 2.0 * self.loop_lag_ms

    def graph_time(self, k: int, rows: float) -> float:
        """ms for graph ``k`` to run ``rows`` rows, ``max_batch`` a run."""
        if rows <= 0:
            return 0.0
        runs = math.ceil(rows / self.max_batch - 1e-9)
        return float(self.slow[k] * (runs * self.run_ms[k] + rows * self.row_ms[k]))

    def rung_time(self, i: int, images: int) -> float:
        """ms for ``images`` images to run at rung ``i``, from graph 0 to their exits."""
        if images <= 0:
            return 0.0
        if self.seen[i] >= MIN_SEEN:
            return sum(self.graph_time(k, images * r) for k, r in enumerate(self.reach[i]) if r > 0)
        return self.rungs[i].ratio * self.graph_time(0, images)

    def ahead_ms(self, queued: Sequence[int]) -> float:
        """The work queued for graphs 1.. (rows already past graph 0), in ms."""
        w = 0.0
        for k in range(1, len(queued)):
            if queued[k]:
                share = np.minimum(self.all_reach[k:] / max(self.all_reach[k], 1e-9), 1.0)
                w += sum(self.graph_time(j, queued[k] * s) for j, s in zip(range(k, len(queued)), share, strict=True))
        return w

    def choose(self, queued: Sequence[int], batch: int, head_wait_ms: float, tail_wait_ms: float) -> int:
        """The rung for a batch of ``batch`` rows taken from queue 0 (``queued``: rows in each
        queue, the batch still counted in queue 0; waits: of its oldest row and of queue 0's
        youngest); the floor when none fits."""
        now = self.clock()
        if self.rungs[self.current].below_default:
            self.below_default_s += min(now - self._last, MAX_GAP_S)
        self._last = now
        w = self.ahead_ms(queued)
        budget = self.budget_ms()
        pick = 0
        for i in range(len(self.rungs) - 1, 0, -1):
            if max(head_wait_ms + w + self.rung_time(i, batch), tail_wait_ms + w + self.rung_time(i, queued[0])) <= budget:
                pick = i
                break
        self.current = pick
        self.batches[pick] += 1
        return pick

    def admits(self, n: int, queued: Sequence[int]) -> bool:
        """Whether ``n`` more images, queued behind ``queued``, are predicted to be answered
        within the objective at the floor. An idle engine admits whatever the prediction says:
        its runs are what corrects a prediction gone wrong (a factor learnt while the machine
        was busier), and a server refusing everything would never learn again."""
        if not any(queued):
            return True
        return self.ahead_ms(queued) + self.rung_time(0, queued[0] + n) <= self.budget_ms()

    def time_below_default(self) -> float:
        """Seconds the rung chosen last was below the default point, up to now."""
        extra = min(self.clock() - self._last, MAX_GAP_S) if self.rungs[self.current].below_default else 0.0
        return self.below_default_s + extra

    # ------------------------------------------------------------------ the engine's timings
    def observe_graph(self, k: int, rows: int, seconds: float) -> None:
        """Graph ``k`` ran ``rows`` rows in ``seconds`` (its run, exit decisions and answers)."""
        if rows > 0:  # a running geometric mean: one run preempted for 50 ms moves it by at most 8x ** ALPHA
            ratio = min(max(seconds * 1e3 / (self.run_ms[k] + rows * self.row_ms[k]), 1 / 8), 8.0)
            self.slow[k] = math.exp(math.log(self.slow[k]) + ALPHA * (math.log(ratio) - math.log(self.slow[k])))

    def observe_total(self, ms: float) -> None:
        """A request the controller placed was answered ``ms`` after it arrived (the HTTP
        side's measure, from the event loop): the budget's factor steps down on a miss of the
        objective and recovers on a hit (see the module doc)."""
        self.scale = learn(self.scale, ms > MISS_AT * self.slo_ms)

    def observe_exits(self, i: int | None, exits: np.ndarray) -> None:
        """One answer's images left at ``exits``; ``i``: its rung (None: a point the request named)."""
        graphs = self.graph_of_exit[exits]
        reached = (np.arange(len(self.run_ms))[None, :] <= graphs[:, None]).mean(axis=0)
        w = min(1.0, len(exits) / WINDOW)
        self.all_reach += w * (reached - self.all_reach)
        if i is not None:
            self.reach[i] = reached if self.seen[i] == 0 else self.reach[i] + w * (reached - self.reach[i])
            self.seen[i] += len(exits)


def build(model, executor, max_batch: int, clock: Callable[[], float] = time.perf_counter) -> SloController | None:
    """The controller of a served model (``model.ladder`` from :func:`ladder_of`); None without ``--slo-ms``."""
    if not getattr(model, "ladder", None):
        return None
    points = model.chain.operating_points
    cheapest = points["ladder-0"]  # every image at exit 0: what graph 0 alone costs
    one_graph = len(executor.graphs) == 1  # the monolithic graph: every rung costs the same
    default = points.get(model.default_point) if model.default_point else None
    rungs = []
    for name in model.ladder:
        p = points[name]
        thr, temps = model.chain.resolve_thresholds(name)
        if one_graph:
            ratio = 1.0
        elif p.expected_ms is not None and cheapest.expected_ms:
            ratio = p.expected_ms / cheapest.expected_ms
        else:
            ratio = p.expected_flops / cheapest.expected_flops
        below = default is not None and p.expected_flops < default.expected_flops
        rungs.append(Rung(name, np.asarray(thr, np.float32), np.asarray(temps, np.float32), ratio, below))
    graph_of_exit = np.zeros(model.chain.num_exits, np.intp)
    for k, g in enumerate(executor.graphs):
        graph_of_exit[list(g.exits)] = k
    run_ms, row_ms = measure_graphs(executor, model.chain.input_shape, max_batch)
    return SloController(rungs, model.settings.slo_ms, graph_of_exit, run_ms, row_ms, max_batch, clock)


def assign(ctrl: SloController, rows, queue, queued: Sequence[int], now: float) -> None:
    """Give the rows of a batch just taken for graph 0 (``rows``, a ``rows.Rows``) their
    rung: the one :meth:`SloController.choose` picks, for requests naming no point; a request
    whose first rows already got a rung keeps it, so each answer names one point. ``queue``
    and ``queued`` are the engine's queue 0 (what is left of it) and row counts per queue."""
    reqs = rows.reqs
    if not any(r.auto for r in reqs):
        return
    left = list(queued)
    left[0] += len(rows)  # the batch still counts as queue 0's
    tail = (now - queue[-1].since) * 1e3 if queue else 0.0
    i = ctrl.choose(left, len(rows), (now - rows.since) * 1e3, tail)
    by_req = np.full(len(reqs), -1, np.intp)
    for j, req in enumerate(reqs):
        if req.auto:
            if req.rung < 0:
                req.rung, req.point = i, ctrl.rungs[i].name
            by_req[j] = req.rung
    row_rung = by_req[rows.owner]
    auto = row_rung >= 0
    thr = ctrl.thr_table[np.maximum(row_rung, 0)]
    temps = ctrl.temps_table[np.maximum(row_rung, 0)]
    rows.thr = np.where(auto[:, None], thr, rows.thr)
    rows.temps = np.where(auto[:, None], temps, rows.temps)


def precheck(engine, point: str | None, waited_ms: float) -> None:
    """Shed a request before its images are decoded (the HTTP side's share of the work):
    with ``--slo-ms``, a request naming no point that has waited the objective times the
    learnt factor already (since its handler ran, plus the event loop's lag before it), or
    finds the queue predicted past it even at the floor for one more image. Under overload the
    event loop itself is a queue the engine's prediction does not see; once answers miss,
    the factor sheds what waited long on the loop, and the loop keeps some slack
    (``benchmarks/open_loop.py`` at 2x load: p99 28-34 ms against 38-69 with the whole
    objective as the limit, and more answers in time).

    Raises:
        Overloaded: 503 with ``Retry-After``.
    """
    ctrl = engine.slo
    if ctrl is None or point is not None:
        return
    if waited_ms + ctrl.loop_lag_ms >= ctrl.scale * ctrl.slo_ms or not ctrl.admits(1, engine.queued):
        raise Overloaded(f"the server cannot answer within its objective of {ctrl.slo_ms:g} ms (--slo-ms), "
                         f"even at {ctrl.rungs[0].name}; retry after {RETRY_AFTER_S} s")
