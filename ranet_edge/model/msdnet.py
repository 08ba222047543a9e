"""MSDNet (Huang et al., ICLR 2018), built from an :class:`MSDNetConfig` so that checkpoints of
the authors' MSDNet-PyTorch code load key for key and compute the same logits.

Module names follow the official state_dict: ``blocks.{b}`` is a ``Sequential`` of the
first layer (block 0 only), multi-scale dense layers and transitions, each taking and
returning the list of feature maps from the finest kept scale to the coarsest;
``classifier.{b}`` reads the coarsest map. It answers the same small interface as
:class:`~ranet_edge.model.RANet` (:class:`~ranet_edge.model.flops.MultiExitInterface`).
Block k runs at every kept scale before classifier k, so the official count at exit k
includes finer-scale work that exit k itself does not read.
"""
from __future__ import annotations

import torch
from torch import nn

from ..msdnet_config import MSDLayerSpec, MSDNetConfig
from .flops import MultiExitInterface
from .layers import ClassifierModule, ConvBasic, ConvBN, ConvNormal


class ConvDownNormal(nn.Module):
    """``cat([x, conv_down(finer), conv_normal(x)])``: half the growth from each branch."""

    def __init__(self, n_in_fine: int, n_in: int, growth: int, bottleneck: bool, bn_fine: int, bn: int):
        super().__init__()
        self.conv_down = ConvBN(n_in_fine, growth // 2, True, bn_fine, bottleneck)
        self.conv_normal = ConvBN(n_in, growth // 2, False, bn, bottleneck)

    def forward(self, finer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``finer`` is the next finer scale's map (halved by ``conv_down``), ``x`` this scale's."""
        return torch.cat([x, self.conv_down(finer), self.conv_normal(x)], dim=1)


class _FirstLayer(nn.Module):
    """One map per scale: a 3x3 conv (CIFAR) or 7x7/2 conv + max-pool (ImageNet), then 3x3/2 convs."""

    def __init__(self, config: MSDNetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for s, gr in enumerate(config.grFactor):
            out = config.nChannels * gr
            if s == 0 and config.is_imagenet:
                layers.append(nn.Sequential(nn.Conv2d(3, out, 7, 2, 3), nn.BatchNorm2d(out),
                                            nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)))
            else:
                layers.append(ConvBasic(channels, out, 3, 1 if s == 0 else 2, 1))
            channels = out
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


class _DenseLayer(nn.Module):
    """One multi-scale dense layer; drops the finest input scale when ``in_scales > out_scales``."""

    def __init__(self, spec: MSDLayerSpec, config: MSDNetConfig):
        super().__init__()
        gr, bn, n = config.grFactor, config.bnFactor, config.num_scales
        offset = n - spec.out_scales
        self.discard = spec.in_scales > spec.out_scales
        layers: list[nn.Module] = []
        for s in range(offset, n):
            if s == offset and not self.discard:
                layers.append(ConvNormal(spec.n_in * gr[s], spec.n_out * gr[s], bn[s], config.bottleneck))
            else:
                layers.append(ConvDownNormal(spec.n_in * gr[s - 1], spec.n_in * gr[s], spec.n_out * gr[s],
                                             config.bottleneck, bn[s - 1], bn[s]))
        self.layers = nn.ModuleList(layers)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, layer in enumerate(self.layers):
            if k == 0 and not self.discard:
                out.append(layer(xs[0]))
            else:
                fine = k - 1 + int(self.discard)
                out.append(layer(xs[fine], xs[fine + 1]))
        return out


class _Transition(nn.Module):
    """A 1x1 ConvBasic per kept scale (``ParallelModule`` in the official code)."""

    def __init__(self, spec: MSDLayerSpec, config: MSDNetConfig):
        super().__init__()
        gr, offset = config.grFactor, config.num_scales - spec.out_scales
        self.m = nn.ModuleList(ConvBasic(spec.n_in * gr[s], spec.n_out * gr[s], 1, 1, 0)
                               for s in range(offset, config.num_scales))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [m(x) for m, x in zip(self.m, xs, strict=True)]


class MSDNet(MultiExitInterface, nn.Module):
    """Multi-Scale Dense Network; ``forward`` returns one logits tensor per exit."""

    def __init__(self, config: MSDNetConfig):
        super().__init__()
        self.config = config
        plan = config.plan()
        blocks: list[nn.Module] = []
        for b in range(config.nBlocks):
            mods: list[nn.Module] = [_FirstLayer(config)] if b == 0 else []
            for spec in (s for s in plan if s.block == b):
                mods.append(_DenseLayer(spec, config) if spec.kind == "layer" else _Transition(spec, config))
            blocks.append(nn.Sequential(*mods))
        self.blocks = nn.ModuleList(blocks)
        classifiers = []
        for n in config.block_out_channels():
            channels = n * config.grFactor[-1]
            width = channels if config.is_imagenet else 128
            classifiers.append(ClassifierModule(channels, width, config.num_classes))
        self.classifier = nn.ModuleList(classifiers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (N, num_classes) logits tensor per exit (block), in exit order."""
        logits = []
        for block, classifier in zip(self.blocks, self.classifier, strict=True):
            x = block(x)
            logits.append(classifier(x[-1]))
        return logits
