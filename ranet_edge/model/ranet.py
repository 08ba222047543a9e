"""The RANet model, built from a :class:`RANetConfig` to the official state_dict contract.

The exporter relies only on the small interface :class:`MultiExitModel` documents:
``forward(x)`` returns the list of exit logits in order, ``num_exits``, and
``exit_costs()`` with the cumulative official FLOP and parameter counts.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import BlockSpec, RANetConfig
from .flops import MultiExitInterface
from .layers import ClassifierModule, ConvBasic, ConvNormal, ConvUpNormal, resize_to


class _BlockNormal(nn.Module):
    """Plain dense block; returns its output and its list of intermediate features."""

    def __init__(self, spec: BlockSpec, reduction_out: int | None):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(
            ConvNormal(spec.n_in + k * spec.growth, spec.growth, spec.bn_width)
            for k in range(spec.layers)
        )
        if reduction_out is not None:
            self.trans = ConvBasic(spec.concat_out, reduction_out, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        for layer in self.layers:
            x = layer(x)
        # Dense layers only append channels, so every earlier entry of the list is a channel
        # prefix of the last one: slicing gives the same numbers and lets a stage hand on a
        # single tensor per block instead of L+1.
        feats = [x[:, :c] for c in self.spec.list_channels[:-1]] + [x]
        return (self.trans(x) if self.spec.trans else x), feats


class _BlockUpNormal(nn.Module):
    """Fusion block: dense layers that also read the previous sub-network's features."""

    def __init__(self, spec: BlockSpec, prev_bn_width: int, compress_factor: float,
                 reduction_out: int | None):
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleList(
            ConvUpNormal(spec.n_in + k * spec.growth, spec.low_channels[k], spec.growth,
                         spec.bn_width, prev_bn_width, compress_factor,
                         spec.down and k == spec.layers - 1)
            for k in range(spec.layers)
        )
        n_last = spec.list_channels[-1]
        self.conv_last = ConvBasic(spec.low_channels[-1], spec.concat_out - n_last, 1, 1, 0)
        if reduction_out is not None:
            self.trans = ConvBasic(spec.concat_out, reduction_out, 1, 1, 0)

    def forward(self, x: torch.Tensor, low: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        same_res = x
        for k, layer in enumerate(self.layers):
            x = layer(low[k], x)
            if not (self.spec.down and k == self.spec.layers - 1):
                same_res = x
        feats = [same_res[:, :c] for c in self.spec.list_channels[:-1]] + [x]
        size = (x.shape[-2], x.shape[-1])
        out = torch.cat([x, resize_to(self.conv_last(low[-1]), size)], dim=1)
        return (self.trans(out) if self.spec.trans else out), feats


class _InitialLayer(nn.Module):
    """The stem: built from the highest resolution down; returns lowest resolution first."""

    def __init__(self, config: RANetConfig):
        super().__init__()
        grs = config.grFactor[::-1]
        scales = config.scale_list[::-1]
        layers: list[nn.Module] = []
        channels = 3
        for i, (gr, scale) in enumerate(zip(grs, scales, strict=False)):
            out = config.nChannels * gr
            if i == 0 and config.is_imagenet:
                layers.append(nn.Sequential(
                    nn.Conv2d(3, out, 7, 2, 3), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1),
                ))
            elif i == 0:
                layers.append(ConvBasic(3, out, 3, 1, 1))
            else:
                layers.append(ConvBasic(channels, out, 3, 1 if scale == scales[i - 1] else 2, 1))
            channels = out
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs[::-1]


class RANet(MultiExitInterface, nn.Module):
    """Resolution Adaptive Network; ``forward`` returns one logits tensor per exit."""

    def __init__(self, config: RANetConfig):
        super().__init__()
        self.config = config
        plan = config.plan()
        flows: list[nn.ModuleList] = []
        classifiers: list[nn.Module] = []
        for i in range(config.num_scales):
            blocks = []
            for spec in (b for b in plan if b.subnet == i):
                red = spec.n_out if spec.trans else None
                if spec.fusion:
                    blocks.append(_BlockUpNormal(spec, config.bnFactor[i - 1],
                                                 config.compress_factor, red))
                else:
                    blocks.append(_BlockNormal(spec, red))
                    width = spec.n_out if config.is_imagenet else 128
                    classifiers.append(ClassifierModule(spec.n_out, width, config.num_classes))
            flows.append(nn.ModuleList(blocks))
        # Registration order matches the official state_dict order.
        self.scale_flows = nn.ModuleList(flows)
        self.classifier = nn.ModuleList(classifiers)
        self.FirstLayer = _InitialLayer(config)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (N, num_classes) logits tensor per exit, in exit order, for an (N, 3, H, W)
        batch normalised as the data set's preprocessing says."""
        stems = self.FirstLayer(x)
        logits: list[torch.Tensor] = []
        previous: list[list[torch.Tensor]] = []
        for i, flow in enumerate(self.scale_flows):
            h = stems[i]
            current = []
            for j, block in enumerate(flow):
                if block.spec.fusion:
                    h, feats = block(h, previous[j])
                else:
                    h, feats = block(h)
                    logits.append(self.classifier[block.spec.exit](h))
                current.append(feats)
            previous = current
        return logits
