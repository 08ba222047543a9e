"""What to export and how (:class:`ExportSpec`): read by the exporter's steps and by the
bundle writer alike, so it lives apart from both."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_OPSET", "ExportSpec"]

DEFAULT_OPSET = 17


@dataclass
class ExportSpec:
    """What to export and how."""

    opset: int = DEFAULT_OPSET
    batch_size: int | None = None  # None: dynamic batch; N: static shapes
    simplify: bool = True
    monolithic: bool = False
    granularity: str = "exit"  # "exit" or "subnetwork"
    tolerance: float = 1e-4  # max |diff| / max |logit| allowed at every exit
    validate_batches: tuple[int, ...] = (1, 3)  # image exports; named inputs: the examples and a second set
    #: Named inputs' dynamic axes besides the batch: ``{"input_ids": {1: "sequence"}, ...}``
    #: (see :mod:`ranet_edge.export.inputs`).
    dynamic_axes: dict[str, dict[int, str]] | None = None
    #: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, the default) or ``"dynamo"``
    #: (``dynamo=True``: needs onnxscript, opset >= 18; see the export guide's comparison).
    exporter: str = "torchscript"
