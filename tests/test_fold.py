"""Exports are the same bits on every CPU: batch norm is folded in float64 by numpy, never by
torch in float32, and every weight written is the float64 fold rounded once."""
from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from fold_reference import assert_weights_are_reference, reference_fold
from torch import nn

from ranet_edge.export.exporter import ExportSpec, export_model
from ranet_edge.export.fold import fold_batchnorm
from ranet_edge.export.ranet import export_checkpoint

DATA = Path(__file__).parent / "data"


@pytest.mark.slow
def test_exported_weights_are_the_float64_fold_bit_for_bit(tmp_path):
    """The ImageNet stem's 7x7 conv has a bias of its own, the rest do not: both paths."""
    ckpt = DATA / "imagenet-small.pth"
    export_checkpoint(ckpt, tmp_path / "b", ExportSpec(monolithic=True), log=lambda m: None)
    expected = reference_fold(torch.load(ckpt, weights_only=True)["state_dict"])
    assert "FirstLayer.layers.0.0.bias" in expected  # the stem conv's own bias, folded too
    assert assert_weights_are_reference(tmp_path / "b", expected) > 100


def test_float32_torch_fold_would_differ():
    """Folding in float32 (what torch.onnx.export does) really gives other bits than the
    float64 fold for some weights, so the test above can tell them apart."""
    state = torch.load(DATA / "imagenet-small.pth", weights_only=True)["state_dict"]
    expected = reference_fold(state)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    differ = 0
    for key in [k for k in state if k.endswith(".running_mean")]:
        bn = key.removesuffix(".running_mean")
        parent, idx = bn.rsplit(".", 1)
        conv = f"{parent}.{int(idx) - 1}"
        s32 = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + 1e-5)
        w32 = (state[f"{conv}.weight"] * s32[:, None, None, None]).numpy()
        differ += int((w32 != expected[f"{conv}.weight"]).any())
    assert differ > 0


@pytest.mark.slow
def test_fold_leaves_the_model_alone_and_keeps_its_outputs():
    from ranet_edge.checkpoint import load_checkpoint

    loaded = load_checkpoint(DATA / "imagenet-small.pth")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    folded, count = fold_batchnorm(loaded.model)
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(loaded.model(x), folded(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class _SplitConvBN(nn.Module):
    """A batch norm right after a convolution, but in another module: torch would fold it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return [self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))]


def test_a_batch_norm_after_a_conv_in_another_module_is_folded_in_float64(tmp_path):
    """Not in one nn.Sequential, but its input is the conv's output alone: folded here (by the
    data-flow pass, tests/test_fold_patterns.py), so torch has nothing left to fold."""
    result = export_model(_SplitConvBN(), tmp_path / "b", (3, 8, 8), ExportSpec(), log=lambda m: None)
    assert not any("batch norm(s) itself" in n for n in result.warnings + result.manifest["notes"])
    m = onnx.load(str(tmp_path / "b" / "stage0.onnx"))
    assert not [n for n in m.graph.node if n.op_type == "BatchNormalization"]
