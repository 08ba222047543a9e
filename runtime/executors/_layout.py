"""Fixed-address layout: which buffers, of which sizes, under which graph ids, for each bucket.

A CUDA graph replays kernels on the addresses it was captured with, so every tensor a
captured run reads or writes must live in a buffer allocated once. :class:`FixedLayout` is
that layout for one bundle and one set of batch buckets, as plain data (no onnxruntime):

- ``("env", s, b, name)``: what graph ``s`` reads at bucket ``b`` (the image for ``s = 0``;
  later, every tensor a later graph reads, gathered into place by the step before);
- ``("out", s, b, name)``: every output of graph ``s`` at bucket ``b`` (logits, cached maps);
- ``("index", c)``: the rows that go on, padded to bucket ``c``, written by the host.

Graph ids (``gpu_graph_id``): graph sessions capture one graph per bucket (id = the bucket's
index); the gather session after graph ``s`` one per (bucket, next bucket) pair, next <=
bucket (id = ``i * (i + 1) / 2 + j``). Shapes never change under an id.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranet_edge.errors import BundleError, InputError

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(bool)": "bool"}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's per-sample shape (the batch axis left out) and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class StageSpec:
    """One bundle graph as the layout sees it."""

    path: str
    inputs: tuple[str, ...]
    outputs: tuple[TensorSpec, ...]  # every session output, in session order
    logits: tuple[str, ...]
    exits: tuple[int, ...]
    handed_on: tuple[str, ...]  # tensors any later graph reads (what the gather after it moves)


@dataclass(frozen=True)
class Buffer:
    """One fixed buffer: its key (see the module doc), shape with the batch axis, dtype name."""

    key: tuple
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Its size in bytes."""
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class FixedLayout:
    """The buffers and graph ids of a bundle's graphs at every bucket (see the module doc).

    Raises:
        InputError: no bucket size, or one below 1.
    """

    def __init__(self, stages: Sequence[StageSpec], image: TensorSpec, num_classes: int, buckets: Sequence[int]):
        sizes = sorted({int(b) for b in buckets})
        if not sizes or sizes[0] < 1:
            raise InputError(f"a fixed-address layout needs positive bucket sizes, got {list(buckets)}")
        self.stages = tuple(stages)
        self.image = image
        self.num_classes = int(num_classes)
        self.buckets = tuple(sizes)
        self._index = {b: i for i, b in enumerate(sizes)}
        self._specs: list[dict[str, TensorSpec]] = []  # per stage: every tensor known at its end
        known = {image.name: image}
        for st in self.stages:
            known = {**known, **{o.name: o for o in st.outputs}}
            self._specs.append(known)

    # ------------------------------------------------------------------ buckets and ids
    @property
    def largest(self) -> int:
        """The largest bucket: the most rows a call runs at once."""
        return self.buckets[-1]

    def graph_id(self, b: int) -> int:
        """gpu_graph_id of a graph session at bucket ``b``."""
        return self._index[b]

    def gather_id(self, b: int, b_next: int) -> int:
        """gpu_graph_id of a gather session from bucket ``b`` to ``b_next`` (<= b)."""
        i, j = self._index[b], self._index[b_next]
        if j > i:
            raise InputError(f"rows only ever go from a bucket to one no larger ({b} -> {b_next})")
        return i * (i + 1) // 2 + j

    def gather_pairs(self) -> list[tuple[int, int]]:
        """Every (bucket, next bucket no larger) a gather may move rows between."""
        return [(b, c) for b in self.buckets for c in self.buckets if c <= b]

    # ------------------------------------------------------------------ tensors
    def env(self, s: int) -> list[TensorSpec]:
        """What sits in graph ``s``'s input buffers: the image, or what graph ``s - 1`` hands on."""
        if s == 0:
            return [self.image]
        return [self._specs[s - 1][n] for n in self.stages[s - 1].handed_on]

    def source(self, s: int, b: int, name: str) -> tuple:
        """The buffer holding tensor ``name`` once graph ``s`` ran at bucket ``b``."""
        if any(o.name == name for o in self.stages[s].outputs):
            return ("out", s, b, name)
        return ("env", s, b, name)

    def buffers(self) -> list[Buffer]:
        """Every buffer of the layout, once."""
        out = []
        for s, st in enumerate(self.stages):
            for b in self.buckets:
                out += [Buffer(("env", s, b, t.name), (b, *t.shape), t.dtype) for t in self.env(s)]
                out += [Buffer(("out", s, b, t.name), (b, *t.shape), t.dtype) for t in st.outputs]
        out += [Buffer(("index", b), (b,), "int64") for b in self.buckets]
        return out

    def total_bytes(self) -> int:
        """Device memory of every buffer, all buckets."""
        return sum(buf.nbytes for buf in self.buffers())

    def gather_io(self, s: int, b: int, b_next: int) -> tuple[list[tuple], list[tuple]]:
        """(input buffer keys, output buffer keys) of the gather after graph ``s``, ``b -> b_next``,
        in the gather graph's order: x0.., idx -> y0.."""
        names = self.stages[s].handed_on
        ins = [self.source(s, b, n) for n in names] + [("index", b_next)]
        return ins, [("env", s + 1, b_next, n) for n in names]

    def handed_on_types(self, s: int) -> list[str]:
        """The dtype names of what graph ``s`` hands on, in ``handed_on`` order."""
        return [self._specs[s][n].dtype for n in self.stages[s].handed_on]


def from_graphs(manifest, graphs, buckets: Sequence[int]) -> FixedLayout:
    """The layout of a loaded bundle (``graphs``: its GraphInfo list) at ``buckets``.

    Raises:
        BundleError: an output has an axis besides the batch that is not fixed.
    """
    pre = manifest.preprocessing
    image = TensorSpec(manifest.input_name, tuple(int(d) for d in pre.sample_shape), "float32")
    stages = []
    known = {image.name}  # tensors that exist once a graph ran (what can be handed on)
    for entry, g in zip(manifest.graphs, graphs):
        outs = []
        meta = {o.name: o for o in g.session.get_outputs()}
        for name in g.output_names:
            if name in g.logit_names:
                outs.append(TensorSpec(name, (manifest.num_classes,), "float32"))
                continue
            rec = entry.tensor(name)
            shape = tuple(rec.shape[1:]) if rec is not None else tuple(meta[name].shape[1:])
            dtype = rec.dtype if rec is not None else _ORT_TYPES.get(meta[name].type, "")
            if any(not isinstance(d, int) for d in shape) or not dtype:
                raise BundleError(f"graph {entry.path}: output {name} has shape {list(shape)} / type "
                                  f"{dtype or meta[name].type}; a fixed-address layout needs every axis but the "
                                  "batch fixed (re-export the bundle)")
            outs.append(TensorSpec(name, shape, dtype))
        known |= set(g.output_names)
        stages.append(StageSpec(entry.path, tuple(g.inputs), tuple(outs), tuple(g.logit_names), tuple(g.exits),
                                tuple(sorted(n for n in g.keep_after if n in known))))
    return FixedLayout(stages, image, manifest.num_classes, buckets)
