"""The device-resident (IOBinding) path, exercised on the CPU provider: same results as the
numpy path, and cached tensors handed between graphs as OrtValues, never as host arrays.
Torch-free: runs on the shipped bundle, in the lean install too."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ranet_edge.assets import DEFAULT_BUNDLE, SAMPLE_IMAGES
from ranet_edge.runtime import ExitChain
from ranet_edge.runtime.device import FLOAT, FLOAT16, IR_VERSION, OPSET, DeviceRouter, gather_model


@pytest.fixture(scope="module")
def bundle() -> Path:
    if not (DEFAULT_BUNDLE / "manifest.json").exists():
        pytest.skip("this checkout ships no default bundle")
    return DEFAULT_BUNDLE


@pytest.mark.parametrize("elem_type", [FLOAT, FLOAT16])
def test_gather_graph_bytes_are_what_onnx_helper_builds(elem_type):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    assert (FLOAT, FLOAT16) == (TensorProto.FLOAT, TensorProto.FLOAT16)
    x = helper.make_tensor_value_info("x", elem_type, None)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", elem_type, None)
    graph = helper.make_graph([helper.make_node("Gather", ["x", "idx"], ["y"], axis=0)], "gather_rows", [x, idx], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    assert gather_model(elem_type) == model.SerializeToString()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gather_graph_gathers_rows(dtype):
    sess = ort.InferenceSession(gather_model(FLOAT if dtype == np.float32 else FLOAT16),
                                providers=["CPUExecutionProvider"])
    x = np.arange(5 * 3 * 2, dtype=dtype).reshape(5, 3, 2)
    keep = np.array([4, 0, 2], np.int64)
    np.testing.assert_array_equal(sess.run(None, {"x": x, "idx": keep})[0], x[keep])


def test_runtime_never_imports_onnx():
    code = ("import sys, numpy as np; from ranet_edge.runtime import ExitChain; from ranet_edge.assets import "
            "DEFAULT_BUNDLE; c = ExitChain.load(DEFAULT_BUNDLE, device_io=True); "
            "c.predict(np.zeros((4, *c.input_shape), np.float32), 0.5); print('onnx' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    for path in runtime.glob("*.py"):
        text = path.read_text()
        assert "import onnx\n" not in text and "from onnx " not in text and "from onnx." not in text, path


def test_device_path_matches_host_path(bundle):
    host = ExitChain.load(bundle)
    dev = ExitChain.load(bundle, device_io=True)
    assert host._router is None and dev._router is not None
    with np.load(SAMPLE_IMAGES) as z:
        x = host.preprocess(z["x"][:200])
    for a, b in zip(host.run_all(x), dev.run_all(x)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    for _ in range(10):
        t = rng.uniform(0.3, 1.0, 5).tolist()
        p, q = host.predict(x, t), dev.predict(x, t)
        np.testing.assert_array_equal(p.exits, q.exits)
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.probabilities, q.probabilities)


def test_cached_tensors_stay_ortvalues(bundle, monkeypatch):
    seen: list[type] = []
    real_run, real_gather = DeviceRouter.run, DeviceRouter.gather

    def run(self, graph, feeds):
        seen.extend(type(v) for v in feeds.values())
        host, cache = real_run(self, graph, feeds)
        seen.extend(type(v) for v in cache.values())
        return host, cache

    gathered = {"n": 0}

    def gather(self, value, keep):
        gathered["n"] += 1
        assert isinstance(value, ort.OrtValue) and isinstance(keep, ort.OrtValue)
        return real_gather(self, value, keep)

    monkeypatch.setattr(DeviceRouter, "run", run)
    monkeypatch.setattr(DeviceRouter, "gather", gather)
    chain = ExitChain.load(bundle, device_io=True, warmup=False)
    with np.load(SAMPLE_IMAGES) as z:
        x = chain.preprocess(z["x"][:64])
    res = chain.predict(x, 0.8)
    assert len(set(res.exits.tolist())) > 1
    assert seen and all(t is ort.OrtValue for t in seen)
    assert gathered["n"] > 0  # rows were gathered by the Gather session, not by numpy


def test_gather_plan_graph_bytes_and_rows():
    """The fixed-address plans' gather graph: bytes as onnx.helper builds them, and rows moved."""
    from ranet_edge.runtime.device import BOOL, INT64, gather_plan_model

    types = [FLOAT, FLOAT16]
    sess = ort.InferenceSession(gather_plan_model(types), providers=["CPUExecutionProvider"])
    x0 = np.arange(20, dtype=np.float32).reshape(5, 4)
    summary = np.array([2, 1, 0, 3, 1, 0, 2, 4], np.int64)  # go on: rows 3, 1; then 0 left; then dead
    y0, y1, alive = sess.run(None, {"x0": x0, "x1": x0.astype(np.float16), "summary": summary,
                                    "offsets": np.arange(3, 6, dtype=np.int64)})
    np.testing.assert_array_equal(y0, x0[[3, 1, 0]])
    np.testing.assert_array_equal(y1, x0[[3, 1, 0]].astype(np.float16))
    np.testing.assert_array_equal(alive, [True, True, False])
    pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    n = helper.make_node
    nodes = [n("Gather", ["summary", "offsets"], ["idx"]), n("Gather", ["summary", "zero"], ["go"]),
             n("Add", ["go", "head"], ["go_head"]), n("Less", ["offsets", "go_head"], ["alive"])]
    nodes += [n("Gather", [f"x{i}", "idx"], [f"y{i}"]) for i in range(len(types))]
    ins = [helper.make_tensor_value_info(f"x{i}", t, None) for i, t in enumerate(types)]
    ins += [helper.make_tensor_value_info("summary", INT64, ["s"]), helper.make_tensor_value_info("offsets", INT64, ["b"])]
    outs = [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(types)]
    outs.append(helper.make_tensor_value_info("alive", BOOL, ["b"]))
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(3, np.int64), "head")]
    graph = helper.make_graph(nodes, "gather_plan", ins, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    assert gather_plan_model(types) == model.SerializeToString()
