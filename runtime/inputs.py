"""A call's inputs checked against what the bundle declares, and several named inputs carried
as one batch of rows.

An image bundle takes one float32 (N, C, H, W) array, as it always has
(:func:`~ranet_edge.runtime.preprocess.check_batch`). A bundle of named inputs (a text
encoder's int64 ``input_ids`` and ``attention_mask``) takes a mapping from name to array, or
one array when it has a single input. Each input is checked against the manifest (name,
dtype, rank, every fixed axis) and all must share their batch and every dynamic axis they
share a name for; the message names the input and what was expected. The checked inputs
travel as a :class:`NamedBatch`: indexing it indexes the rows of every input at once, so a
sample's rows of every input (the attention mask included) stay together wherever rows are
chunked, padded or gathered.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ranet_edge.errors import InputError

from .tensors import InputInfo

__all__ = ["NamedBatch", "check_inputs", "zeros_like_inputs"]


class NamedBatch:
    """Several named arrays sharing their first (batch) axis. ``batch[rows]`` (a slice or an
    index array) is the same rows of every array; ``len(batch)`` is the number of rows."""

    __slots__ = ("arrays",)

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def __getitem__(self, rows: Any) -> NamedBatch:
        return NamedBatch({name: a[rows] for name, a in self.arrays.items()})

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Every array's shape, in order (what a buffer sized for this batch depends on)."""
        return tuple(a.shape for a in self.arrays.values())


def check_inputs(x: Any, inputs: Sequence[InputInfo], block: int = 128) -> NamedBatch:
    """``x`` (a mapping name -> array, or one array for a single-input bundle) as a
    :class:`NamedBatch` in the order of ``inputs``, after checking every array: numpy, the
    declared dtype and rank, every fixed axis, N >= 1 rows shared by all, the same size on
    every dynamic axis two inputs share a name for, and finite values for float inputs
    (checked ``block`` rows at a time).

    Raises:
        InputError: a missing or unknown name, or an input of another type, dtype, rank or
            size; the message names the input and what the bundle expects.
    """
    def want() -> str:  # built only for a message: every call pays for the checks alone
        return ", ".join(f"{i.name}: {i.describe()}" for i in inputs)

    if not isinstance(x, Mapping):
        if len(inputs) != 1:
            raise InputError(f"this bundle takes {len(inputs)} named inputs ({want()}); pass a dict name -> array, "
                             f"got {type(x).__name__}")
        x = {inputs[0].name: x}
    if len(x) != len(inputs) or any(i.name not in x for i in inputs):
        missing = [i.name for i in inputs if i.name not in x]
        unknown = [str(k) for k in x if k not in {i.name for i in inputs}]
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise InputError(f"inputs {what}; this bundle takes {want()}")
    sizes: dict[str, tuple[int, str]] = {}  # axis name -> (size, the input that set it)
    arrays = {}
    for info in inputs:
        a = _check_one(x[info.name], info, sizes)
        if a.dtype.kind == "f":
            for start in range(0, a.shape[0], block):
                if not np.isfinite(a[start:start + block]).all():
                    raise InputError(f"input {info.name} contains NaN or infinite values")
        arrays[info.name] = a
    return NamedBatch(arrays)


def _check_one(a: Any, info: InputInfo, sizes: dict[str, tuple[int, str]]) -> np.ndarray:
    name, expected = info.name, info.describe  # expected(): built only for a message
    if not isinstance(a, np.ndarray):
        raise InputError(f"input {name} must be a numpy array {expected()}, got {type(a).__name__}")
    if a.dtype != info.dtype:
        raise InputError(f"input {name} has dtype {a.dtype}, expected {expected()}; use .astype(np.{info.dtype})")
    if a.ndim != len(info.shape) or a.shape[0] == 0:
        raise InputError(f"input {name} has shape {tuple(a.shape)}, expected {expected()} with N >= 1")
    for axis, (size, label) in enumerate(zip(info.shape, info.axes, strict=True)):
        if size is not None and a.shape[axis] != size:
            raise InputError(f"input {name} has shape {tuple(a.shape)}, expected {expected()}: axis {axis} "
                             f"must be {size}")
        key = label or ("batch" if axis == 0 else None)
        if key is None:
            continue
        seen = sizes.setdefault(key, (a.shape[axis], name))
        if seen[0] != a.shape[axis]:
            raise InputError(f"input {name} has {key} {a.shape[axis]} but input {seen[1]} has {seen[0]}: "
                             f"inputs must agree on {key} (pad to one length and mask the padding)")
    return a


def zeros_like_inputs(inputs: Sequence[InputInfo], batch: int, dynamic: int = 8) -> NamedBatch:
    """A batch of zeros of every input (``dynamic`` on each dynamic axis but the batch), for
    warm-up runs."""
    def shape(info: InputInfo) -> tuple[int, ...]:
        return (batch, *(d if d is not None else dynamic for d in info.shape[1:]))

    return NamedBatch({i.name: np.zeros(shape(i), np.dtype(i.dtype)) for i in inputs})
