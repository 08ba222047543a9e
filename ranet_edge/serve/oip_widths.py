"""What ``/v2`` model metadata says of the ``logits`` output (``GET /v2/models/NAME``, gRPC
ModelMetadata).

``logits`` rows are as wide as the widest exit, zero beyond the class count of the exit each
image left at (the engine's ``rows.Request.logits``), so its shape is ``[-1, widest]``: the
manifest's ``num_classes`` is the *last* exit's count, which is not the widest when a wide
exit comes before a narrow one. When the exits differ in class count, the REST entry also
gives each exit's count in its ``parameters``: ``exit_classes``, ``"20,100,100,100,100"`` (one
count per exit, in exit order; a string, since the protocol's parameter values are scalars).
The gRPC message (``ModelMetadataResponse.TensorMetadata``) has no parameters field: gRPC
gets the shape alone.
"""
from __future__ import annotations

from typing import Any

__all__ = ["logits_metadata", "without_parameters"]


def logits_metadata(model: Any) -> dict:
    """The ``logits`` output's metadata for the served ``model`` (a ``ServedModel``)."""
    counts = [int(n) for n in model.chain.exit_classes]
    entry: dict[str, Any] = {"name": "logits", "datatype": "FP32", "shape": [-1, max(counts)]}
    if len(set(counts)) > 1:
        entry["parameters"] = {"exit_classes": ",".join(map(str, counts))}
    return entry


def without_parameters(meta: dict) -> dict:
    """``meta`` (model metadata) without the tensors' ``parameters``, for the gRPC message."""
    strip = [{k: v for k, v in t.items() if k != "parameters"} for t in meta["outputs"]]
    return {**meta, "outputs": strip}
