"""Batch norm folded in float64 wherever its input is a convolution's output, anywhere in the
module tree: a torchvision-style ResNet block (``self.bn1(self.conv1(x))``, a downsample
``Sequential``) and a timm-style MobileNet block (``ConvNormAct`` with ``BatchNormAct2d``, a
depthwise conv, squeeze-excite), their exported weights equal to a float64 reference fold bit
for bit, with nothing left for torch to fold in float32 (so the bytes do not depend on the CPU)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from fold_reference import assert_weights_are_reference  # noqa: E402
from torch import nn  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.export.fold import fold_batchnorm  # noqa: E402


def _randomize(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    return model.eval()


class BasicBlock(nn.Module):
    """torchvision's BasicBlock layout: batch norms as attributes, called in forward."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: the batch norm, then its dropout and activation, in one module."""

    def __init__(self, c: int):
        super().__init__(c)
        self.drop, self.act = nn.Identity(), nn.ReLU6()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                     self.eps)
        return self.act(self.drop(x))


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: ``self.bn(self.conv(x))``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))


class InvertedResidual(nn.Module):
    """MobileNet's block: expand, depthwise, squeeze-excite, project (no activation)."""

    def __init__(self, c: int):
        super().__init__()
        self.expand, self.dw = ConvNormAct(c, 4 * c), ConvNormAct(4 * c, 4 * c, 3, groups=4 * c)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * c, c, 1), nn.ReLU(), nn.Conv2d(c, 4 * c, 1),
                                nn.Sigmoid())
        self.project, self.bn = nn.Conv2d(4 * c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        h = self.dw(self.expand(x))
        return x + self.bn(self.project(h * self.se(h)))


class TwoExits(nn.Module):
    def __init__(self, blocks: list[nn.Module], width: int):
        super().__init__()
        self.stem = ConvNormAct(3, width, 3)
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(nn.Linear(width, 5) for _ in blocks)

    def forward(self, x):
        x, out = self.stem(x), []
        for block, head in zip(self.blocks, self.heads, strict=True):
            x = block(x)
            out.append(head(x.mean((2, 3))))
        return out


def _reference(model: nn.Module, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """name -> float32 weight: each (conv, bn) folded in float64 and rounded once, the rest as is."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    out = {k: v for k, v in state.items() if v.dtype == np.float32}
    f64 = np.float64
    for conv, bn in pairs:
        s = state[f"{bn}.weight"].astype(f64) / np.sqrt(state[f"{bn}.running_var"].astype(f64) + f64(1e-5))
        out[f"{conv}.weight"] = (state[f"{conv}.weight"].astype(f64) * s[:, None, None, None]).astype(np.float32)
        out[f"{conv}.bias"] = ((0 - state[f"{bn}.running_mean"].astype(f64)) * s
                               + state[f"{bn}.bias"].astype(f64)).astype(np.float32)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            out.pop(f"{bn}.{suffix}")
    return out


@pytest.mark.parametrize("kind", ["resnet", "mobilenet"])
def test_blocks_export_as_the_float64_fold_bit_for_bit(kind, tmp_path):
    if kind == "resnet":
        model = _randomize(TwoExits([BasicBlock(8, 8, 1), BasicBlock(8, 16, 2)], 8))
        model.heads[1] = nn.Linear(16, 5)
        pairs = [(f"blocks.{i}.{c}", f"blocks.{i}.{b}") for i in (0, 1)
                 for c, b in (("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1"))]
    else:
        model = _randomize(TwoExits([InvertedResidual(8), InvertedResidual(8)], 8))
        pairs = [(f"blocks.{i}.{p}", f"blocks.{i}.{q}") for i in (0, 1)
                 for p, q in (("expand.conv", "expand.bn"), ("dw.conv", "dw.bn"), ("project", "bn"))]
    pairs.append(("stem.conv", "stem.bn"))
    model = model.eval()
    result = export_model(model, tmp_path / "b", (3, 16, 16), ExportSpec(monolithic=True, validate_batches=(2,)),
                          log=lambda m: None)
    assert not any("folded" in note for note in result.warnings)  # torch found nothing to fold itself
    assert assert_weights_are_reference(tmp_path / "b", _reference(model, pairs)) >= 2 * len(pairs)


def test_a_conv_output_read_twice_is_not_folded():
    """Folding changes the conv's output: only a conv whose output the batch norm alone reads."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return [(self.bn(y) + y).mean((2, 3))]

    model = _randomize(Shared())
    x = torch.randn(2, 3, 8, 8)
    folded, count = fold_batchnorm(model, (x,))
    assert count == 0 and isinstance(folded.bn, nn.BatchNorm2d)
    block = _randomize(TwoExits([BasicBlock(8, 8, 1)], 8))
    folded, count = fold_batchnorm(block, (x,))
    assert count == 4 and not any(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x)[0], block(x)[0], rtol=1e-5, atol=1e-5)
