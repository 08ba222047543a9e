"""The model a server runs: the loaded bundle, and the executor the stage engine drives.

Ray-free: both ingresses (``local.py``, ``deployment.py``) load one :class:`ServedModel` and
hand it to the stage engine (``stage_engine.py``), which runs its :attr:`ServedModel.executor`
graph by graph, exactly as ``ExitChain`` does: the same executor the chain loaded (host
arrays, or device memory with ``device_io``, the default for GPU providers), the same exit
rule (``runtime/decision.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import BundleError, ConfigError, InputError, MissingExtraError, RanetEdgeError
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.executors.base import Executor
from ranet_edge.runtime.executors.host import HostExecutor
from ranet_edge.runtime.graphs import GraphInfo
from ranet_edge.runtime.inputs import NamedBatch
from ranet_edge.runtime.manifest import GraphEntry
from ranet_edge.runtime.operating_points import select
from ranet_edge.runtime.providers import open_session, session_options
from ranet_edge.runtime.tensors import InputInfo

from .api import RequestError
from .rows import RULE_CODE
from .settings import ServeSettings
from .slo import ladder_of


class ServedModel:
    """A loaded bundle as the server runs it: the exit chain, or its monolithic graph.

    ``graph="monolithic"`` is the baseline a server without early exit is: every image pays
    the whole model (one session), and the same thresholds then pick each image's exit, so
    both modes give the same answers and differ only in cost.

    Raises:
        BundleError: a bundle that does not load, or ``graph="monolithic"`` without a monolithic graph.
        CalibrationError: an operating point the bundle does not store.
        ConfigError: ``slo_ms`` on a bundle without a ladder or of named inputs, or a ``min_point``
            that is not a rung.
        ProviderError: ``settings.provider`` is not available here, or took no node of a graph.
        InputError: options the chain refuses (``max_batch``).
    """

    def __init__(self, settings: ServeSettings):
        from ranet_edge.assets import default_bundle

        self.settings = settings
        self.bundle = settings.bundle or default_bundle()
        self.chain = ExitChain.load(self.bundle, provider=settings.provider, threads=settings.threads,
                                    device_io=settings.device_io, max_batch=settings.max_batch)
        self.default_point = settings.operating_point or self.chain.default_operating_point
        self.check_point(self.default_point)
        #: A bundle of named inputs (a text encoder's ids and mask), not images: requests send its
        #: tensors (``/v2``), or texts its ``tokenizer.json`` turns into them (``/v1``, texts.py).
        self.named = self.chain.preprocess_spec is None
        if self.named and settings.slo_ms is not None:
            raise ConfigError("--slo-ms measures graphs on images; serve this named-input bundle without it")
        #: ``--slo-ms``: the ladder rungs the server moves along, floor first ([]: fixed points)
        self.ladder = ladder_of(self.chain.operating_points, settings.slo_ms, settings.min_point)
        self._decisions: dict[tuple, tuple[np.ndarray, np.ndarray, np.int8]] = {}
        m = self.chain.manifest
        #: the bundle's ``tokenizer.json`` (None: it carries none; ``tokenizer_missing`` says why
        #: a carried one is not used: the ``text`` extra is not installed)
        self.tokenizer, self.tokenizer_missing = load_tokenizer(self.chain, settings.max_length) \
            if self.named else (None, None)
        self.num_classes = m.num_classes
        self.class_names = list(self.chain.class_names or [str(i) for i in range(self.num_classes)])
        #: What the stage engine runs: the chain's own executor, or the monolithic graph on host arrays.
        self.executor: Executor = self.chain.executor
        if settings.graph == "monolithic":
            mono = m.monolithic
            if mono is None:
                raise BundleError(f"bundle {self.bundle} has no monolithic graph; re-export it with "
                                  "`ranet-edge export CKPT --monolithic` or serve graph=chain")
            path = m.root / mono.path  # load_manifest checked its path and sha256
            session = open_session(str(path), session_options(settings.threads), settings.provider)
            entry = GraphEntry(mono.path, mono.sha256, tuple(mono.inputs), tuple(mono.logits), (),
                               tuple(range(m.num_exits)))
            self.executor = HostExecutor([GraphInfo(session, entry, frozenset())], m.input_name, None)

    def check_point(self, name: str | None) -> str | None:
        """``name`` if the bundle stores it (None: the serving default).

        Raises:
            CalibrationError: the bundle stores no point of that name.
        """
        if name is None:
            return self.default_point
        select(self.chain.operating_points, name)
        return name

    def check_named(self, x: Any) -> NamedBatch:
        """A named-input request's arrays (a mapping name -> array, or a ``NamedBatch``) checked
        against the manifest (name, dtype, rank, fixed axes, shared sizes) and ``max_length``.

        Raises:
            RequestError: 400 for arrays the bundle does not take or a dynamic axis of size 0,
                413 for one longer than ``max_length``; one line naming the input.
        """
        try:
            batch = self.chain.check_input(x.arrays if isinstance(x, NamedBatch) else x)
        except InputError as exc:
            raise RequestError(400, str(exc)) from None
        for info in self.chain.inputs:
            self.check_sizes(info, batch.arrays[info.name].shape)
        return batch

    def check_sizes(self, info: InputInfo, shape: Sequence[int]) -> None:
        """The dynamic axes but the batch of a ``shape`` sent for input ``info``: at least 1, at
        most ``max_length`` (checked before a request's contents are decoded, too).

        Raises:
            RequestError: 400 for an axis of size 0, 413 for one longer than ``max_length``.
        """
        for axis, (size, label) in enumerate(zip(info.shape[1:], info.axes[1:]), 1):
            if size is not None or axis >= len(shape):
                continue
            if shape[axis] == 0:
                raise RequestError(400, f"input {info.name} has {label or f'axis {axis}'} 0; send at least one "
                                        "element on every axis")
            if shape[axis] > self.settings.max_length:
                raise RequestError(413, f"input {info.name} has {label or f'axis {axis}'} {shape[axis]}, more "
                                        f"than this server takes (max_length {self.settings.max_length}); "
                                        "send shorter inputs")

    def decision_of(self, point: str | None, rule: str | None = None,
                    patience: int | None = None) -> tuple[np.ndarray, np.ndarray, np.int8]:
        """float32 (thresholds, temperatures) per exit of a stored point (None: the serving
        default) and the code of its exit rule (``rows.RULE_CODE``); ``rule`` / ``patience`` as
        ``ExitChain.predict`` takes them (``patience=t`` needs no point).

        Raises:
            RequestError: 400, a name the bundle does not store, a point of another rule, a bad
                rule or patience.
        """
        key = (point, rule, patience)
        hit = self._decisions.get(key)
        if hit is None:
            try:
                name = None if patience is not None else self.check_point(point)
                thr, temps, rule = self.chain.resolve_rule(name, rule, patience)
            except RanetEdgeError as exc:
                raise RequestError(400, str(exc)) from None
            hit = (np.asarray(thr, np.float32), np.asarray(temps, np.float32), RULE_CODE[rule])
            if len(self._decisions) < 256:  # requests choose the keys: keep it bounded
                self._decisions[key] = hit
        return hit

    def summary(self) -> dict:
        """What GET /v1/model reports."""
        s = self.settings
        return {
            "bundle": str(self.bundle), "graph": s.graph, "num_classes": self.num_classes,
            "class_names": self.class_names,
            **({"inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape), "axes": list(i.axes)}
                           for i in self.chain.inputs], "tokenizer": self.tokenizer is not None,
                "max_length": s.max_length} if self.named else
               {"input": {"size": self.chain.preprocess_spec.size, "resize": self.chain.preprocess_spec.resize}}),
            "exits": [{"exit": e.index, "mflops": round(e.flops / 1e6, 3)} for e in self.chain.manifest.exits],
            "operating_points": {name: {"val_accuracy": p.val_accuracy, "expected_mflops": round(p.expected_flops / 1e6, 3),
                                        "method": p.method, "rule": p.rule}
                                 for name, p in sorted(self.chain.operating_points.items())},
            "default_operating_point": self.default_point, "provider": s.provider,
            "session_providers": sorted({p[0] for p in self.chain.session_providers}), "threads": s.threads,
            "executor": self.executor.kind,
            "max_batch": s.max_batch, "batch_wait_ms": s.batch_wait_ms, "max_body_bytes": s.max_body_bytes,
            **({"slo_ms": s.slo_ms, "ladder": self.ladder} if self.ladder else {}),
        }


def load_tokenizer(chain: ExitChain, max_length: int) -> tuple[Any, str | None]:
    """(the ``tokenizer.json`` the bundle carries, truncating to ``max_length``, or None; why a
    carried one is not loaded: the ``text`` extra is missing, or None)."""
    from ranet_edge.runtime.text import TOKENIZER, Tokenizer

    if TOKENIZER not in chain.manifest.data.get("assets", {}):
        return None, None
    try:
        return Tokenizer.from_bundle(chain, max_length=max_length), None
    except MissingExtraError as exc:
        return None, str(exc)


def input_words(summary: dict) -> str:
    """What a served model takes, for the lines ``ranet-edge serve`` prints (from :meth:`ServedModel.summary`)."""
    if "inputs" not in summary:
        return f"input {summary['input']['size']}x{summary['input']['size']}"
    names = ", ".join(f"{i['name']} {i['dtype']}" for i in summary["inputs"])
    return f"inputs {names} (texts on /v1: {'tokenizer.json' if summary['tokenizer'] else 'no tokenizer'})"


def v1_body(summary: dict) -> str:
    """What ``POST /v1/classify`` takes, for the route lines ``ranet-edge serve`` prints."""
    if "inputs" not in summary:
        return "image/jpeg or image/png body, or a JSON list of base64 images"
    return '{"texts": [...]} (JSON)' if summary["tokenizer"] else "no texts (no tokenizer.json): send tensors to /v2"
