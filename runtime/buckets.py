"""Shape discipline on accelerators: every graph runs at a few batch sizes only.

With per-sample exit, the graphs after the first see whatever number of samples is left
(64, 37, 21, ...). Accelerator providers pay for every new input shape: the CUDA provider
runs cuDNN's convolution algorithm search per shape, TensorRT builds an engine per profile.
:class:`Buckets` pads each sub-batch up to a bucket size, so a graph sees about
log2(largest batch) + 1 shapes, all of which ``ExitChain.load(..., warmup=True)`` can
compile at load time. The padded rows repeat a real row (so they hold ordinary numbers, never
garbage) and are dropped before results return: rows of a batch never interact (inference
BatchNorm), so the real rows' results are those of the unpadded run.

The cost is the padded rows' compute: at most twice the rows of a sub-batch, in practice far
less (a sub-batch of 37 runs at 64, one of 70 out of 100 runs at 100). On the CPU the padding
buys nothing, so ``ExitChain`` keeps bucketing off there unless asked for.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

#: Largest batch warmed up when bucketing is on and no size is given (the default batch of
#: ``ranet-edge bench``'s throughput figure and of training).
DEFAULT_MAX_BATCH = 64


class Buckets:
    """The batch sizes the graphs run at.

    ``sizes=None`` means powers of two. A sub-batch of ``n`` rows runs at the smallest bucket
    >= n, but never above the largest batch seen so far: with a largest batch of 100 the
    buckets are 1, 2, 4, ..., 64 and 100 (not 128). A batch larger than every bucket runs at
    its own size and becomes the largest seen. ``max_batch`` sets the largest batch from the
    start, so that warm-up covers every bucket up to it.
    """

    def __init__(self, sizes: Sequence[int] | None = None, max_batch: int | None = None):
        if sizes is not None:
            sizes = sorted({int(s) for s in sizes})
            if not sizes or sizes[0] < 1:
                raise InputError(f"bucket sizes must be positive integers, got {list(sizes)}; "
                                 "pass e.g. buckets=[1, 8, 32, 64]")
        if max_batch is not None and max_batch < 1:
            raise InputError(f"the largest bucketed batch must be >= 1, got {max_batch}")
        self.sizes: tuple[int, ...] | None = tuple(sizes) if sizes is not None else None
        self.largest = max_batch or (self.sizes[-1] if self.sizes else 1)

    def __repr__(self) -> str:
        kind = "powers of two" if self.sizes is None else f"sizes {list(self.sizes)}"
        return f"Buckets({kind}, largest batch {self.largest})"

    def size(self, n: int) -> int:
        """The batch size ``n`` real rows run at (records ``n`` as seen)."""
        if n > self.largest:
            self.largest = n
        if self.sizes is None:
            b = 1 << (n - 1).bit_length()
        else:
            b = next((s for s in self.sizes if s >= n), self.largest)
        return min(b, self.largest)

    def pad(self, rows: np.ndarray) -> np.ndarray:
        """Row indices ``rows`` extended to their bucket size by repeating the last one."""
        n = len(rows)
        b = self.size(n)
        if b == n:
            return rows
        return np.concatenate([rows, np.full(b - n, rows[-1], rows.dtype)])

    def warm_sizes(self) -> list[int]:
        """Every bucket up to the largest batch: what warm-up compiles."""
        if self.sizes is None:
            out = [1 << k for k in range(self.largest.bit_length()) if 1 << k < self.largest]
        else:
            out = [s for s in self.sizes if s < self.largest]
        return [*out, self.largest]

    def bound(self) -> int:
        """How many batch sizes a graph sees at most while the largest batch stays as is."""
        return len(self.warm_sizes())


def make_buckets(spec: Any, accelerator: bool) -> Buckets | None:
    """``ExitChain.load``'s ``buckets`` argument -> a policy or None (off).

    None: on (powers of two up to :data:`DEFAULT_MAX_BATCH`) for accelerator providers, off
    on the CPU; True/False: on/off; an int: powers of two up to that batch; a list of ints:
    exactly those sizes; a :class:`Buckets`: itself.
    """
    if spec is None:
        return Buckets(max_batch=DEFAULT_MAX_BATCH) if accelerator else None
    if isinstance(spec, Buckets):
        return spec
    if isinstance(spec, bool):
        return Buckets(max_batch=DEFAULT_MAX_BATCH) if spec else None
    if isinstance(spec, (int, np.integer)):
        return Buckets(max_batch=int(spec))
    if isinstance(spec, (list, tuple)) and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                                for s in spec):
        return Buckets(sizes=spec)
    raise InputError(f"buckets={spec!r} is not understood; use True, False, a largest batch (int) "
                     "or a list of batch sizes")


@dataclass(frozen=True)
class LoadReport:
    """What loading a chain cost, in seconds."""

    load_s: float  # manifest and sha256 checks, one session per graph
    warmup_s: float  # every warm-up run (cuDNN search / engine builds happen here)
    warm_sizes: tuple[int, ...] = ()  # batch sizes every graph was run at during warm-up
    capture: Any = None  # CaptureReport of a fixed-address plan (load(capture=True)), else None

    @property
    def total_s(self) -> float:
        return self.load_s + self.warmup_s


def warm_up(chain, sizes: Sequence[int]) -> float:
    """Run every graph of ``chain`` at each batch size in ``sizes``; seconds taken."""
    if not sizes:
        return 0.0
    t0 = time.perf_counter()
    for b in sizes:
        chain.run_all(np.zeros((b, *chain.input_shape), np.float32))
    return time.perf_counter() - t0


def _batch_dims(shapes) -> tuple:
    return tuple(s[0] if len(s) else None for s in shapes)


@dataclass
class ShapeLog:
    """Distinct input shapes each graph session of a chain received, recorded at the ONNX
    Runtime call itself (``run`` and ``run_with_iobinding``), not derived from the policy.

    ``ShapeLog.attach(chain)`` wraps the chain's graph sessions; ``detach`` restores them.
    """

    shapes: list[set[tuple]] = field(default_factory=list)
    _originals: list = field(default_factory=list)

    @classmethod
    def attach(cls, chain) -> ShapeLog:
        log = cls()
        for i, g in enumerate(chain._graphs):
            log.shapes.append(set())
            log._originals.append(g.session)
            g.session = _CountingSession(g.session, log.shapes[i])
        if hasattr(chain, "_local"):  # pre-bound plans hold bindings of the old sessions
            chain._local.__dict__.clear()
        return log

    def detach(self, chain) -> None:
        for g, sess in zip(chain._graphs, self._originals):
            g.session = sess
        chain._local.__dict__.clear()

    def distinct(self) -> list[int]:
        """Per graph, how many distinct sets of input shapes it ran with."""
        return [len(s) for s in self.shapes]

    def batch_sizes(self) -> list[list[int]]:
        """Per graph, the batch sizes it ran at, sorted."""
        return [sorted({b for shape in s for b in _batch_dims(shape) if b is not None}) for s in self.shapes]


class _CountingBinding:
    def __init__(self, binding, session):
        self._b, self._session = binding, session
        self.inputs: dict[str, tuple] = {}

    def bind_ortvalue_input(self, name, value):
        self.inputs[name] = tuple(value.shape())
        return self._b.bind_ortvalue_input(name, value)

    def bind_cpu_input(self, name, array):
        self.inputs[name] = tuple(array.shape)
        return self._b.bind_cpu_input(name, array)

    def __getattr__(self, name):
        return getattr(self._b, name)


class _CountingSession:
    def __init__(self, session, seen: set):
        self._s, self._seen = session, seen

    def run(self, output_names, feeds, *args, **kw):
        self._seen.add(tuple(tuple(feeds[k].shape) for k in sorted(feeds)))
        return self._s.run(output_names, feeds, *args, **kw)

    def io_binding(self):
        return _CountingBinding(self._s.io_binding(), self)

    def run_with_iobinding(self, binding, *args, **kw):
        self._seen.add(tuple(binding.inputs[k] for k in sorted(binding.inputs)))
        return self._s.run_with_iobinding(binding._b, *args, **kw)

    def __getattr__(self, name):
        return getattr(self._s, name)
