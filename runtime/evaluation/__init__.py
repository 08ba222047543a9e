"""What ``predict`` does not need: calibration, evaluation, latency and benchmarks.

An app that only classifies images never imports this package. The CLI's ``calibrate``,
``eval`` and ``bench`` (through :mod:`ranet_edge.tasks`) and the scripts in ``benchmarks/``
do:

- :mod:`.calibration`: thresholds for budgeted batch classification (the paper's family,
  the cheapest for an accuracy, the most accurate within a budget), temperatures, ECE.
- :mod:`.ladder`: N operating points at even steps of expected cost (``calibrate --ladder``).
- :mod:`.evaluate`: every exit's logits on a labelled set, anytime and budgeted-batch rows.
- :mod:`.latency`: the one per-stage latency measurement and timed passes of ``predict``.
- :mod:`.timing`: the one timing primitive under every ms figure (:func:`interleaved`).
- :mod:`.bench`: every figure of ``ranet-edge bench``.

>>> from ranet_edge.runtime.evaluation import collect, for_budget, measure_latency

Like :mod:`ranet_edge.runtime`, importing the package imports nothing else: each name below
loads its module (and with it numpy, and onnxruntime for what runs a chain) on first use.
"""
from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing itself is not imported: it would cost more than this module
if TYPE_CHECKING:
    from .bench import BenchOptions, run_bench
    from .calibration import (
        Outcome,
        exit_index,
        expected_calibration_error,
        fit_temperatures,
        for_accuracy,
        for_budget,
        outcome,
        paper_thresholds,
    )
    from .evaluate import PAPER_P, ExitOutputs, anytime, budgeted, collect, plot
    from .ladder import fit_ladder, ladder_names
    from .latency import Latency, LatencyMeter, TimedPass, cached_inputs, measure_latency, timed_passes
    from .timing import CaseStats, Timings, interleaved

_MODULES = {  # module -> its public names
    ".calibration": ("Outcome", "exit_index", "expected_calibration_error", "fit_temperatures", "for_accuracy",
                     "for_budget", "outcome", "paper_thresholds"),
    ".evaluate": ("PAPER_P", "ExitOutputs", "anytime", "budgeted", "collect", "plot"),
    ".latency": ("Latency", "LatencyMeter", "TimedPass", "cached_inputs", "measure_latency", "timed_passes"),
    ".timing": ("CaseStats", "Timings", "interleaved"),
    ".ladder": ("fit_ladder", "ladder_names"),
    ".bench": ("BenchOptions", "run_bench"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "PAPER_P", "BenchOptions", "CaseStats", "ExitOutputs", "Latency", "LatencyMeter", "Outcome", "TimedPass", "Timings",
    "anytime", "budgeted", "cached_inputs", "collect", "exit_index", "expected_calibration_error", "fit_ladder",
    "fit_temperatures", "for_accuracy", "for_budget", "interleaved", "ladder_names", "measure_latency", "outcome",
    "paper_thresholds", "plot", "run_bench", "timed_passes",
]


def __getattr__(name: str) -> object:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
