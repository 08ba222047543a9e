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
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


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
    return (isinstance(conv, nn.Conv2d) and _norm_kind(bn) is not None and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def _norm_kind(bn: nn.Module) -> str | None:
    """``"plain"`` for ``nn.BatchNorm2d``; ``"act"`` for timm's ``BatchNormAct2d`` (a batch
    norm with its dropout and activation inside: ``drop`` and ``act``, which stay); else None."""
    if type(bn) is nn.BatchNorm2d:
        return "plain"
    if isinstance(bn, nn.BatchNorm2d) and isinstance(getattr(bn, "act", None), nn.Module) \
            and isinstance(getattr(bn, "drop", None), nn.Module):
        return "act"
    return None


def _fold_pair(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """Fold ``bn`` into ``conv`` (in place); returns what replaces ``bn``."""
    w, bias = fold_arrays(
        _np(conv.weight), None if conv.bias is None else _np(conv.bias), _np(bn.running_mean),
        _np(bn.running_var), _np(bn.weight) if bn.affine else None,
        _np(bn.bias) if bn.affine else None, float(bn.eps))
    conv.weight = nn.Parameter(torch.from_numpy(w), requires_grad=False)
    conv.bias = nn.Parameter(torch.from_numpy(bias), requires_grad=False)
    return nn.Identity() if _norm_kind(bn) == "plain" else nn.Sequential(bn.drop, bn.act)


def fold_batchnorm(model: nn.Module, example: tuple[torch.Tensor, ...] | None = None) -> tuple[nn.Module, int]:
    """(deep copy of ``model`` in eval mode with every foldable batch norm folded, how many).

    A ``BatchNorm2d`` is folded when it directly follows a ``Conv2d`` in one
    ``nn.Sequential`` (conv -> BN -> activation, the layout of RANet and most CNNs), and, given
    ``example`` inputs, wherever its input is a convolution's output that nothing else reads,
    anywhere in the module tree (torchvision's ``BasicBlock``: ``self.bn1(self.conv1(x))``;
    timm's ``ConvNormAct``, whose ``BatchNormAct2d`` keeps its activation): the conv gets the
    folded weight and bias and the batch norm is replaced. ``model`` itself is left untouched.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if type(bn) is nn.BatchNorm2d and _foldable(conv, bn):
                seq._modules[b] = _fold_pair(conv, bn)
                count += 1
    if example is not None:
        parents = {id(child): (parent, name) for parent in folded.modules() for name, child in parent._modules.items()
                   if child is not None}
        for conv, bn in conv_bn_pairs(folded, example):
            parent, name = parents[id(bn)]
            parent._modules[name] = _fold_pair(conv, bn)
            count += 1
    return folded, count


_METADATA = {"dim", "size", "numel", "__get__", "stride", "is_contiguous", "is_floating_point", "element_size",
             "__len__", "get_device", "data_ptr", "type"}


class _Reads(TorchFunctionMode):
    """Counts, per watched tensor, the torch calls that read its values (not its metadata),
    and notes each call's name in ``funcs`` (conv weights: read by ``conv2d`` alone?)."""

    def __init__(self, watched: dict[int, Any], reads: Counter, weights: dict[int, Any], funcs: dict[int, list]):
        super().__init__()
        self.watched, self.reads, self.weights, self.funcs = watched, reads, weights, funcs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name not in _METADATA:
            for leaf in tree_leaves((args, kwargs or {})):
                if isinstance(leaf, torch.Tensor) and id(leaf) in self.watched:
                    self.reads[id(leaf)] += 1
                if isinstance(leaf, torch.Tensor) and id(leaf) in self.weights:
                    self.funcs.setdefault(id(leaf), []).append(name)
        return func(*args, **(kwargs or {}))


def conv_bn_pairs(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, batch norm) pairs of ``model`` run once on ``example``: the batch norm's input
    is the convolution's output, read by nothing else, each module ran once, and the conv's
    weight went straight into one ``conv2d`` (not a ``Conv2d`` subclass that transforms it
    first, as timm's weight-standardized ``StdConv2d`` does: scaling it would be undone)."""
    calls: Counter = Counter()
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # id(conv output) -> (conv, output kept alive)
    inputs: dict[nn.Module, int] = {}  # batch norm -> id(its input)
    reads: Counter = Counter()
    weights = {id(m.weight): m for m in model.modules() if isinstance(m, nn.Conv2d)}
    funcs: dict[int, list] = {}  # id(conv weight) -> the torch calls that read it
    hooks = []
    for m in model.modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, args: calls.update([mod])))
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, args, out: outputs.__setitem__(id(out), (mod, out))))
        elif _norm_kind(m) is not None:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: inputs.__setitem__(mod, id(args[0])) if args else None))
    try:
        with torch.no_grad(), _Reads(outputs, reads, weights, funcs):
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    pairs = []
    for bn, tid in inputs.items():
        conv = outputs.get(tid, (None,))[0]
        if conv is not None and calls[conv] == 1 and calls[bn] == 1 and reads[tid] == 1 and _foldable(conv, bn) \
                and funcs.get(id(conv.weight)) == ["conv2d"]:
            pairs.append((conv, bn))
    return pairs


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
