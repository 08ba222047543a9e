"""The runtime refuses what it must, in one line: tampered, escaping, missing or malformed bundle
files, bad input arrays, unavailable providers (on the tiny exported bundle)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")  # the export extra: skipped in the lean install
onnx = pytest.importorskip("onnx")

from runtime_bundles import edit_manifest, images

from ranet_edge.errors import BundleError, InputError, ProviderError
from ranet_edge.runtime import ExitChain


def test_tampered_graph_is_refused(tiny_copy):
    path = tiny_copy / "stage1.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256") as info:
        ExitChain.load(tiny_copy)
    assert "stage1.onnx" in str(info.value)


@pytest.mark.parametrize("path", ["../x.onnx", "sub/../../x.onnx", "ABS", "SYMLINK"])
def test_graph_path_escape_is_refused(tiny_copy, path):
    # a real, matching graph sits at the escaping path: only the path itself is wrong
    outside = tiny_copy.parent / "x.onnx"
    shutil.copy(tiny_copy / "stage0.onnx", outside)
    target = {"ABS": str(outside), "SYMLINK": "link.onnx"}.get(path, path)
    if path == "SYMLINK":  # a link inside the bundle that points out of it
        (tiny_copy / "link.onnx").symlink_to(outside)

    def change(m):
        m["graphs"][0]["path"] = target
        m["exits"][0]["graph"] = target

    edit_manifest(tiny_copy, change)
    with pytest.raises(BundleError) as info:
        ExitChain.load(tiny_copy)
    assert repr(target) in str(info.value) or target in str(info.value)


def test_missing_graph_is_refused(tiny_copy):
    (tiny_copy / "stage2.onnx").unlink()
    with pytest.raises(BundleError, match="stage2.onnx.*missing"):
        ExitChain.load(tiny_copy)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_bad_schema_version_is_refused(tiny_copy, version):
    edit_manifest(tiny_copy, lambda m: m.__setitem__("schema_version", version))
    with pytest.raises(BundleError, match="schema_version"):
        ExitChain.load(tiny_copy)


def test_bad_manifests_are_refused(tiny_copy, tmp_path):
    with pytest.raises(BundleError, match="not a bundle"):
        ExitChain.load(tmp_path / "nowhere")
    (tiny_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ExitChain.load(tiny_copy)
    (tiny_copy / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="format"):
        ExitChain.load(tiny_copy)


def test_missing_manifest_field_is_refused(tiny, tmp_path):
    bundle = Path(shutil.copytree(tiny[1], tmp_path / "b"))
    edit_manifest(bundle, lambda m: m["graphs"][1].pop("inputs"))
    with pytest.raises(BundleError, match="inputs"):
        ExitChain.load(bundle)


@pytest.mark.parametrize("case", ["shape", "channels", "3d", "float64", "nan", "inf", "list", "empty", "int"])
def test_bad_input_arrays(tiny_chain, case):
    good = images(2, seed=1)
    bad = {
        "shape": np.zeros((2, 3, 16, 16), np.float32),
        "channels": np.zeros((2, 1, 32, 32), np.float32),
        "3d": good[0],
        "float64": good.astype(np.float64),
        "nan": np.where(np.arange(good.size).reshape(good.shape) == 5, np.nan, good).astype(np.float32),
        "inf": np.where(np.arange(good.size).reshape(good.shape) == 5, np.inf, good).astype(np.float32),
        "list": good.tolist(),
        "empty": np.zeros((0, 3, 32, 32), np.float32),
        "int": good.astype(np.int64),
    }[case]
    with pytest.raises(InputError) as info:
        tiny_chain.predict(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        tiny_chain.run_all(bad)
    if case == "float64":
        assert "float64" in str(info.value) and "float32" in str(info.value)
    if case in ("nan", "inf"):
        assert "NaN" in str(info.value)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_unavailable_provider_is_refused(tiny):
    with pytest.raises(ProviderError) as info:
        ExitChain.load(tiny[1], provider="cuda")
    msg = str(info.value)
    assert "\n" not in msg
    assert "onnxruntime-gpu" in msg
    for p in ort.get_available_providers():
        assert p in msg
    with pytest.raises(ProviderError) as info:
        ExitChain.load(tiny[1], provider="CUDAExecutionProvider")
    assert "onnxruntime-gpu" in str(info.value)
    with pytest.raises(ProviderError, match="not a known provider"):
        ExitChain.load(tiny[1], provider="warp-drive")


def test_full_provider_name_and_threads(tiny):
    chain = ExitChain.load(tiny[1], provider="CPUExecutionProvider", threads=2, warmup=False)
    x = images(3, seed=2)
    ref = ExitChain.load(tiny[1], provider="cpu", warmup=False)
    for a, b in zip(chain.run_all(x), ref.run_all(x)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- preprocessing
