"""The official counting convention, applied with forward hooks in forward order.

Conv2d ``Cin*Cout*kh*kw*Hout*Wout/groups``; ReLU the input elements; Avg/MaxPool
``N*C*Hout*Wout*k*k``; Linear ``weight + bias elements``; BN, interpolation and
concatenation count zero. Parameters are counted per executed layer (BN counts its affine
weight and bias). Each exit's count is taken at its Linear layer, cumulatively.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ExitCost:
    flops: int  # cumulative multiply-accumulates, official convention
    params: int  # cumulative parameters, official convention


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _layer_flops(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return (module.in_channels * module.out_channels * kh * kw * y.shape[2] * y.shape[3]
                // module.groups)
    if isinstance(module, nn.ReLU):
        return x[0].numel()
    if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return x.shape[0] * x.shape[1] * y.shape[2] * y.shape[3] * k * k
    if isinstance(module, nn.Linear):
        return x.shape[0] * (module.weight.numel() + (module.bias.numel() if module.bias is not None else 0))
    return 0


_COUNTED = (nn.Conv2d, nn.ReLU, nn.AvgPool2d, nn.MaxPool2d, nn.Linear, nn.BatchNorm2d)


def count_exit_costs(model: nn.Module, example: torch.Tensor) -> list[ExitCost]:
    """Run ``model`` once on ``example`` (batch 1) and return the cost at each Linear."""
    totals = {"flops": 0, "params": 0}
    costs: list[ExitCost] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        # ReLU(inplace) has overwritten its input by now; only its shape is read.
        totals["flops"] += _layer_flops(module, x, output)
        totals["params"] += _own_params(module)
        if isinstance(module, nn.Linear):
            costs.append(ExitCost(int(totals["flops"]), int(totals["params"])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return costs


class MultiExitInterface:
    """What the exporter and tools read from a multi-exit model (RANet, MSDNet): ``num_exits``,
    ``input_shape`` and ``exit_costs()``. The model sets ``config`` (with ``image_size``) and
    ``classifier`` (one head per exit)."""

    _costs: list[ExitCost] | None = None

    @property
    def num_exits(self) -> int:
        return len(self.classifier)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (3, self.config.image_size, self.config.image_size)

    def exit_costs(self) -> list[ExitCost]:
        """Cumulative official FLOPs and parameters at each exit (cached), counted in forward
        order as the official ``op_counter`` counts them."""
        if self._costs is None:
            self._costs = count_exit_costs(self, torch.zeros(1, *self.input_shape))
        return list(self._costs)
