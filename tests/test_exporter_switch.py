"""``ExportSpec(exporter=...)``: the TorchScript and the dynamo paths of ``torch.onnx.export``
give bundles whose chains return the same logits, or the dynamo path is refused in one line.
The whole-model measurements are benchmarks/dynamo_vs_torchscript.py and dynamo_bundles.py."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from ranet_edge.errors import ExportError  # noqa: E402
from ranet_edge.export import ExportSpec, export_model  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402

HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


class TwoExits(nn.Module):
    """conv -> BN -> ReLU, an exit; a strided conv, an upsample back (a Resize), an attention
    layer over the map's pixels (reshapes sized by the batch), an exit."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.attn = nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True)
        self.h0, self.h1 = nn.Linear(8, 4), nn.Linear(16, 6)
        with torch.no_grad():
            self.a[1].running_mean.uniform_(-0.5, 0.5), self.a[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        a = self.a(x)
        b = nn.functional.interpolate(self.b(a), size=a.shape[-2:], mode="nearest")
        tokens = self.attn(torch.cat([a, b], 1).flatten(2).transpose(1, 2))
        return [self.h0(a.mean((2, 3))), self.h1(tokens.mean(1))]


def _logits(bundle, x: np.ndarray) -> list[np.ndarray]:
    return ExitChain.load(bundle, warmup=False).run_all(x)


@pytest.mark.needs("onnxscript")
def test_both_exporters_give_the_same_logits(tmp_path):
    model = TwoExits().eval()
    spec = {"opset": 18, "validate_batches": (2,)}
    export_model(model, tmp_path / "ts", (3, 8, 8), ExportSpec(**spec), log=lambda m: None)
    export_model(model, tmp_path / "dy", (3, 8, 8), ExportSpec(exporter="dynamo", **spec), log=lambda m: None)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in model(torch.from_numpy(x))]
    for ts, dy, r in zip(_logits(tmp_path / "ts", x), _logits(tmp_path / "dy", x), ref, strict=True):
        assert ts.shape == dy.shape == r.shape
        np.testing.assert_allclose(dy, ts, rtol=1e-5, atol=1e-6 * np.abs(r).max())
        np.testing.assert_allclose(dy, r, rtol=1e-5, atol=1e-6 * np.abs(r).max())


def test_a_wrong_exporter_or_opset_is_one_line(tmp_path):
    with pytest.raises(ExportError, match="exporter 'jit' is not known; use 'torchscript'.* or 'dynamo'") as err:
        export_model(TwoExits(), tmp_path / "a", (3, 8, 8), ExportSpec(exporter="jit"), log=lambda m: None)
    assert "\n" not in str(err.value)
    want = "opset 18 or later; export with opset=18" if HAS_ONNXSCRIPT else "needs onnxscript: pip install onnxscript"
    with pytest.raises(ExportError, match=want) as err:
        export_model(TwoExits(), tmp_path / "b", (3, 8, 8), ExportSpec(exporter="dynamo"), log=lambda m: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.needs("onnxscript")
def test_a_dynamo_failure_is_one_export_error_line(tmp_path):
    """torch.export refuses data-dependent control flow with a many-line error: one line here."""

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = nn.Linear(3, 2)

        def forward(self, x):
            z = self.h(x.mean((2, 3)))
            return [z if bool(z.sum() > 0) else -z]

    with pytest.raises(ExportError, match=r"^torch.onnx.export failed: TorchExportError: .*; export with "
                                          r"exporter='torchscript' \(ExportSpec") as err:
        export_model(Branchy(), tmp_path / "c", (3, 8, 8), ExportSpec(exporter="dynamo", opset=18),
                     log=lambda m: None)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)  # one line, no terminal colours
    assert not (tmp_path / "c").exists()


def test_the_cli_names_a_dynamo_export_below_opset_18_in_one_line(run, tmp_path):
    res = run("export", "--exporter", "dynamo", "-o", tmp_path / "b")
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.strip() and "exporting the bundled default" not in ln]
    want = "export with opset=18" if HAS_ONNXSCRIPT else "pip install onnxscript"
    assert len(lines) == 1 and want in lines[0], res.output
    assert not (tmp_path / "b").exists()


def test_torchs_own_size_checks_are_a_note_not_a_refusal(tmp_path):
    """nn.MultiheadAttention compares sizes inside torch (functional.py), which the tracer
    reports as a tensor turned into a Python boolean: the model's forward does not branch."""
    result = export_model(TwoExits().eval(), tmp_path / "a", (3, 8, 8), ExportSpec(validate_batches=(2,)),
                          log=lambda m: None)
    assert any("the tracer warned at functional.py" in n for n in result.manifest["notes"])
