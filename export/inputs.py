"""What the exported graph takes: the ``inputs`` argument of :func:`~.exporter.export_model`.

Two forms:

- ``(C, H, W)``: one float32 image input named ``image``, exported on zeros and validated on
  random images at ``spec.validate_batches`` (the form every image model uses);
- a mapping from input name to an example tensor with its batch axis, in the order of
  ``forward``'s positional arguments: ``{"input_ids": ids, "attention_mask": mask}``, float,
  integer or bool. ``spec.dynamic_axes`` names the axes besides the batch that may change
  (``{"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}}``); the batch axis is
  dynamic unless ``spec.batch_size`` is set.

The named form is validated on the caller's examples and on a second set that differs from
them in the batch (unless static) and in every named dynamic axis: float inputs drawn from a
normal distribution, integer and bool inputs from the range of the example's values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ranet_edge.errors import ExportError

INPUT_NAME = "image"
BATCH = "batch"
_DTYPES = {torch.float32, torch.float16, torch.float64, torch.int64, torch.int32, torch.bool, torch.uint8}


@dataclass
class ExampleInputs:
    """The checked ``inputs`` of an export."""

    names: list[str]
    examples: list[torch.Tensor]  # one per name, batch axis first
    axes: dict[str, dict[int, str]]  # per input: axis -> symbolic name (the batch included when dynamic)
    image_shape: tuple[int, int, int] | None  # the (C, H, W) form; None for named inputs

    @property
    def named(self) -> bool:
        """Given as a mapping of named inputs (not the ``(C, H, W)`` image form)."""
        return self.image_shape is None

    @property
    def batch(self) -> int:
        """The examples' batch size."""
        return int(self.examples[0].shape[0])

    def feeds(self) -> dict[str, np.ndarray]:
        """The examples as numpy arrays, by name (what ONNX Runtime is fed)."""
        return {n: t.detach().cpu().numpy() for n, t in zip(self.names, self.examples, strict=True)}

    def second(self, static_batch: int | None, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs that differ from the examples in the batch (unless ``static_batch``) and in
        every named dynamic axis, values drawn from each example's range."""
        rng = np.random.default_rng(seed)
        sizes = {BATCH: self.batch if static_batch else self.batch + 1}
        for name, t in zip(self.names, self.examples, strict=True):
            for axis, label in self.axes[name].items():
                if label not in sizes:
                    used = {v for v in sizes.values()}
                    n = int(t.shape[axis])
                    sizes[label] = next(c for c in (n - 1, n + 1, n + 2, n + 3) if c >= 1 and c not in used)
        out = {}
        for name, t in zip(self.names, self.examples, strict=True):
            shape = [sizes[self.axes[name][a]] if a in self.axes[name] else int(d) for a, d in enumerate(t.shape)]
            out[name] = _draw(t.detach().cpu().numpy(), tuple(shape), rng)
        return out


def _draw(example: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if example.dtype.kind == "f":
        return rng.standard_normal(shape).astype(example.dtype)
    lo, hi = (int(example.min()), int(example.max())) if example.size else (0, 1)
    return rng.integers(lo, hi + 1, size=shape).astype(example.dtype)


def example_inputs(inputs: Any, dynamic_axes: Mapping[str, Mapping[int, str]] | None,
                   static_batch: int | None) -> ExampleInputs:
    """Check ``inputs`` and ``dynamic_axes`` (see the module doc).

    Raises:
        ExportError: ``inputs`` is neither a ``(C, H, W)`` shape nor a mapping of named
            example tensors; an example is not a tensor of a supported dtype with a batch
            axis, or the examples disagree on the batch (or differ from ``batch_size``);
            ``dynamic_axes`` names an unknown input, the batch axis or an axis out of range,
            or one axis name has different sizes in two examples.
    """
    form = ("inputs must be a (C, H, W) image shape or a dict name -> example tensor with its batch axis, "
            "in forward's argument order")
    if isinstance(inputs, Mapping):
        return _named(inputs, dict(dynamic_axes or {}), static_batch, form)
    if not isinstance(inputs, Sequence) or isinstance(inputs, str) or len(inputs) != 3 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in inputs):
        raise ExportError(f"input_shape {inputs!r:.60} is not valid: {form}")
    shape = tuple(int(d) for d in inputs)
    axes: dict[int, str] = {} if static_batch else {0: BATCH}
    for axis, label in (dynamic_axes or {}).get(INPUT_NAME, {}).items():
        axes[int(axis)] = label
    unknown = set(dynamic_axes or {}) - {INPUT_NAME}
    if unknown:
        raise ExportError(f"dynamic_axes names {sorted(unknown)}, but an image export has one input, {INPUT_NAME!r}")
    example = torch.zeros(static_batch or 1, *shape)
    return ExampleInputs([INPUT_NAME], [example], {INPUT_NAME: axes}, shape)  # type: ignore[arg-type]


def _named(inputs: Mapping[str, Any], dynamic: dict, static_batch: int | None, form: str) -> ExampleInputs:
    if not inputs:
        raise ExportError(f"inputs is an empty mapping: {form}")
    names, examples = [], []
    for name, value in inputs.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(name, str) or not isinstance(value, torch.Tensor) or value.dim() < 1:
            raise ExportError(f"inputs[{name!r}] is {type(value).__name__}: {form}")
        if value.dtype not in _DTYPES:
            raise ExportError(f"inputs[{name!r}] has dtype {value.dtype}; give float, int64, int32, uint8 or bool")
        if value.shape[0] < 1:
            raise ExportError(f"inputs[{name!r}] has no rows (shape {tuple(value.shape)}); give at least one sample")
        names.append(name)
        examples.append(value.detach())
    batches = {int(t.shape[0]) for t in examples}
    if len(batches) != 1:
        raise ExportError(f"the example inputs have batch sizes {sorted(batches)}; give every input the same first "
                          "(batch) axis")
    if static_batch and batches != {static_batch}:
        raise ExportError(f"the example inputs have batch {batches.pop()} but batch_size={static_batch}; give "
                          "examples of the static batch size")
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise ExportError(f"dynamic_axes names inputs {unknown} that inputs does not have ({names})")
    axes: dict[str, dict[int, str]] = {}
    seen: dict[str, int] = {}
    for name, t in zip(names, examples, strict=True):
        axes[name] = {} if static_batch else {0: BATCH}
        for axis, label in dict(dynamic.get(name, {})).items():
            if not isinstance(axis, int) or not 1 <= axis < t.dim() or not isinstance(label, str) or not label \
                    or label == BATCH:
                raise ExportError(f"dynamic_axes[{name!r}] has {axis!r}: {label!r}; give axis: name with an axis "
                                  f"1..{t.dim() - 1} (axis 0 is the batch, dynamic unless batch_size is set)")
            axes[name][axis] = label
            if seen.setdefault(label, int(t.shape[axis])) != int(t.shape[axis]):
                raise ExportError(f"dynamic axis {label!r} is {seen[label]} in one example and {int(t.shape[axis])} in "
                                  f"inputs[{name!r}]; inputs sharing an axis name must share its size")
    return ExampleInputs(names, examples, axes, None)
