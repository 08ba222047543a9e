"""Export step 4, simplify: onnxsim on every graph written, each checked by onnx's checker.

A graph onnxsim fails on is kept unsimplified and the export says so in its notes: the
graphs are validated against PyTorch either way.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import onnx

from .partition import Stage


def simplify(m: onnx.ModelProto, label: str, notes: list[str]) -> onnx.ModelProto:
    """``m`` simplified by onnxsim, or ``m`` itself (and a note naming ``label``) if that fails."""
    try:
        import onnxsim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, ok = onnxsim.simplify(m)
        if not ok:
            raise RuntimeError("onnxsim's own check failed")
        return out
    except Exception as exc:  # keep the unsimplified graph, but say so
        notes.append(f"onnxsim failed on {label} ({type(exc).__name__}: {str(exc)[:100]}); kept it unsimplified")
        return m


def simplify_stages(stages: Sequence[Stage], enabled: bool, notes: list[str]) -> None:
    """Replace each stage's graph by its simplified form (when ``enabled``), then check it.

    Raises:
        onnx.checker.ValidationError: a stage graph is not valid ONNX (a bug of the cut, not of
            the user's model: the exporter reports it as is).
    """
    if enabled:
        for st in stages:
            st.model = simplify(st.model, f"stage {st.index}", notes)
    for st in stages:
        onnx.checker.check_model(st.model)


def baseline_graph(baseline: onnx.ModelProto, enabled: bool, notes: list[str]) -> onnx.ModelProto:
    """The monolithic baseline (the whole graph, see ``Traced.baseline``), simplified when ``enabled``."""
    del baseline.graph.value_info[:]
    return simplify(baseline, "the monolithic graph", notes) if enabled else baseline
