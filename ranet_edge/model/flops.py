"""The official counting convention, applied with forward hooks in forward order.

Conv2d ``Cin*Cout*kh*kw*Hout*Wout/groups``; ReLU the input elements; Avg/MaxPool
``N*C*Hout*Wout*k*k``; Linear ``weight + bias elements``; BN, interpolation and
concatenation count zero. Parameters are counted per executed layer (BN counts its affine
weight and bias). Each exit's count is taken at its Linear layer, cumulatively.

The official counter counts every layer the forward runs, including *dead work*: layers
whose output no exit's logits depend on (MSDNet's last blocks compute finer scales that no
classifier reads). :func:`count_exit_costs` tells those apart by following the autograd
graph back from every exit's logits, so that an exporter, whose graphs drop dead work, can
account for it exactly instead of mistaking it for a stage that drops or repeats work.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ExitCost:
    """What reaching one exit costs, counted by the official convention (docs/reference/ranet.md,
    "FLOP counting")."""

    flops: int  # cumulative multiply-accumulates, official convention
    params: int  # cumulative parameters, official convention
    dead_flops: int = 0  # of ``flops``: work no exit's logits depend on (cumulative)


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
    """Run ``model`` once on ``example`` (batch 1) and return the cost at each Linear.

    The forward runs with autograd on (no gradient is computed): a counted layer is dead
    when its output is not in the autograd graph of any tensor the forward returns. ``model``
    runs in eval mode and gets its training flag back.

    Raises:
        RuntimeError: ``model``'s forward fails on ``example`` (torch's own error).
    """
    totals = {"flops": 0, "params": 0}
    calls: list[tuple[int, object]] = []  # (FLOPs, autograd node of the output) per counted call
    exits: list[tuple[int, int, int]] = []  # (FLOPs, params, calls so far) at each Linear

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        # ReLU(inplace) has overwritten its input by now; only its shape is read.
        flops = _layer_flops(module, x, output)
        totals["flops"] += flops
        totals["params"] += _own_params(module)
        calls.append((flops, output.grad_fn if isinstance(output, torch.Tensor) else None))
        if isinstance(module, nn.Linear):
            exits.append((int(totals["flops"]), int(totals["params"]), len(calls)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            # a non-leaf input, which a first layer working in place may overwrite
            outputs = model(example.detach().clone().requires_grad_(True) * 1)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    live = _autograd_ancestors(_tensors(outputs))
    costs, dead = [], 0
    done = 0
    for flops, params, upto in exits:
        dead += sum(f for f, node in calls[done:upto] if f and node is not None and node not in live)
        done = upto
        costs.append(ExitCost(flops, params, int(dead)))
    return costs


def _tensors(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in _tensors(o)]
    return []


def _autograd_ancestors(outputs: list[torch.Tensor]) -> set:
    """Every autograd node that some tensor of ``outputs`` was computed through."""
    seen: set = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return seen


class MultiExitInterface:
    """What the exporter and tools read from a multi-exit model (RANet, MSDNet): ``num_exits``,
    ``input_shape`` and ``exit_costs()``. The model sets ``config`` (with ``image_size``) and
    ``classifier`` (one head per exit)."""

    _costs: list[ExitCost] | None = None

    @property
    def num_exits(self) -> int:
        """One per classifier head."""
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
