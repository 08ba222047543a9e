"""Batch norm folded into the preceding convolutions in float64, so that exports are
bit-identical on every CPU.

``torch.onnx.export`` folds an eval-mode ``BatchNorm2d`` into the ``Conv2d`` before it with
float32 ATen kernels, and those kernels round differently depending on the instruction set
the CPU offers (the shipped bundle's folded weights, made on an AMD EPYC, differed in the last
bits from an export on an Intel Xeon with AVX-512). Folding here instead, with numpy in
float64, uses only IEEE-754 operations that are correctly rounded on every platform (add,
subtract, multiply, divide, square root, each its own ufunc, so nothing is contracted into
a fused multiply-add), and one correctly rounded cast to float32 at the end. The exporter
then finds no batch norm to fold, and every weight it writes is a function of the
checkpoint alone.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def fold_arrays(weight: np.ndarray, bias: np.ndarray | None, mean: np.ndarray, var: np.ndarray,
                gamma: np.ndarray | None, beta: np.ndarray | None, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the batch norm that follows folded in, as float32.

    ``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta`` gives
    ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``,
    computed in float64 and rounded to float32 once.
    """
    f64 = np.float64
    out = weight.shape[0]
    gamma64 = np.ones(out, f64) if gamma is None else gamma.astype(f64)
    beta64 = np.zeros(out, f64) if beta is None else beta.astype(f64)
    bias64 = np.zeros(out, f64) if bias is None else bias.astype(f64)
    scale = gamma64 / np.sqrt(var.astype(f64) + f64(eps))
    w = weight.astype(f64) * scale.reshape((out,) + (1,) * (weight.ndim - 1))
    b = (bias64 - mean.astype(f64)) * scale + beta64
    return w.astype(np.float32), b.astype(np.float32)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """(deep copy of ``model`` in eval mode with every foldable batch norm folded, how many).

    A ``BatchNorm2d`` is folded when it directly follows a ``Conv2d`` in one
    ``nn.Sequential`` (conv -> BN -> activation, the layout of RANet and most CNNs): the conv
    gets the folded weight and bias and the batch norm becomes ``nn.Identity``. ``model``
    itself is left untouched.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if not _foldable(conv, bn):
                continue
            w, bias = fold_arrays(
                _np(conv.weight), None if conv.bias is None else _np(conv.bias), _np(bn.running_mean),
                _np(bn.running_var), _np(bn.weight) if bn.affine else None,
                _np(bn.bias) if bn.affine else None, float(bn.eps))
            conv.weight = nn.Parameter(torch.from_numpy(w), requires_grad=False)
            conv.bias = nn.Parameter(torch.from_numpy(bias), requires_grad=False)
            seq._modules[b] = nn.Identity()
            count += 1
    return folded, count


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
