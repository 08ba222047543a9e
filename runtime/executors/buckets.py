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

The buckets are fixed when the chain loads: the largest bucket is the chain's ``max_batch``
(the most rows one graph run sees; larger arrays are cut into chunks of it before they reach
an executor), and no call changes them, so a chain shared by threads never sees its shapes
move and every shape a request can meet was warmed up at load.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import InputError


class Buckets:
    """The batch sizes the graphs run at.

    ``sizes=None`` means powers of two. A sub-batch of ``n`` rows runs at the smallest bucket
    >= n, never above the largest batch: with a largest batch of 100 the buckets are 1, 2, 4,
    ..., 64 and 100 (not 128). ``max_batch`` sets the largest batch (default: the largest of
    ``sizes``); sizes above it are dropped. Immutable: :meth:`size` records nothing.

    Raises:
        InputError: a size or ``max_batch`` below 1.
    """

    def __init__(self, sizes: Sequence[int] | None = None, max_batch: int | None = None):
        if sizes is not None:
            sizes = sorted({int(s) for s in sizes})
            if not sizes or sizes[0] < 1:
                raise InputError(f"bucket sizes must be positive integers, got {list(sizes)}; "
                                 "pass e.g. buckets=[1, 8, 32, 64]")
        if max_batch is not None and max_batch < 1:
            raise InputError(f"the largest bucketed batch must be >= 1, got {max_batch}")
        largest = int(max_batch or (sizes[-1] if sizes else 1))
        self.sizes: tuple[int, ...] | None = None if sizes is None else tuple(s for s in sizes if s <= largest)
        self.largest = largest

    def __repr__(self) -> str:
        kind = "powers of two" if self.sizes is None else f"sizes {list(self.sizes)}"
        return f"Buckets({kind}, largest batch {self.largest})"

    def size(self, n: int) -> int:
        """The batch size ``n`` real rows run at.

        Raises:
            InputError: ``n`` is above the largest batch (callers cut arrays into chunks of it).
        """
        if n > self.largest:
            raise InputError(f"{n} rows exceed the largest bucket ({self.largest}); run in chunks of {self.largest}")
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
        """How many batch sizes a graph sees at most."""
        return len(self.warm_sizes())


def make_buckets(spec: Any, accelerator: bool, max_batch: int) -> Buckets | None:
    """``ExitChain.load``'s ``buckets`` argument -> a policy or None (off).

    None: on (powers of two up to ``max_batch``) for accelerator providers, off on the CPU;
    True/False: on/off; an int: powers of two up to that batch; a list of ints: exactly those
    sizes; a :class:`Buckets`: itself. The largest bucket becomes the chain's ``max_batch``.

    Raises:
        InputError: a spec of another form, or sizes below 1.
    """
    if spec is None:
        return Buckets(max_batch=max_batch) if accelerator else None
    if isinstance(spec, Buckets):
        return spec
    if isinstance(spec, bool):
        return Buckets(max_batch=max_batch) if spec else None
    if isinstance(spec, (int, np.integer)):
        return Buckets(max_batch=int(spec))
    if isinstance(spec, (list, tuple)) and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                                for s in spec):
        return Buckets(sizes=spec)
    raise InputError(f"buckets={spec!r} is not understood; use True, False, a largest batch (int) "
                     "or a list of batch sizes")
