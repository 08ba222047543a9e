"""RANet building blocks, named so that official state_dict keys load unchanged."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True``, skipped when the size already matches.

    With ``align_corners=True`` a same-size resize is the identity, so skipping it changes
    no number and keeps a no-op Resize out of the exported graphs.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ConvBasic(nn.Module):
    """Conv (no bias) -> BN -> ReLU."""

    def __init__(self, n_in: int, n_out: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(n_in, n_out, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(n_out),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(BN(conv(x)))``."""
        return self.net(x)


class ConvBN(nn.Module):
    """1x1 bottleneck (width ``min(n_in, bn_width*n_out)``) then 3x3, stride 2 if ``down``.

    ``bottleneck=False`` (MSDNet only) keeps just the 3x3 conv, BN and ReLU.
    """

    def __init__(self, n_in: int, n_out: int, down: bool, bn_width: int, bottleneck: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        inner = n_in
        if bottleneck:
            inner = min(n_in, bn_width * n_out)
            layers += [nn.Conv2d(n_in, inner, 1, 1, 0, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(inner, n_out, 3, 2 if down else 1, 1, bias=False), nn.BatchNorm2d(n_out),
                   nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``n_out`` channels, at half the resolution when ``down``."""
        return self.net(x)


class ConvNormal(nn.Module):
    """Dense layer: ``cat([x, conv_normal(x)])``."""

    def __init__(self, n_in: int, growth: int, bn_width: int, bottleneck: bool = True):
        super().__init__()
        self.conv_normal = ConvBN(n_in, growth, False, bn_width, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with ``growth`` new channels appended."""
        return torch.cat([x, self.conv_normal(x)], dim=1)


class ConvUpNormal(nn.Module):
    """Fusion layer: reads the coarse sub-network's feature and the current one."""

    def __init__(self, n_in: int, n_in_low: int, growth: int, bn_width: int, bn_width_low: int,
                 compress_factor: float, down: bool):
        super().__init__()
        up = int(growth * compress_factor)
        self.conv_up = ConvBN(n_in_low, up, False, bn_width_low)
        self.conv_normal = ConvBN(n_in, growth - up, down, bn_width)

    def forward(self, low: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``cat([x, conv_up(low), conv_normal(x)])``, the first two resized (bilinear,
        ``align_corners=True``) to the size of the last, which is halved when ``down``."""
        new = self.conv_normal(x)
        size = (new.shape[-2], new.shape[-1])
        return torch.cat([resize_to(x, size), resize_to(self.conv_up(low), size), new], dim=1)


class ClassifierModule(nn.Module):
    """Two stride-2 ConvBasic, AvgPool2d(2), flatten, linear."""

    def __init__(self, n_in: int, width: int, num_classes: int):
        super().__init__()
        self.m = nn.Sequential(
            ConvBasic(n_in, width, 3, 2, 1),
            ConvBasic(width, width, 3, 2, 1),
            nn.AvgPool2d(2),
        )
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_classes) logits; the two convs and the pool must leave a 1x1 map (5 to 12 px
        inputs), as the official classifiers assume."""
        return self.linear(torch.flatten(self.m(x), 1))
