"""Guards of export step 1: a wrong bundle is never written, and PyTorch's errors come back
as one line.

- ``forward`` is run on the example and on a second input (other values, other sizes along
  the dynamic axes) before tracing: it must return the same number of (N, classes) logits
  both times, or it returns early depending on values.
- The tracer's warnings are read, not silenced: a ``Converting a tensor to a Python boolean``
  warning means ``forward`` branches on a tensor, and tracing keeps the one path the example
  took. Where the source line it points to reads no size (``.shape``, ``size()``, ``len()``),
  the branch is on values: refused, naming that line (unless the line is torch's own, such as
  ``nn.MultiheadAttention``'s size checks: a note). The tracer's other warnings on values
  (a tensor turned into a Python number) become notes; those on sizes pass. Validation on a
  second input, of other sizes along every dynamic axis, catches what changes the result.
- Every exception of ``torch.onnx.export`` is one :class:`~ranet_edge.errors.ExportError`
  line, with the fix where one is known.
- The traced graph is run at the second input's sizes: a graph whose shapes do not follow
  its dynamic axes (a size turned into a constant) is refused.
"""
from __future__ import annotations

import linecache
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import torch

from ranet_edge.errors import ExportError
from ranet_edge.runtime._capture_output import captured_output

from .graph_costs import intermediate_values
from .inputs import BATCH, ExampleInputs

_FORM = ("give inputs as a (C, H, W) image shape, or as a dict name -> example tensor (int64 token ids, "
         "a mask...) in forward's argument order")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch.export colours its messages
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _describe(ex: ExampleInputs) -> str:
    if not ex.named:
        return f"a float32 image of shape {tuple(ex.examples[0].shape)} made from input_shape {ex.image_shape}"
    return ", ".join(f"{n} {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"
                     for n, t in zip(ex.names, ex.examples, strict=True))


def _outputs(model: torch.nn.Module, args: tuple, ex: ExampleInputs, what: str) -> int:
    try:
        with torch.no_grad():
            outputs = model(*args)
    except Exception as exc:  # the user's forward failed on what we gave it: say what that was
        fix = _FORM if ex.named else f"check input_shape (C, H, W) or {_FORM}"
        raise ExportError(f"the model's forward failed on {what}: {_one_line(exc)}; {fix}") from exc
    if not isinstance(outputs, (list, tuple)) or not outputs or not all(
            isinstance(o, torch.Tensor) and o.dim() == 2 for o in outputs):
        raise ExportError("the model's forward must return the list of exit logits (N x classes tensors) in "
                          f"exit order; it returned {type(outputs).__name__}")
    return len(outputs)


def count_exits(model: torch.nn.Module, ex: ExampleInputs, second: dict[str, np.ndarray]) -> int:
    """The number of exits, after checking that ``forward`` returns the exit logits, and the
    same number of them on the example and on ``second``.

    Raises:
        ExportError: ``forward`` fails on the inputs (the message says what it was given),
            does not return a non-empty list or tuple of 2-D (N, classes) tensors, or returns
            another number of exits on ``second`` (an early return on values).
    """
    k = _outputs(model, tuple(ex.examples), ex, f"the example input ({_describe(ex)})")
    shapes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in second.items())
    k2 = _outputs(model, tuple(torch.from_numpy(second[n]) for n in ex.names), ex, f"a second input ({shapes})")
    if k2 != k:
        raise ExportError(f"the model returned {k} exits on the example input and {k2} on a second input: its "
                          "forward stops at an exit depending on values; return every exit's logits (the runtime "
                          "decides where each sample leaves)")
    return k


def _explain(exc: BaseException, ex: ExampleInputs, static_batch: int | None) -> str:
    text = str(exc)
    if type(exc).__name__ == "TorchExportError":  # the dynamo path: torch.export could not trace forward
        fix = "export with exporter='torchscript' (ExportSpec(exporter='torchscript'), --exporter torchscript)"
    elif "adaptive pool" in text or "output_size is not constant" in text:
        fix = ("give the pool a constant output size (e.g. nn.AdaptiveAvgPool2d((1, 1)) or a fixed kernel), or "
               "export with a static batch size (ExportSpec(batch_size=N), --batch-size N)")
    elif "scalar types: Long, Int" in text or "'indices'" in text:
        fix = f"an embedding got float values: {_FORM}"
    elif static_batch is None and ("dynamic" in text.lower() or "symbolic" in text.lower()):
        fix = "export with a static batch size (ExportSpec(batch_size=N), --batch-size N)"
    else:
        fix = f"the inputs were {_describe(ex)}"
    return f"torch.onnx.export failed: {_one_line(exc)}; {fix}"


