"""The README's "byte-identical on any CPU" for batch norms outside one ``nn.Sequential``: a
torchvision-style ResNet block and a timm-style MobileNet block (the blocks of
tests/test_fold_patterns.py) export twice to the same bytes, with no BatchNormalization node
left, their chains within 1e-5 relative of PyTorch; a ``Conv2d`` subclass that transforms its
weight (timm's ``StdConv2d``) is never folded."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from test_fold_patterns import BasicBlock, InvertedResidual, TwoExits, _randomize  # noqa: E402
from torch import nn  # noqa: E402

from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.export.fold import fold_batchnorm  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402


def _model(kind: str) -> nn.Module:
    if kind == "resnet":
        model = TwoExits([BasicBlock(8, 8, 1), BasicBlock(8, 16, 2)], 8)
        model.heads[1] = nn.Linear(16, 5)
        return _randomize(model)
    return _randomize(TwoExits([InvertedResidual(8), InvertedResidual(8)], 8))


@pytest.mark.parametrize("kind", ["resnet", "mobilenet"])
def test_blocks_export_to_the_same_bytes_with_no_batch_norm_left(kind, tmp_path):
    model = _model(kind).eval()
    spec = ExportSpec(validate_batches=(2,))
    for out in ("a", "b"):
        export_model(model, tmp_path / out, (3, 16, 16), spec, log=lambda m: None)
    graphs = sorted(p.name for p in (tmp_path / "a").glob("*.onnx"))
    assert len(graphs) == 2
    for name in graphs:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        ops = {n.op_type for n in onnx.load(str(tmp_path / "a" / name)).graph.node}
        assert "BatchNormalization" not in ops and "Conv" in ops
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = [t.numpy() for t in model(torch.from_numpy(x))]
    got = ExitChain.load(tmp_path / "a", warmup=False).run_all(x)
    for g, w in zip(got, want, strict=True):
        assert float(np.abs(g - w).max() / np.abs(w).max()) <= 1e-5


class StdConv2d(nn.Conv2d):
    """timm's weight-standardized conv: its weight is normalized per output channel in forward,
    so a batch norm scale folded into it would be normalized away."""

    def forward(self, x):
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                                     momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_a_conv_that_transforms_its_weight_is_not_folded():
    class Block(nn.Module):
        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.conv, self.bn = conv, nn.BatchNorm2d(4)

        def forward(self, x):
            return [self.bn(self.conv(x)).mean((2, 3))]

    x = torch.randn(2, 3, 8, 8)
    for conv, want in ((StdConv2d(3, 4, 3, padding=1), 0), (nn.Conv2d(3, 4, 3, padding=1), 1),
                       (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), 1)):
        model = _randomize(Block(conv))
        folded, count = fold_batchnorm(model, (x,))
        assert count == want, type(conv).__name__
        with torch.no_grad():
            torch.testing.assert_close(folded(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)
