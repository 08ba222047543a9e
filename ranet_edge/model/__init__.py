"""The torch side of ranet-edge: the RANet and MSDNet models and their cost counter."""
from __future__ import annotations

from torch import nn

from .flops import ExitCost, count_exit_costs
from .msdnet import MSDNet
from .ranet import RANet


def build_model(config) -> nn.Module:
    """The model a :data:`~ranet_edge.architectures.ArchConfig` describes."""
    return MSDNet(config) if config.arch == "msdnet" else RANet(config)


__all__ = ["ExitCost", "MSDNet", "RANet", "build_model", "count_exit_costs"]
