"""What `ranet-edge calibrate --ladder N` does, as a library call: N operating points at even
steps of expected ms, stored as ``ladder-0`` (every image leaves at exit 0) .. ``ladder-(N-1)``
(the most accurate). ``ranet-edge serve --slo-ms`` moves along them under load.

Torch-free, like :mod:`ranet_edge.tasks`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime import ExitChain, OperatingPoint
from .runtime.evaluation import calibration as cal
from .runtime.evaluation.ladder import fit_ladder, is_rung, ladder_name
from .runtime.operating_points import save_points
from .tasks import DataOptions, Progress, fitting_run, no_progress

__all__ = ["Ladder", "calibrate_ladder"]


@dataclass(frozen=True)
class Ladder:
    """The rungs fitted and saved to the bundle, cheapest first."""

    names: list[str]
    points: list[OperatingPoint]
    outcomes: list[cal.Outcome]  # on the fitting images
    val_images: int
    source: str
    path: Path  # the thresholds file written
    default: str | None  # the bundle's default point (left as it was)

    def to_dict(self) -> dict:
        """The JSON ``calibrate --ladder N --json`` prints."""
        from .runtime.operating_points import thresholds_to_json

        return {"default": self.default, "val_images": self.val_images, "data": self.source, "ladder": [
            {"name": name, "thresholds": thresholds_to_json(p.thresholds), "val_accuracy": p.val_accuracy,
             "expected_flops": p.expected_flops, "expected_ms": p.expected_ms,
             "exit_counts": o.exit_counts.tolist(), "temperatures": p.temperatures}
            for name, p, o in zip(self.names, self.points, self.outcomes, strict=True)]}


def calibrate_ladder(bundle: str | os.PathLike, n: int, data: DataOptions = DataOptions(), *,
                     temperature: bool = False, provider: str = "cpu", threads: int | None = None,
                     progress: Progress = no_progress) -> Ladder:
    """Fit ``n`` rungs on labelled images (every image of ``data`` unless ``data.val_size``)
    at even steps of expected ms per image (measured at batch 1, as ``--budget-ms``), and
    store them as ``ladder-0`` .. ``ladder-(n-1)``, replacing any ladder stored before. The
    other points and the default are kept.

    Raises:
        BundleError: ``bundle`` is missing, malformed or tampered with.
        ProviderError: ``provider`` is not offered by the installed onnxruntime.
        DataError: the images cannot be read, or ``data.val_size`` does not fit them.
        CalibrationError: ``n`` below 2, or a chain of one exit.
    """
    chain = ExitChain.load(bundle, provider=provider, threads=threads)
    if n < 2:  # before the long run
        fit_ladder(np.zeros((2, 1)), np.zeros((2, 1), bool), np.arange(1.0, 3.0), n)
    labelled, fit_idx, _, temps, conf, correct, flops, exit_ms = fitting_run(chain, data, temperature, progress)
    rungs = fit_ladder(conf, correct, exit_ms, n)
    provider_name = chain.session_providers[0][0]
    names = [ladder_name(i) for i in range(n)]
    points = [OperatingPoint.fitted(o.thresholds, o.exit_counts, flops, exit_ms, val_accuracy=o.accuracy,
                                    method=f"ladder rung {i} of {n} (even steps of expected ms on {provider_name})",
                                    temperatures=temps, provider=provider_name)
              for i, o in enumerate(rungs)]
    path = save_points(bundle, dict(zip(names, points, strict=True)), drop=is_rung)
    return Ladder(names, points, rungs, int(len(fit_idx)), labelled.source, path, chain.default_operating_point)