@contextmanager
def guarded_export(ex: ExampleInputs, static_batch: int | None, notes: list[str] | None = None) -> Iterator[None]:
    """Run ``torch.onnx.export`` inside: its exceptions become one ExportError line, a tracer
    warning that ``forward`` branches on a tensor's value is refused, other tracer warnings
    are appended to ``notes``.

    Raises:
        ExportError: as the module doc says.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with captured_output() as printed:  # the exporter prints its IR graph when it fails
            try:
                yield
            except ExportError:
                raise
            except Exception as exc:  # PyTorch's exporter: one line, never its traceback
                raise ExportError(_explain(exc, ex, static_batch)) from exc
        if printed and printed[0].strip():
            sys.stderr.write(printed[0])  # an export that succeeded: nothing it printed is lost
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for w in tracer:
        where = f"{os.path.basename(w.filename)}:{w.lineno}"
        first = str(w.message).split(". ")[0]
        if _on_shapes(w.filename, w.lineno):
            continue  # a size: the same at every validated size, or validation says otherwise
        if "Python boolean" in first and not w.filename.startswith(_TORCH_DIR):  # torch's own checks: a note
            raise ExportError(f"the model's forward branches on a tensor's value at {w.filename}:{w.lineno} "
                              f"(tracer: {first}); tracing keeps only the path the example took, so the bundle "
                              "would be wrong: compute every exit and return them all, without data-dependent if")
        if notes is not None and not any(where in n for n in notes):
            notes.append(f"the tracer warned at {where}: {first}; validation on a second input checks the result")


def _on_shapes(filename: str, lineno: int) -> bool:
    """Whether the source line a tracer warning points to branches on sizes (``x.shape``,
    ``size()``, ``len()``...) rather than on values: a size is the same on every call at the
    validated sizes (resizing only when the size differs), so it gets a note, not a refusal."""
    line = linecache.getline(filename, lineno)
    return any(word in line for word in (".shape", ".size(", ".dim(", "len(", ".numel(", ".ndim"))


def use_dynamo(exporter: str, opset: int) -> bool:
    """Whether ``ExportSpec.exporter`` asks for ``torch.onnx.export(dynamo=True)``.

    Raises:
        ExportError: an exporter other than ``"torchscript"`` and ``"dynamo"``; ``"dynamo"``
            at an opset below 18, or without onnxscript installed.
    """
    if exporter not in ("torchscript", "dynamo"):
        raise ExportError(f"exporter {exporter!r} is not known; use 'torchscript' (the default) or 'dynamo'")
    if exporter == "torchscript":
        return False
    if opset < 18:
        raise ExportError(f"the dynamo exporter writes opset 18 or later; export with opset=18 (got {opset})")
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError("the dynamo exporter needs onnxscript: pip install onnxscript") from exc
    return True


def shapes_at(model: onnx.ModelProto, feeds: dict[str, np.ndarray], ex: ExampleInputs) -> dict[str, tuple]:
    """The shape of every tensor of ``model`` run on ``feeds`` (the second validation input).

    Raises:
        ExportError: the graph fails at those sizes: a size along a dynamic axis became a
            constant in tracing.
    """
    try:
        return {k: v.shape for k, v in intermediate_values(model, feeds).items()}
    except Exception as exc:
        sizes = ", ".join(f"{n} {tuple(v.shape)}" for n, v in feeds.items())
        raise ExportError(f"the exported graph fails on inputs of other sizes ({sizes}): {_one_line(exc, 160)}; "
                          "forward turned a size into a constant (int(), a Python loop over a size...): compute "
                          "sizes with tensor.shape / size(), or fix the axis (no dynamic_axes, a static batch_size)"
                          ) from exc


def symbolic_axes(values: dict[str, np.ndarray], other: dict[str, tuple],
                  ex: ExampleInputs) -> dict[str, tuple[str | None, ...]]:
    """Each tensor's axes: None where its size is the same at the example and at the second
    input (``other``: shapes there), else the name of the input axis that has the same two
    sizes (``batch``, ``sequence``...), else ``<tensor>_<axis>`` (a size derived from them)."""
    pairs: dict[tuple[int, int], str] = {}
    for name, t in zip(ex.names, ex.examples, strict=True):
        for axis, label in sorted(ex.axes[name].items(), key=lambda item: item[1] != BATCH):
            pairs.setdefault((int(t.shape[axis]), int(other[name][axis])), label)
    out: dict[str, tuple[str | None, ...]] = {}
    for name, arr in values.items():
        o = other.get(name)
        if o is None or len(o) != arr.ndim:
            out[name] = (None,) * arr.ndim
            continue
        out[name] = tuple(None if a == b else pairs.get((int(a), int(b)), f"{name}_{i}")
                          for i, (a, b) in enumerate(zip(arr.shape, o, strict=True)))
    return out
