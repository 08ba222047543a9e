"""The model a replica serves, and one batch of requests run through it graph by graph.

Ray-free: the deployment (``deployment.py``) calls ``BatchRun.step`` in a worker thread
and answers the requests it completes while the next graph runs.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ranet_edge.errors import BundleError
from ranet_edge.runtime import ExitChain, StageRows
from ranet_edge.runtime.operating_points import select
from ranet_edge.runtime.providers import open_session, session_options
from ranet_edge.runtime.routing import decide_exit

from .settings import ServeSettings


class ServedModel:
    """A loaded bundle as the server runs it: the exit chain, or its monolithic graph.

    ``graph="monolithic"`` is the baseline a server without early exit is: every image pays
    the whole model (one session), and the same thresholds then pick each image's exit, so
    both modes give the same answers and differ only in cost.
    """

    def __init__(self, settings: ServeSettings):
        from ranet_edge.assets import default_bundle

        self.settings = settings
        self.bundle = settings.bundle or default_bundle()
        self.chain = ExitChain.load(self.bundle, provider=settings.provider, threads=settings.threads)
        self.default_point = settings.operating_point or self.chain.default_operating_point
        self.check_point(self.default_point)
        m = self.chain.manifest
        self.num_classes = m.num_classes
        self.class_names = list(self.chain.class_names or [str(i) for i in range(self.num_classes)])
        self._mono: ort.InferenceSession | None = None
        if settings.graph == "monolithic":
            mono = m.monolithic
            if mono is None:
                raise BundleError(f"bundle {self.bundle} has no monolithic graph; re-export it with "
                                  "`ranet-edge export CKPT --monolithic` or serve graph=chain")
            path = m.root / mono.path  # load_manifest checked its path and sha256
            self._mono = open_session(str(path), session_options(settings.threads), settings.provider)
            self._mono_logits = list(mono.logits)

    def check_point(self, name: str | None) -> str | None:
        """``name`` if the bundle stores it (None: the serving default), else CalibrationError."""
        if name is None:
            return self.default_point
        select(self.chain.operating_points, name)
        return name

    def stages(self, images: np.ndarray, point: str | None) -> Iterator[StageRows]:
        """Decisions graph by graph for uint8 NHWC images already fitted to the input size."""
        x = self.chain.preprocess(images)
        if self._mono is None:
            return self.chain.predict_stages(x, point)
        return self._monolithic(x, point)

    def _monolithic(self, x: np.ndarray, point: str | None) -> Iterator[StageRows]:
        thr, temps = self.chain.resolve_thresholds(point)
        logits = self._mono.run(self._mono_logits, {self.chain.input_name: x})
        rows, alive, parts = np.arange(x.shape[0]), None, []
        for k, z in enumerate(logits):
            alive, part = decide_exit(z, k, float(thr[k]), float(temps[k]), rows, alive)
            if part is not None:
                parts.append(part)
        yield StageRows.concat(parts, self.num_classes)

    def graph_stages(self) -> list[GraphStage]:
        """The graphs a request runs through, in order: one per chain graph, or the monolithic
        graph alone (which produces every exit's logits)."""
        if self._mono is None:
            return [GraphStage(g.path, tuple(g.inputs), tuple(g.exits), g.keep_after, g.step)
                    for g in self.chain.graphs]
        mono, names = self._mono, self._mono_logits

        def run(feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
            return mono.run(names, feeds), {}

        path = self.chain.manifest.monolithic.path
        return [GraphStage(path, (self.chain.input_name,), tuple(range(self.chain.num_exits)), frozenset(), run)]

    def summary(self) -> dict:
        """What GET /v1/model reports."""
        s = self.settings
        return {
            "bundle": str(self.bundle), "graph": s.graph, "num_classes": self.num_classes,
            "class_names": self.class_names, "input": {"size": self.chain.preprocess_spec.size,
                                                       "resize": self.chain.preprocess_spec.resize},
            "exits": [{"exit": e.index, "mflops": round(e.flops / 1e6, 3)} for e in self.chain.manifest.exits],
            "operating_points": {name: {"val_accuracy": p.val_accuracy, "expected_mflops": round(p.expected_flops / 1e6, 3),
                                        "method": p.method} for name, p in sorted(self.chain.operating_points.items())},
            "default_operating_point": self.default_point, "provider": s.provider,
            "session_providers": sorted({p[0] for p in self.chain.session_providers}), "threads": s.threads,
            "max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms, "max_body_bytes": s.max_body_bytes,
        }


@dataclass(frozen=True)
class GraphStage:
    """One graph as the stage engine runs it (``stage_engine.py``)."""

    name: str  # the graph's file, for logs and metrics
    inputs: tuple[str, ...]  # tensors it reads: the image or earlier graphs' outputs
    exits: tuple[int, ...]  # the exits it produces logits for, in order
    keep_after: frozenset[str]  # tensors a later graph reads (the cached maps that travel on)
    run: Callable[[dict[str, np.ndarray]], tuple[list[np.ndarray], dict[str, np.ndarray]]]
    # feeds -> (logits in exit order, the outputs a later graph reads); blocking


@dataclass
class Job:
    """One request: its images, the operating point it asked for and when it arrived."""

    images: np.ndarray  # uint8 (k, S, S, 3), already fitted to the network input
    point: str | None
    start: float = field(default_factory=time.perf_counter)


def images_in(jobs: list[Job]) -> int:
    """Batch size as the batcher counts it: images, not requests."""
    return sum(len(j.images) for j in jobs)


class BatchRun:
    """A batch of jobs run graph by graph, one image group per operating point.

    ``step`` runs the next graph of every group (blocking; call it off the event loop) and
    returns the jobs whose last image it decided; ``results[j]`` then holds job j's answer.
    """

    def __init__(self, model: ServedModel, jobs: list[Job]):
        self.model = model
        self.jobs = jobs
        self.results: list[list[dict | None]] = [[None] * len(j.images) for j in jobs]
        self._left = [len(j.images) for j in jobs]
        self._groups: list[_Group] = []
        by_point: dict[str | None, list[int]] = {}
        for i, job in enumerate(jobs):
            by_point.setdefault(job.point, []).append(i)
        for point, members in by_point.items():
            owner = np.concatenate([np.full(len(jobs[i].images), i) for i in members])
            slot = np.concatenate([np.arange(len(jobs[i].images)) for i in members])
            images = np.concatenate([jobs[i].images for i in members])
            self._groups.append(_Group(model.stages(images, point), owner, slot, len(owner)))

    @property
    def done(self) -> bool:
        return not self._groups

    def step(self) -> list[int]:
        completed: list[int] = []
        names = self.model.class_names
        for group in list(self._groups):
            decided = next(group.stages)
            now = time.perf_counter()
            for r, label, exit_, conf in zip(decided.rows.tolist(), decided.labels.tolist(),
                                             decided.exits.tolist(), decided.confidences.tolist()):
                j = int(group.owner[r])
                self.results[j][group.slot[r]] = {
                    "label": label, "class": names[label], "exit": exit_, "confidence": round(conf, 6),
                    "server_ms": round((now - self.jobs[j].start) * 1e3, 3)}
                self._left[j] -= 1
                if self._left[j] == 0:
                    completed.append(j)
            group.left -= len(decided.rows)
            if group.left == 0:
                self._groups.remove(group)
        return completed


@dataclass
class _Group:
    stages: Iterator[StageRows]
    owner: np.ndarray  # job index of each row
    slot: np.ndarray  # position of each row inside its job
    left: int  # rows not decided yet
