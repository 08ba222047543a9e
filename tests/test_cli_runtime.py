"""The torch-free commands through click: info, predict, providers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("torch")  # the export extra: skipped in the lean install
pytest.importorskip("onnx")  # the export extra: skipped in the lean install

from msdnet_toy import save_random_ranet

from ranet_edge.export.exporter import ExportSpec
from ranet_edge.export.ranet import export_checkpoint
from ranet_edge.runtime import ExitChain, read_image


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-runtime")
    save_random_ranet("tiny", root / "tiny.pt", seed=5, logit_scale=40.0)
    export_checkpoint(root / "tiny.pt", root / "bundle", ExportSpec(monolithic=True), log=lambda _m: None)
    return root / "bundle"


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[tuple[Path, np.ndarray]]:
    """Real PNG files written by OpenCV, with the RGB arrays they hold."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i, shape in enumerate([(32, 32, 3), (40, 56, 3), (32, 32, 3)]):
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        path = root / f"img{i}.png"
        assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR
        out.append((path, rgb))
    return out


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


# --------------------------------------------------------------------------- info
def test_info_text(run, bundle):
    result = run("info", bundle)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 exits" in out and "granularity exit" in out and "batch dynamic" in out
    assert "MFLOPs" in out and "cache KB" in out and "inputs -> outputs" in out
    for k in range(3):
        assert f"stage{k}.onnx" in out
    assert "total cache hand-over per sample" in out
    assert "no monolithic graph" not in out  # exported with --monolithic


def test_info_json(run, bundle):
    result = run("info", bundle, "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert {"bundle", "granularity", "precision", "graph_format", "batch_size", "opset", "model", "exits",
            "total_cache_bytes_per_sample", "monolithic"} <= set(rep)
    assert rep["granularity"] == "exit" and rep["monolithic"] is True and rep["batch_size"] is None
    assert len(rep["exits"]) == 3
    manifest = json.loads((bundle / "manifest.json").read_text())
    for row, e in zip(rep["exits"], manifest["exits"]):
        assert {"exit", "graph", "flops", "stage_flops", "run_flops", "params", "graph_bytes",
                "cache_bytes_per_sample", "inputs", "outputs"} <= set(row)
        assert row["flops"] == e["flops"] and row["inputs"] == e["inputs"]
        assert row["graph_bytes"] == (bundle / row["graph"]).stat().st_size
        assert row["outputs"][0] == e["logits"]
    assert [r["flops"] for r in rep["exits"]] == np.cumsum([r["stage_flops"] for r in rep["exits"]]).tolist()
    assert rep["total_cache_bytes_per_sample"] == sum(r["cache_bytes_per_sample"] for r in rep["exits"])
    assert rep["exits"][-1]["cache_bytes_per_sample"] == 0


def test_info_on_a_non_bundle(run, tmp_path):
    assert_one_line_error(run("info", tmp_path), "not a bundle")


# --------------------------------------------------------------------------- predict
def test_predict_png(run, bundle, pngs):
    chain = ExitChain.load(bundle)
    rgbs = [rgb for _, rgb in pngs]
    for (path, rgb) in pngs:
        np.testing.assert_array_equal(read_image(str(path)), rgb)  # the PNG round-trips
    for spec, thresholds in [(None, None), ("0.0", 0.0), ("1.0,1.0", [1.0, 1.0])]:
        args = ["predict", bundle, *[p for p, _ in pngs], "--json"] + (["--thresholds", spec] if spec else [])
        result = run(*args)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        want = chain.predict(chain.preprocess(rgbs), thresholds)
        assert [r["image"] for r in rows] == [str(p) for p, _ in pngs]
        assert [r["label"] for r in rows] == want.labels.tolist()
        assert [r["exit"] for r in rows] == want.exits.tolist()
        np.testing.assert_allclose([r["confidence"] for r in rows], want.confidences, atol=1e-5)
        assert [r["class"] for r in rows] == [str(lab) for lab in want.labels]  # no class names stored
        if spec == "0.0":
            assert all(r["exit"] == 0 for r in rows)
        if spec is None or spec == "1.0,1.0":
            assert all(r["exit"] == 2 for r in rows)


def test_predict_text(run, bundle, pngs):
    path = pngs[0][0]
    result = run("predict", bundle, path, "--thresholds", "0.0")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(str(path)) and "exit 0" in lines[0] and "confidence" in lines[0]


def test_predict_corrupt_image(run, bundle, tmp_path, pngs):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(pngs[0][0].read_bytes()[:40])  # a truncated PNG
    assert_one_line_error(run("predict", bundle, corrupt), "corrupt.png")
    text = tmp_path / "notes.png"
    text.write_text("hello, I am not an image\n")
    assert_one_line_error(run("predict", bundle, text), "notes.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_one_line_error(run("predict", bundle, empty), "empty.png")
    assert_one_line_error(run("predict", bundle, tmp_path / "missing.png"), "missing.png")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_predict_unavailable_provider(run, bundle, pngs):
    result = run("predict", bundle, pngs[0][0], "--provider", "cuda")
    assert_one_line_error(result, "onnxruntime-gpu", "CPUExecutionProvider")


def test_predict_bad_thresholds(run, bundle, pngs):
    assert_one_line_error(run("predict", bundle, pngs[0][0], "--thresholds", "0.5,0.5,0.5,0.5"))
    assert_one_line_error(run("predict", bundle, pngs[0][0], "--thresholds", "fast"), "unknown operating point")


def test_predict_tampered_bundle(run, bundle, pngs, tmp_path):
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    data = bytearray((copy / "stage0.onnx").read_bytes())
    data[-10] ^= 1
    (copy / "stage0.onnx").write_bytes(bytes(data))
    assert_one_line_error(run("predict", copy, pngs[0][0]), "sha256")


# --------------------------------------------------------------------------- providers
def test_providers(run):
    result = run("providers")
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.output and ort.__version__ in result.output
    result = run("providers", "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert rep["onnxruntime"] == ort.__version__
    assert {"name": "CPUExecutionProvider", "short": "cpu"} in rep["providers"]
    assert [r["name"] for r in rep["providers"]] == ort.get_available_providers()
