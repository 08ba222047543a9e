"""Prometheus metrics of a server, from ``prometheus_client`` (GET /metrics).

Each server has a registry of its own (two servers in one process, as in the tests, do not
share counters). Queue depths are read from the engine when scraped.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .stage_engine import StageEngine

LATENCY_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # no *_created series: half the text for nothing a dashboard reads


class _Queues:
    """ranet_queue_images (accepted, not decided) and ranet_graph_queue_rows{graph} at scrape time;
    with ``--slo-ms``, the time below the default point and the rung chosen last."""

    def __init__(self, engine: StageEngine):
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("ranet_queue_images", "images accepted and not yet decided (the bounded queue)",
                                value=self.engine.pending)
        rows = GaugeMetricFamily("ranet_graph_queue_rows", "rows waiting for each graph", labels=["graph"])
        for k, n in enumerate(self.engine.queued):
            rows.add_metric([str(k)], n)
        yield rows
        yield GaugeMetricFamily("ranet_deadline_share", "the share of each deadline_ms the engine aims at, learnt "
                                "from the answers' own times (1: the whole deadline)", value=self.engine.deadline_scale)
        slo = self.engine.slo
        if slo is not None:
            yield CounterMetricFamily("ranet_slo_below_default_seconds", "seconds the --slo-ms controller ran "
                                      "graph-0 batches at a ladder rung cheaper than the default point",
                                      value=slo.time_below_default())
            rung = GaugeMetricFamily("ranet_slo_operating_point", "1 for the ladder rung --slo-ms chose last",
                                     labels=["operating_point"])
            for i, r in enumerate(slo.rungs):
                rung.add_metric([r.name], float(i == slo.current))
            yield rung
            yield GaugeMetricFamily("ranet_slo_budget_factor", "the --slo-ms budget's factor learnt from the "
                                    "answers' own times (1: the whole engine share)", value=slo.scale)


class Metrics:
    """Requests by route and status, latency, the exit histogram, rows per graph run, queue depth."""

    def __init__(self, engine: StageEngine, max_batch: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ranet_requests", "requests answered, by route and HTTP status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("ranet_request_seconds", "seconds from a request's arrival to its answer",
                                 ["route"], buckets=LATENCY_S, registry=r)
        self.exits = Counter("ranet_exit_images", "images classified, by the exit they left at", ["exit"], registry=r)
        self.points = Counter("ranet_answers", "requests answered, by the operating point their images ran at",
                              ["operating_point"], registry=r)
        bounds = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if b < max_batch] + [max_batch]
        self.batch = Histogram("ranet_graph_batch_rows", "rows per run of each graph", ["graph"],
                               buckets=bounds, registry=r)
        self._batch = [self.batch.labels(str(k)) for k in range(len(engine.stages))]
        self._exits = [self.exits.labels(str(k)) for k in range(engine.model.chain.num_exits)]
        r.register(_Queues(engine))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open fds

    def on_batch(self, graph: int, rows: int) -> None:
        """StageEngine's ``on_batch`` hook (called from the model thread)."""
        self._batch[graph].observe(rows)

    def answered(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request of ``route`` and observe its latency (arrival to answer)."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def of_answer(self, answer) -> None:
        """Count one answer (a ``stage_engine.Answer``): its images by exit, itself by operating point."""
        self.exits_of(answer.exits)
        point = getattr(answer, "operating_point", None)
        if point is not None:
            self.points.labels(point).inc()

    def exits_of(self, exits: np.ndarray) -> None:
        """Count the images of one answer by the exit they left at."""
        if len(exits) == 1:
            self._exits[int(exits[0])].inc()
            return
        for k, n in enumerate(np.bincount(exits, minlength=len(self._exits)).tolist()):
            if n:
                self._exits[k].inc(n)

    def text(self) -> bytes:
        """This server's registry in Prometheus' text format (the body of GET /metrics)."""
        return generate_latest(self.registry)
