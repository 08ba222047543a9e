"""A small MSDNet-like multi-exit network: a second, non-RANet architecture for the exporter.

Three resolutions (32, 16 and 8 pixels) are kept side by side as in MSDNet. Every layer adds a
feature map at each scale, computed from the concatenation of all earlier maps at that scale
(dense connections) and a strided view of the finer scale. So a map made in stage 0 is read
directly by every later stage. Two long skips also cross several stages:

- ``glance`` (a strided look at the image) is made in stage 0 for exit 0 and read again only
  by the last exit;
- the last exit also pools the 32-pixel stem map from stage 0.

``forward`` returns the list of exit logits in order, which is all the exporter asks for.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Head(nn.Module):
    """Conv, global average pool, linear: a small MSDNet-style classifier."""

    def __init__(self, c_in: int, num_classes: int, width: int = 16):
        super().__init__()
        self.conv = conv_bn_relu(c_in, width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(self.conv(x)), 1))


class MSDNetToy(nn.Module):
    """``num_exits`` exits over three scales with dense and stage-crossing connections."""

    def __init__(self, num_exits: int = 4, num_classes: int = 10, base: int = 4, growth: int = 4):
        super().__init__()
        widths = [base, 2 * base, 4 * base]
        self.stem = nn.ModuleList([conv_bn_relu(3, widths[0]), conv_bn_relu(widths[0], widths[1], 2),
                                   conv_bn_relu(widths[1], widths[2], 2)])
        self.glance = conv_bn_relu(3, base, 4)  # 32 -> 8 pixels in one go
        self.same = nn.ModuleList()
        self.down = nn.ModuleList()
        channels = list(widths)
        for _ in range(num_exits - 1):
            self.same.append(nn.ModuleList([conv_bn_relu(channels[s], growth) for s in range(3)]))
            self.down.append(nn.ModuleList([conv_bn_relu(channels[s - 1], growth, 2) for s in range(1, 3)]))
            channels = [channels[0] + growth] + [c + 2 * growth for c in channels[1:]]
        self.heads = nn.ModuleList()
        c8 = widths[2]
        self.heads.append(Head(c8 + base, num_classes))
        for k in range(1, num_exits):
            c8 += 2 * growth
            extra = base + widths[0] if k == num_exits - 1 else 0
            self.heads.append(Head(c8 + extra, num_classes))
        self.skip_pool = nn.AvgPool2d(4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem[0](x)
        f1 = self.stem[1](f0)
        f2 = self.stem[2](f1)
        glance = self.glance(x)
        feats = [[f0], [f1], [f2]]
        logits = [self.heads[0](torch.cat([f2, glance], 1))]
        last = len(self.same)
        for k in range(1, last + 1):
            dense = [torch.cat(f, 1) if len(f) > 1 else f[0] for f in feats]
            new = [self.same[k - 1][0](dense[0])]
            for s in (1, 2):
                new.append(torch.cat([self.same[k - 1][s](dense[s]), self.down[k - 1][s - 1](dense[s - 1])], 1))
            for s in range(3):
                feats[s].append(new[s])
            z = torch.cat(feats[2], 1)
            if k == last:  # long skips from stage 0
                z = torch.cat([z, glance, self.skip_pool(f0)], 1)
            logits.append(self.heads[k](z))
        return logits


def randomize(model: nn.Module, seed: int = 0, logit_scale: float = 1.0) -> nn.Module:
    """Random BatchNorm statistics and affine terms (so eval-mode outputs are not trivial),
    optionally larger final linear weights (so softmax confidences spread), then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.2)
        if logit_scale != 1.0:
            for mod in model.modules():
                if isinstance(mod, nn.Linear):
                    mod.weight.mul_(logit_scale)
    return model.eval()


def make_toy(seed: int = 0, **kwargs) -> MSDNetToy:
    torch.manual_seed(seed)
    return randomize(MSDNetToy(**kwargs), seed)


def save_random_ranet(preset: str, path: Path, seed: int = 0, logit_scale: float = 1.0) -> nn.Module:
    """A random RANet with random BatchNorm statistics, saved in the ranet-edge format."""
    from ranet_edge.model import RANet
    from ranet_edge.presets import get_preset

    cfg = get_preset(preset)
    torch.manual_seed(seed)
    model = randomize(RANet(cfg), seed, logit_scale)
    torch.save({"format": "ranet-edge-checkpoint", "config": cfg.to_dict(), "model": model.state_dict()}, path)
    return model
