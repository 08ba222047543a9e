"""The torch side of ranet-edge: the RANet and MSDNet models and their cost counter."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .flops import ExitCost, count_exit_costs
from .msdnet import MSDNet
from .ranet import RANet


def build_model(config) -> nn.Module:
    """The model a :data:`~ranet_edge.architectures.ArchConfig` describes (RANet or MSDNet by
    ``config.arch``), randomly initialised, in training mode.

    Raises:
        ConfigError: the official forward cannot run this architecture (see
            :func:`check_runs`).
    """
    check_runs(config)
    return _model_type(config)(config)


def check_runs(config) -> None:
    """Raise a one-line :class:`~ranet_edge.errors.ConfigError` when the forward of the
    architecture fails: the official constructors build some flag sets whose forward they
    cannot run (see ``config.unrunnable()``); any other failure shows in a forward on the
    meta device, which computes only shapes.

    Raises:
        ConfigError: the forward fails; the message names the official flags and the fix.
    """
    problem = config.unrunnable()
    if problem is None:
        side = config.image_size
        try:
            with torch.device("meta"), torch.no_grad():
                _model_type(config)(config).eval()(torch.zeros(1, 3, side, side))
        except (RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or ["no message"])[0][:160]
            problem = (f"the official forward cannot run {config.official_flags()} ({first}); every classifier "
                       "must read a 5 to 12 px map: change the scales or scale_list")
    if problem:
        raise ConfigError(problem)


def _model_type(config) -> type:
    return MSDNet if config.arch == "msdnet" else RANet


__all__ = ["ExitCost", "MSDNet", "RANet", "build_model", "check_runs", "count_exit_costs"]
