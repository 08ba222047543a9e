"""The model a server runs: the loaded bundle and its graphs as the stage engine runs them.

Ray-free: both ingresses (``local.py``, ``deployment.py``) load one :class:`ServedModel`
and hand its :meth:`ServedModel.graph_stages` to the stage engine (``stage_engine.py``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from ranet_edge.errors import BundleError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.operating_points import select
from ranet_edge.runtime.providers import open_session, session_options

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
