"""The Qualcomm NPU provider for real: the QNN HTP backend of onnxruntime-qnn, which runs in
simulation on x86_64 Linux, on the shipped QNN bundle (lean suite) and on a fresh
conversion (full suite). The simulator is slow (about a third of a second per image
through the six graphs): a few images only, and the agreement and conversion tests are marked
slow (`make check`); the refusal and the CLI's placement report run in the quick loop."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn is not installed (the qnn extra; its wheels "
                    "exist for Linux x86_64 and Windows only)")

from click.testing import CliRunner  # noqa: E402

from ranet_edge.agreement import QDQ_REFERENCE, provider_agreement, qdq_run_all  # noqa: E402
from ranet_edge.assets import DEFAULT_BUNDLE, QNN_BUNDLE, SAMPLE_IMAGES  # noqa: E402
from ranet_edge.cli import get_cli  # noqa: E402
from ranet_edge.errors import ProviderError  # noqa: E402
from ranet_edge.runtime import ExitChain  # noqa: E402
from ranet_edge.runtime.plugins import devices, register  # noqa: E402

QNN = "QNNExecutionProvider"
#: Held-out sample images (the shipped QNN bundle was calibrated on the first 256).
HELD_OUT = slice(256, 264)
#: The HTP is compared with what the QDQ graphs mean: run as written, DequantizeLinear -> float
#: operator -> QuantizeLinear (ranet_edge/agreement.py: qdq_run_all), not with the CPU
#: provider's int8 kernels, which on x86 CPUs without VNNI add their uint8 x int8 products in
#: saturating int16 and move these logits by up to 8.
#: Largest logit difference HTP vs the QDQ graphs allowed, on logits of magnitude 15-20: on the
#: 244 held-out images it is at most 0.46, 0.065 on average (benchmarks/results/qnn_agreement_qdq.json;
#: against the CPU's int8 kernels on an AVX2 EPYC: 8.4): the HTP rounds its requantizations in
#: fixed point, a quantization step of the logits or two.
MAX_LOGIT_DIFF = 1.0
#: There 98.4% of the labels and 97.1% of the exits agree: of these 8 images one may differ.
MIN_AGREE = 7 / 8


def _images(part=HELD_OUT) -> np.ndarray:
    return np.load(SAMPLE_IMAGES)["x"][part]


def _require_htp():
    register(QNN)
    if not devices(QNN):
        pytest.skip("onnxruntime-qnn offers no device on this machine")


def test_dynamic_batch_bundle_is_refused_naming_the_reason():
    """What the issue found by hand: every node fails with "Cannot get shape" on the dynamic
    batch; the chain says so instead of running on the CPU."""
    _require_htp()
    with pytest.raises(ProviderError) as info:
        ExitChain.load(DEFAULT_BUNDLE, provider="qnn", warmup=False)
    msg = str(info.value)
    assert "\n" not in msg and "took none of the" in msg and "Cannot get shape" in msg
    assert "--to qnn" in msg


@pytest.mark.slow
def test_shipped_qnn_bundle_runs_whole_on_the_htp_and_agrees_with_the_cpu():
    """The CPU here: the QDQ graphs run as written on the CPU provider (optimisations off), not
    its int8 kernels (see MAX_LOGIT_DIFF)."""
    _require_htp()
    r = provider_agreement(QNN_BUNDLE, _images(), "qnn", reference=QDQ_REFERENCE)
    assert r["provider"] == QNN
    for row in r["placement"]:  # the compiled EPContext models, one node each, on QNN
        assert row["graph"].endswith(".qnn_ctx.onnx") and row["providers"] == {QNN: 1}, row
    assert r["images"] == 8 and r["labels_agree"] >= MIN_AGREE and r["exits_agree"] >= MIN_AGREE, r
    assert max(r["max_abs_logit_diff"]) < MAX_LOGIT_DIFF, r["max_abs_logit_diff"]
    assert min(r["top1_agree_per_exit"]) >= MIN_AGREE


@pytest.mark.slow
def test_qdq_graphs_compile_whole_on_the_htp(tmp_path):
    """Without the compiled forms the HTP compiles the QDQ graphs at load: it takes every node."""
    _require_htp()
    bundle = tmp_path / "qdq"
    shutil.copytree(QNN_BUNDLE, bundle, ignore=shutil.ignore_patterns("*.qnn_ctx.onnx"))
    data = json.loads((bundle / "manifest.json").read_text())
    for g in data["graphs"]:
        del g["compiled"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    chain = ExitChain.load(bundle, provider="qnn", warmup=False)
    recorded = data["qnn"]["placement"]
    for row in chain.placement:
        assert row["providers"] == {QNN: row["nodes"]} and row["on_cpu"] == {}, row
        assert row["nodes"] == recorded[row["graph"]]["nodes"] and recorded[row["graph"]]["share"] == 1.0
    x = chain.preprocess(list(_images(slice(300, 302))))
    for a, b in zip(qdq_run_all(QNN_BUNDLE, x), chain.run_all(x), strict=True):
        assert np.abs(a - b).max() < MAX_LOGIT_DIFF


def test_cli_predict_on_qnn_reports_the_placement(tmp_path):
    _require_htp()
    import cv2

    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _images(slice(260, 261))[0][:, :, ::-1])
    runner = CliRunner()
    r = runner.invoke(get_cli(), ["predict", str(QNN_BUNDLE), str(path), "--provider", "qnn", "--json"])
    assert r.exit_code == 0, r.output
    assert "stage0.qnn_ctx.onnx: 1/1 nodes on QNNExecutionProvider (100%)" in r.stderr
    cpu = runner.invoke(get_cli(), ["predict", str(QNN_BUNDLE), str(path), "--json"])
    got, want = json.loads(r.stdout), json.loads(cpu.stdout)
    assert [g["image"] for g in got] == [w["image"] for w in want] and got[0]["class"]
    r = runner.invoke(get_cli(), ["predict", str(DEFAULT_BUNDLE), str(path), "--provider", "qnn"])
    assert r.exit_code == 2 and "Cannot get shape" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.needs("onnx", "onnxsim")
def test_convert_to_qnn_compiles_every_graph_whole(tmp_path):
    _require_htp()
    from ranet_edge.export.convert import convert_bundle
    from ranet_edge.runtime.manifest import load_manifest

    out = tmp_path / "qnn"
    x = np.load(SAMPLE_IMAGES)["x"]
    data = convert_bundle(DEFAULT_BUNDLE, out, "qnn", batch_size=2, images=np.concatenate([x[:32], x[300:304]]),
                          calib_size=32)
    man = load_manifest(out)
    assert man.batch_size == 2 and man.precision == "int8-qdq" and man.preprocessing.shape[0] == 2
    assert data["qnn"]["compiled"] and data["converted_from"]["target"] == "qnn"
    for g in man.graphs:
        assert data["qnn"]["placement"][g.path]["share"] == 1.0
        assert (out / g.compiled_path(QNN)).is_file()
    chain = ExitChain.load(out, provider="qnn", warmup=False)
    assert [g.path for g in chain.graphs] == [g.compiled_path(QNN) for g in man.graphs]
    y = chain.preprocess(list(x[304:307]))  # 3 rows: the static batch of 2 runs a padded chunk
    for a, b in zip(qdq_run_all(out, y), chain.run_all(y), strict=True):
        assert a.shape == b.shape == (3, 10) and np.abs(a - b).max() < MAX_LOGIT_DIFF


@pytest.mark.slow
@pytest.mark.needs("onnx", "onnxsim")
def test_convert_reproduces_the_shipped_qnn_graphs(tmp_path):
    """The shipped QNN bundle is `ranet-edge convert DEFAULT_BUNDLE --to qnn --data SAMPLE_IMAGES`:
    its QDQ graphs come out byte for byte (the context binaries do not: QNN writes them anew)."""
    from ranet_edge.export.convert import convert_bundle
    from ranet_edge.runtime.manifest import load_manifest

    out = tmp_path / "qnn"
    convert_bundle(DEFAULT_BUNDLE, out, "qnn", images=np.load(SAMPLE_IMAGES)["x"], compile_qnn=False)
    shipped = load_manifest(QNN_BUNDLE)
    for g, s in zip(load_manifest(out).graphs, shipped.graphs, strict=True):
        assert g.path == s.path and g.sha256 == s.sha256, g.path
        assert g.compiled == ()
    written = json.loads((out / "manifest.json").read_text())
    assert written["qnn"]["note"] == "not compiled (--no-qnn-context)"
    # the conversion check runs the QDQ graphs as written, so it is the shipped one whatever CPU
    # converts (its int8 kernels gave 93-95% on x86 without VNNI); a boundary image may flip
    check, want = written["conversion_check"], json.loads((QNN_BUNDLE / "manifest.json").read_text())["conversion_check"]
    assert check["images"] == want["images"] == 244
    np.testing.assert_allclose(check["top1_agreement"], want["top1_agreement"], rtol=0, atol=0.01)
