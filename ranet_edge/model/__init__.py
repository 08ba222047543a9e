"""The torch side of ranet-edge: the RANet model and its cost counter."""
from __future__ import annotations

from .flops import ExitCost, count_exit_costs
from .ranet import RANet, build_model

__all__ = ["ExitCost", "RANet", "build_model", "count_exit_costs"]
